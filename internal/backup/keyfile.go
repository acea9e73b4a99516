package backup

import (
	"fmt"
	"io"
	"os"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// MaxKeyBytes bounds a key file: a passphrase or random bytes, never more.
const MaxKeyBytes = 64 << 10

// ReadKeyFile reads the contents of a backup key file, byte for byte (a
// trailing newline is part of the key, so the same file always gives the
// same key). It refuses an empty file and one over MaxKeyBytes. The
// caller wipes the result.
func ReadKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxKeyBytes+1))
	if err != nil {
		wipe(b)
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	switch {
	case len(b) == 0:
		return nil, errdefs.BadRequest("key file %s is empty", path)
	case len(b) > MaxKeyBytes:
		wipe(b)
		return nil, errdefs.BadRequest("key file %s is larger than %d bytes", path, MaxKeyBytes)
	}
	return b, nil
}

package api

import (
	"strconv"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
)

// The API versions hush serves. 1.24 is where the swarm secrets API starts
// being usable by current clients; 1.51 is the newest the docker CLI v28 knows.
const (
	MinAPIVersion = "1.24"
	MaxAPIVersion = "1.51"
)

// splitVersion strips a "/vX.Y" prefix from path and returns the version
// ("" when absent) and the rest.
func splitVersion(path string) (version, rest string) {
	if !strings.HasPrefix(path, "/v") {
		return "", path
	}
	end := strings.IndexByte(path[1:], '/')
	seg := path[2:]
	rest = "/"
	if end >= 0 {
		seg = path[2 : end+1]
		rest = path[end+1:]
	}
	if !validVersion(seg) {
		return "", path
	}
	return seg, rest
}

func validVersion(v string) bool {
	maj, min, ok := strings.Cut(v, ".")
	if !ok {
		return false
	}
	_, err1 := strconv.Atoi(maj)
	_, err2 := strconv.Atoi(min)
	return err1 == nil && err2 == nil
}

// compareVersions compares two "X.Y" versions numerically.
func CompareVersions(a, b string) int {
	am, an, _ := strings.Cut(a, ".")
	bm, bn, _ := strings.Cut(b, ".")
	ai, _ := strconv.Atoi(am)
	bi, _ := strconv.Atoi(bm)
	if ai != bi {
		if ai < bi {
			return -1
		}
		return 1
	}
	ai, _ = strconv.Atoi(an)
	bi, _ = strconv.Atoi(bn)
	switch {
	case ai < bi:
		return -1
	case ai > bi:
		return 1
	}
	return 0
}

func checkVersion(v string) error {
	if v == "" {
		return nil
	}
	if CompareVersions(v, MaxAPIVersion) > 0 {
		return errdefs.BadRequest("client version %s is too new. Maximum supported API version is %s", v, MaxAPIVersion)
	}
	if CompareVersions(v, MinAPIVersion) < 0 {
		return errdefs.BadRequest("client version %s is too old. Minimum supported API version is %s, please upgrade your client to a newer version", v, MinAPIVersion)
	}
	return nil
}

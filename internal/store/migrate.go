package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// formatKey records that every value is sealed (format sealedFormat), so a
// start does not scan the store again.
const (
	formatKey    = metaPrefix + "format"
	sealedFormat = "sealed-v1"
)

// Migrate brings a store written by an earlier hush, which kept every value
// but secret and config data in the clear and its name index under the
// lowercased names, to the sealed form: each value sealed under its key,
// each index entry moved to its keyed hash. It runs in place, in batches of
// transactions; a record is either in the old form or the new one, so a
// crash part-way is resumed by the next call. Once done it records the
// format and compacts the store, so the clear values leave the database
// file (etcd's WAL keeps them until its segment is retired: docs/DESIGN.md).
// It returns how many records it sealed; hook is as for Rewrap.
func (s *Store) Migrate(ctx context.Context, hook func(batch int) error) (int, error) {
	done, err := s.migrated(ctx)
	if err != nil || done {
		return 0, err
	}
	if _, err := s.indexKey(ctx); err != nil {
		return 0, err
	}
	n, err := s.rewriteAll(ctx, func(kv *mvccpb.KeyValue) ([]clientv3.Op, int, error) {
		key := string(kv.Key)
		if isSealed(kv.Value) {
			return nil, 0, nil
		}
		if rest, ok := strings.CutPrefix(key, root+"names/"); ok {
			kind, name, ok := strings.Cut(rest, "/")
			if !ok || name == "" {
				return nil, 0, fmt.Errorf("store: malformed index entry in an earlier store: %w", errdefs.ErrInternal)
			}
			sum, err := s.nameEntry(ctx, kind, name)
			if err != nil {
				return nil, 0, err
			}
			nk := root + "names/" + kind + "/" + sum
			v, err := s.seal(nk, kv.Value)
			if err != nil {
				return nil, 0, err
			}
			return []clientv3.Op{clientv3.OpDelete(key), clientv3.OpPut(nk, v)}, 1, nil
		}
		v, err := s.seal(key, kv.Value)
		if err != nil {
			return nil, 0, err
		}
		return []clientv3.Op{clientv3.OpPut(key, v)}, 1, nil
	}, hook)
	if err != nil {
		return n, err
	}
	if err := s.Put(ctx, formatKey, []byte(sealedFormat)); err != nil {
		return n, err
	}
	if n > 0 {
		if err := s.CompactAll(ctx); err != nil {
			return n, err
		}
		s.log.Info("store migrated: every value sealed", "records", n)
	}
	return n, nil
}

func (s *Store) migrated(ctx context.Context) (bool, error) {
	resp, err := s.cli.Get(ctx, formatKey)
	if err != nil {
		return false, wrapEtcd(err)
	}
	if len(resp.Kvs) == 0 {
		return false, nil
	}
	v, err := s.open(formatKey, resp.Kvs[0].Value)
	if err != nil {
		return false, err
	}
	if string(v) != sealedFormat {
		return false, fmt.Errorf("store: unknown store format (written by a newer hush?): %w", errdefs.ErrInternal)
	}
	return true, nil
}

func isCompacted(err error) bool { return errors.Is(err, rpctypes.ErrCompacted) }

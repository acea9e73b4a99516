package keyring

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Raw key bytes live in pages of their own, outside the Go heap: mlocked
// (never written to swap), excluded from core dumps (MADV_DONTDUMP), and
// wiped and unmapped once nothing uses them. The whole process is not
// locked because the embedded etcd maps its database, which can be far
// larger than RLIMIT_MEMLOCK and needs no such protection.
//
// Small buffers share pages, carved into slots of a power-of-two size class
// (64 B up to one page); larger ones get a mapping each. A page whose slots
// are all free is unmapped unless it is the last of its class, so the
// Seal/Open path, which takes and returns a slot per call, does not mmap on
// every call.

const minSlot = 64

// lockedPool is one set of locked pages. The process has one (memPool):
// mlocked memory is a per-process budget (RLIMIT_MEMLOCK), like the heap it
// stands in for. Its state is memory only: no caller can see another's
// buffers through it; Free wipes before a slot is reused.
type lockedPool struct {
	mu       sync.Mutex
	pageSize int
	// pages maps the base address of each mapping to it.
	pages map[uintptr]*lockedPage
	// open lists, per slot size, the pages with a free slot.
	open map[int][]*lockedPage
	// count is the number of mappings per slot size.
	count map[int]int
	// lockErr is the first failure to lock or mark a mapping; the memory
	// is still used (ordinary but private pages), and the caller decides
	// whether to report it.
	lockErr error
	locked  int // bytes currently mlocked
}

type lockedPage struct {
	mem    []byte
	slot   int
	free   []int // free slot indexes
	used   int
	locked bool
}

// memPool is the process's pool of locked pages (see lockedPool).
var memPool = newLockedPool()

func newLockedPool() *lockedPool {
	return &lockedPool{
		pageSize: os.Getpagesize(),
		pages:    map[uintptr]*lockedPage{},
		open:     map[int][]*lockedPage{},
		count:    map[int]int{},
	}
}

// NewLocked returns n zeroed bytes in locked memory (see the package's
// lockedmem.go). The slice's capacity is exactly n, so an append cannot
// move the bytes to the heap unnoticed. Release it with Free. If the
// memory cannot be mapped at all, it falls back to the heap: keys must
// keep working; MemoryLockError tells.
func NewLocked(n int) []byte { return memPool.alloc(n) }

// Free wipes b and, if it came from NewLocked, returns its memory; the
// caller must not use b afterwards. On any other slice it only wipes.
func Free(b []byte) { memPool.free(b) }

// MemoryLockError reports the first failure to lock key memory (mlock
// refused: EPERM or ENOMEM under RLIMIT_MEMLOCK), or nil. Keys then still
// work, in pages that may be swapped.
func MemoryLockError() error {
	memPool.mu.Lock()
	defer memPool.mu.Unlock()
	return memPool.lockErr
}

// LockedBytes is the number of bytes of key memory currently mlocked.
func LockedBytes() int {
	memPool.mu.Lock()
	defer memPool.mu.Unlock()
	return memPool.locked
}

// LockedHolds reports whether key memory from NewLocked still in use
// holds b anywhere: a check, for tests, that a master key no one should
// hold any more was wiped from every keyring.
func LockedHolds(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	memPool.mu.Lock()
	defer memPool.mu.Unlock()
	for _, pg := range memPool.pages {
		if bytes.Contains(pg.mem, b) {
			return true
		}
	}
	return false
}

func (p *lockedPool) slotSize(n int) int {
	s := minSlot
	for s < n {
		s <<= 1
	}
	return s
}

func (p *lockedPool) alloc(n int) []byte {
	if n <= 0 {
		return []byte{}
	}
	size := p.slotSize(n)
	p.mu.Lock()
	defer p.mu.Unlock()
	if size > p.pageSize {
		size = (n + p.pageSize - 1) / p.pageSize * p.pageSize
	}
	var pg *lockedPage
	if open := p.open[size]; len(open) > 0 {
		pg = open[len(open)-1]
	} else {
		var err error
		if pg, err = p.mapPage(size); err != nil {
			if p.lockErr == nil {
				p.lockErr = err
			}
			return make([]byte, n)
		}
	}
	i := pg.free[len(pg.free)-1]
	pg.free = pg.free[:len(pg.free)-1]
	pg.used++
	if len(pg.free) == 0 {
		p.removeOpen(pg)
	}
	off := i * pg.slot
	return pg.mem[off : off+n : off+n]
}

// mapPage maps one page of slots of size (or one mapping of size bytes
// for a large buffer). Called with p.mu held.
func (p *lockedPool) mapPage(size int) (*lockedPage, error) {
	length := max(size, p.pageSize)
	mem, err := unix.Mmap(-1, 0, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("keyring: mapping key memory: %w", err)
	}
	pg := &lockedPage{mem: mem, slot: size}
	if err := unix.Mlock(mem); err != nil {
		if p.lockErr == nil {
			p.lockErr = fmt.Errorf("keyring: locking key memory (mlock): %w", err)
		}
	} else {
		pg.locked = true
		p.locked += length
	}
	if err := unix.Madvise(mem, unix.MADV_DONTDUMP); err != nil && p.lockErr == nil {
		p.lockErr = fmt.Errorf("keyring: excluding key memory from core dumps: %w", err)
	}
	for i := length/size - 1; i >= 0; i-- {
		pg.free = append(pg.free, i)
	}
	p.pages[uintptr(unsafe.Pointer(&mem[0]))] = pg
	p.open[size] = append(p.open[size], pg)
	p.count[size]++
	return pg, nil
}

func (p *lockedPool) removeOpen(pg *lockedPage) {
	open := p.open[pg.slot]
	for i, o := range open {
		if o == pg {
			p.open[pg.slot] = append(open[:i], open[i+1:]...)
			return
		}
	}
}

func (p *lockedPool) free(b []byte) {
	if cap(b) == 0 {
		return
	}
	b = b[:cap(b)]
	clear(b)
	addr := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	p.mu.Lock()
	defer p.mu.Unlock()
	base := addr &^ uintptr(p.pageSize-1)
	pg := p.pages[base]
	if pg == nil {
		return
	}
	off := int(addr - base)
	if off%pg.slot != 0 {
		return // not a slot start: not from alloc
	}
	i := off / pg.slot
	for _, f := range pg.free {
		if f == i {
			return // freed twice: already wiped and free
		}
	}
	clear(pg.mem[off : off+pg.slot])
	if len(pg.free) == 0 {
		p.open[pg.slot] = append(p.open[pg.slot], pg)
	}
	pg.free = append(pg.free, i)
	pg.used--
	// Keep the last page of a small class mapped: the Seal/Open path
	// would otherwise map and unmap it on every call.
	if pg.used == 0 && (pg.slot > p.pageSize/2 || p.count[pg.slot] > 1) {
		p.unmap(base, pg)
	}
}

// unmap wipes, unlocks and unmaps pg. Called with p.mu held.
func (p *lockedPool) unmap(base uintptr, pg *lockedPage) {
	clear(pg.mem)
	if pg.locked {
		_ = unix.Munlock(pg.mem)
		p.locked -= len(pg.mem)
	}
	p.removeOpen(pg)
	delete(p.pages, base)
	p.count[pg.slot]--
	if err := unix.Munmap(pg.mem); err != nil && p.lockErr == nil {
		p.lockErr = errors.New("keyring: unmapping key memory failed")
	}
}

// Destroy wipes the master key bytes k holds and returns their locked
// memory; k must not be used afterwards. (The AES key schedules built from
// them are on the Go heap and go with the garbage collector.)
func (k *Keyring) Destroy() {
	if k == nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for id, kk := range k.keys {
		Free(kk.raw)
		kk.raw = nil
		delete(k.keys, id)
	}
	k.rotateErr = errDestroyed
}

var errDestroyed = errors.New("keyring: destroyed")

package networks

import (
	"context"
	"net/netip"
	"sync"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/moby/moby/api/types/network"
)

// AddrPools returns the cluster's default address pools and the prefix
// length of the subnets taken from them (`docker swarm init
// --default-addr-pool --default-addr-pool-mask-length`). No pools leaves
// the choice of subnet to the engine.
type AddrPools func(ctx context.Context) (pools []netip.Prefix, size int, err error)

// poolAllocator gives a network without subnets one from the cluster's
// default address pools, as Swarm's allocator does.
type poolAllocator struct {
	source AddrPools
	// mu makes choosing a subnet and storing the network that has it one
	// step, so two creates never pick the same subnet.
	mu sync.Mutex
}

// assignSubnet fills in n's subnet from the default address pools when n
// has none and the cluster has pools. The returned func ends the step and
// must be called once n is stored (or not).
func (m *Manager) assignSubnet(ctx context.Context, n *network.Network) (func(), error) {
	if m.pools.source == nil || len(n.IPAM.Config) > 0 {
		return func() {}, nil
	}
	pools, size, err := m.pools.source(ctx)
	if err != nil || len(pools) == 0 {
		return func() {}, err
	}
	m.pools.mu.Lock()
	all, err := m.all(ctx)
	if err != nil {
		m.pools.mu.Unlock()
		return nil, err
	}
	var used []netip.Prefix
	for _, o := range all {
		for _, c := range o.IPAM.Config {
			if c.Subnet.IsValid() {
				used = append(used, c.Subnet.Masked())
			}
		}
	}
	subnet, ok := freeSubnet(pools, size, used)
	if !ok {
		m.pools.mu.Unlock()
		return nil, errdefs.InvalidArgument("could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network")
	}
	n.IPAM.Config = []network.IPAMConfig{{Subnet: subnet}}
	return m.pools.mu.Unlock, nil
}

// freeSubnet returns the first subnet of length size, in pool order, that
// overlaps none of used. Each step either returns or jumps past the end of
// a used prefix, so it takes at most len(used)+1 steps per pool.
func freeSubnet(pools []netip.Prefix, size int, used []netip.Prefix) (netip.Prefix, bool) {
	if size < 1 || size > 32 {
		return netip.Prefix{}, false
	}
	block := uint64(1) << (32 - size)
	for _, p := range pools {
		p = p.Masked()
		if !p.Addr().Is4() || p.Bits() > size {
			continue
		}
		start, end := span(p)
		for c := start; c+block-1 <= end; {
			cEnd := c + block - 1
			next := uint64(0)
			for _, u := range used {
				us, ue := span(u)
				if us <= cEnd && c <= ue {
					next = max(next, ue+1)
				}
			}
			if next == 0 {
				return netip.PrefixFrom(addr4(c), size), true
			}
			// The next aligned subnet at or after next.
			c = (next + block - 1) / block * block
		}
	}
	return netip.Prefix{}, false
}

// span is the first and last IPv4 address of p as integers (an IPv6
// prefix spans nothing IPv4 subnets can overlap).
func span(p netip.Prefix) (uint64, uint64) {
	a := p.Masked().Addr()
	if !a.Is4() {
		return 1, 0
	}
	b := a.As4()
	s := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
	return s, s + uint64(1)<<(32-p.Bits()) - 1
}

func addr4(v uint64) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

package networks

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/moby/moby/api/types/network"
)

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func TestFreeSubnet(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pools []string
		size  int
		used  []string
		want  string // "" means none free
	}{
		{"first of the pool", []string{"10.20.0.0/16"}, 24, nil, "10.20.0.0/24"},
		{"skips used", []string{"10.20.0.0/16"}, 24, []string{"10.20.0.0/24", "10.20.1.0/24"}, "10.20.2.0/24"},
		{"reuses a gap", []string{"10.20.0.0/16"}, 24, []string{"10.20.1.0/24"}, "10.20.0.0/24"},
		{"jumps a big used range", []string{"10.20.0.0/16"}, 24, []string{"10.20.0.0/17"}, "10.20.128.0/24"},
		{"small used inside a candidate", []string{"10.20.0.0/16"}, 24, []string{"10.20.0.64/26"}, "10.20.1.0/24"},
		{"pool given unmasked", []string{"10.20.7.0/16"}, 24, nil, "10.20.0.0/24"},
		{"next pool when full", []string{"10.20.0.0/23", "10.30.0.0/16"}, 24, []string{"10.20.0.0/24", "10.20.1.0/24"}, "10.30.0.0/24"},
		{"subnet size 29", []string{"192.168.5.0/24"}, 29, []string{"192.168.5.0/29"}, "192.168.5.8/29"},
		{"pool as large as the subnet", []string{"10.9.9.0/24"}, 24, nil, "10.9.9.0/24"},
		{"exhausted", []string{"10.20.0.0/23"}, 24, []string{"10.20.0.0/23"}, ""},
		{"pool smaller than the subnet", []string{"10.20.0.0/28"}, 24, nil, ""},
		{"top of the address space", []string{"255.255.255.0/24"}, 25, []string{"255.255.255.0/25"}, "255.255.255.128/25"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := freeSubnet(prefixes(tc.pools...), tc.size, prefixes(tc.used...))
			if tc.want == "" {
				if ok {
					t.Fatalf("got %s, want none", got)
				}
				return
			}
			if !ok || got.String() != tc.want {
				t.Fatalf("got %s %v, want %s", got, ok, tc.want)
			}
		})
	}
}

func withPools(e *env, pools []netip.Prefix, size int) {
	e.m.pools.source = func(context.Context) ([]netip.Prefix, int, error) { return pools, size, nil }
}

func subnetOf(t *testing.T, e *env, ref string) string {
	t.Helper()
	n, err := e.m.Inspect(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if len(n.IPAM.Config) != 1 {
		return ""
	}
	return n.IPAM.Config[0].Subnet.String()
}

func TestCreateTakesSubnetsFromDefaultPools(t *testing.T) {
	e := newEnv(t, true)
	withPools(e, prefixes("10.20.0.0/16"), 24)
	a := e.mustCreate(t, overlay("spec-a"))
	e.mustCreate(t, overlay("spec-b"))
	given := overlay("spec-given")
	given.IPAM = &network.IPAM{Config: []network.IPAMConfig{{Subnet: netip.MustParsePrefix("10.20.2.0/24")}}}
	e.mustCreate(t, given)
	e.mustCreate(t, overlay("spec-d"))
	for name, want := range map[string]string{"spec-a": "10.20.0.0/24", "spec-b": "10.20.1.0/24", "spec-given": "10.20.2.0/24", "spec-d": "10.20.3.0/24"} {
		if got := subnetOf(t, e, name); got != want {
			t.Errorf("%s: subnet %s, want %s", name, got, want)
		}
	}
	// The engine network is made with the pool's subnet.
	if specs := e.eng.byHush(a); len(specs) != 1 || specs[0].IPAM == nil || specs[0].IPAM.Config[0].Subnet.String() != "10.20.0.0/24" {
		t.Fatalf("engine network of spec-a: %+v", specs)
	}
	// A removed network's subnet is free again.
	if err := e.m.Remove(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	e.mustCreate(t, overlay("spec-e"))
	if got := subnetOf(t, e, "spec-e"); got != "10.20.0.0/24" {
		t.Fatalf("spec-e: subnet %s, want the freed 10.20.0.0/24", got)
	}
}

func TestCreateWithoutPoolsLeavesSubnetToEngine(t *testing.T) {
	e := newEnv(t, true)
	withPools(e, nil, 0)
	id := e.mustCreate(t, overlay("spec-plain"))
	if specs := e.eng.byHush(id); len(specs) != 1 || specs[0].IPAM != nil {
		t.Fatalf("engine network: %+v, want no IPAM (the engine picks)", specs)
	}
}

func TestPoolExhausted(t *testing.T) {
	e := newEnv(t, true)
	withPools(e, prefixes("10.20.0.0/23"), 24)
	e.mustCreate(t, overlay("spec-1"))
	e.mustCreate(t, overlay("spec-2"))
	_, err := e.m.Create(context.Background(), overlay("spec-3"))
	if err == nil || wire(err) != "rpc error: code = InvalidArgument desc = could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network" {
		t.Fatalf("got %v", err)
	}
	if _, err := e.m.Resolve(context.Background(), "spec-3"); err == nil {
		t.Fatal("a network that got no subnet was stored")
	}
}

func TestConcurrentCreatesGetDistinctSubnets(t *testing.T) {
	e := newEnv(t, true)
	withPools(e, prefixes("10.20.0.0/16"), 24)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.m.Create(context.Background(), overlay(fmt.Sprintf("spec-c%d", i))); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := 0; i < 8; i++ {
		s := subnetOf(t, e, fmt.Sprintf("spec-c%d", i))
		if s == "" || seen[s] {
			t.Fatalf("spec-c%d: subnet %q (seen: %v)", i, s, seen)
		}
		seen[s] = true
	}
}

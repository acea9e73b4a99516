package cluster

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/pki"
	"github.com/moby/moby/api/types/swarm"
)

// Swarm's defaults and limits for the cluster settings.
const (
	// DefaultSubnetSize is the prefix length of subnets taken from the
	// default address pools when init gives none.
	DefaultSubnetSize = 24
	// MaxSubnetSize is dockerd's upper bound: /29 still leaves 8 addresses.
	MaxSubnetSize = 29
	// DefaultDataPathPort is VXLAN's port, Swarm's data path default.
	DefaultDataPathPort = 4789
	// MinNodeCertExpiry is swarmkit's lower bound on node certificates.
	MinNodeCertExpiry = pki.MinNodeCertExpiry
	// DefaultNodeCertExpiry is swarmkit's default node certificate life.
	DefaultNodeCertExpiry = pki.DefaultNodeCertExpiry
	// MaxAddrPools bounds the default address pools one init may give.
	MaxAddrPools = 64
)

// Texts dockerd and swarmkit answer bad cluster settings with.
const (
	msgNotDefault          = `swarm spec must be named "default"`
	msgBadListenAddr       = "listen address must be an IP address or network interface (with optional port number)"
	msgBadAdvertiseAddr    = "advertise address must be a non-zero IP address or network interface (with optional port number)"
	msgBadDataPathAddr     = "data path address must be a non-zero IP address or network interface (without a port number)"
	msgNegativeHeartbeat   = "heartbeat time period cannot be a negative duration"
	msgCertExpiryTooShort  = "minimum certificate expiry time is: %s"
	msgDataPathPortRange   = "Datapath port number is not in valid range (1024-49151) : %d"
	msgSubnetSizeRange     = "subnet size is out of range: %d"
	msgSubnetSizeTooSmall  = "invalid CIDR: %q. Subnet size is too small for pool: %d"
	msgBadBasePool         = "invalid base pool %s: %v"
	msgInvalidAvailability = "invalid Availability: %q"
	msgInvalidProtocol     = "invalid protocol: %q"
)

// ValidateSpec checks a whole cluster spec as POST /swarm/update sends it,
// with dockerd's and swarmkit's texts in their order, and normalises what
// dockerd normalises (the name, the external CA protocol). It adds hush's
// own bounds where a value would stop the store from starting (the raft
// ticks). SigningCACert and SigningCAKey are the CA rotation's business
// (see ApplyCAConfig).
func ValidateSpec(s *swarm.Spec) error {
	switch s.Name {
	case "":
		s.Name = "default"
	case "default":
	default:
		return errdefs.BadRequest(msgNotDefault)
	}
	for _, ca := range s.CAConfig.ExternalCAs {
		if ca == nil {
			return errdefs.BadRequest(msgInvalidProtocol, "")
		}
		if !strings.EqualFold(string(ca.Protocol), string(swarm.ExternalCAProtocolCFSSL)) {
			return errdefs.BadRequest(msgInvalidProtocol, ca.Protocol)
		}
		ca.Protocol = swarm.ExternalCAProtocolCFSSL
	}
	// dockerd sends a zero expiry as "not set", which swarmkit does not check.
	if e := s.CAConfig.NodeCertExpiry; e != 0 && e < MinNodeCertExpiry {
		return errdefs.InvalidArgument(msgCertExpiryTooShort, MinNodeCertExpiry)
	}
	if s.Dispatcher.HeartbeatPeriod < 0 {
		return errdefs.InvalidArgument(msgNegativeHeartbeat)
	}
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	if _, err := VersionsKeep(s); err != nil {
		return err
	}
	_, err := EtcdTuningFor(s.Raft)
	return err
}

// VersionsKeepLabel on the cluster spec sets how many versions of each
// secret and config are kept when the object's own label does not say.
const VersionsKeepLabel = "io.hush.versions.keep"

// VersionsKeep reads VersionsKeepLabel from s: 0 when absent (the default
// applies), an error naming the label when it is not 1 to 100.
func VersionsKeep(s *swarm.Spec) (int, error) {
	v, ok := s.Labels[VersionsKeepLabel]
	if !ok {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 100 {
		return 0, errdefs.InvalidArgument("label %s must be a number of versions from 1 to 100, not %q", VersionsKeepLabel, v)
	}
	return n, nil
}

// MergeSpec lays the set (non-zero) fields of req over base, as dockerd
// does at init (over DefaultSpec, or the current spec with
// ForceNewCluster): an init request names only what it changes, where an
// update carries the whole spec. Labels and the external CAs are copied, so
// the result shares nothing with req that a caller may change.
func MergeSpec(base, req swarm.Spec) swarm.Spec {
	s := base
	if req.Name != "" {
		s.Name = req.Name
	}
	if len(req.Labels) != 0 {
		s.Labels = maps.Clone(req.Labels)
	}
	if req.Orchestration.TaskHistoryRetentionLimit != nil {
		v := *req.Orchestration.TaskHistoryRetentionLimit
		s.Orchestration.TaskHistoryRetentionLimit = &v
	}
	r := req.Raft
	if r.SnapshotInterval != 0 {
		s.Raft.SnapshotInterval = r.SnapshotInterval
	}
	if r.KeepOldSnapshots != nil {
		v := *r.KeepOldSnapshots
		s.Raft.KeepOldSnapshots = &v
	}
	if r.LogEntriesForSlowFollowers != 0 {
		s.Raft.LogEntriesForSlowFollowers = r.LogEntriesForSlowFollowers
	}
	if r.HeartbeatTick != 0 {
		s.Raft.HeartbeatTick = r.HeartbeatTick
	}
	if r.ElectionTick != 0 {
		s.Raft.ElectionTick = r.ElectionTick
	}
	if req.Dispatcher.HeartbeatPeriod != 0 {
		s.Dispatcher.HeartbeatPeriod = req.Dispatcher.HeartbeatPeriod
	}
	ca := req.CAConfig
	if ca.NodeCertExpiry != 0 {
		s.CAConfig.NodeCertExpiry = ca.NodeCertExpiry
	}
	s.CAConfig.SigningCACert = ca.SigningCACert
	s.CAConfig.SigningCAKey = ca.SigningCAKey
	s.CAConfig.ForceRotate = ca.ForceRotate
	if ca.ExternalCAs != nil {
		s.CAConfig.ExternalCAs = ca.ExternalCAs
	}
	if req.TaskDefaults.LogDriver != nil {
		s.TaskDefaults = req.TaskDefaults
	}
	// Autolock is the caller's: at init it is turned on after the cluster
	// exists (see the daemon), never off by an init that does not ask.
	return s
}

// Network is the init-time settings that are not part of the spec: the
// node's addresses and the address pools for swarm networks.
type Network struct {
	ListenAddr      string         `json:"listenAddr,omitempty"`
	AdvertiseAddr   string         `json:"advertiseAddr,omitempty"`
	DataPathAddr    string         `json:"dataPathAddr,omitempty"`
	DataPathPort    uint32         `json:"dataPathPort,omitempty"`
	DefaultAddrPool []netip.Prefix `json:"defaultAddrPool,omitempty"`
	SubnetSize      uint32         `json:"subnetSize,omitempty"`
}

// ParseAddrPools parses default address pools as dockerd 20.10 does
// (surrounding space trimmed, any CIDR form net.ParseCIDR takes), keeping
// each as written: Swarm shows the pools as given.
func ParseAddrPools(pools []string) ([]netip.Prefix, error) {
	if pools == nil {
		return nil, nil
	}
	if len(pools) > MaxAddrPools {
		return nil, errdefs.BadRequest("at most %d default address pools may be given, not %d", MaxAddrPools, len(pools))
	}
	out := make([]netip.Prefix, 0, len(pools))
	for _, p := range pools {
		p = strings.TrimSpace(p)
		if _, _, err := net.ParseCIDR(p); err != nil {
			return nil, errdefs.BadRequest(msgBadBasePool, p, err)
		}
		pfx, err := netip.ParsePrefix(p)
		if err != nil {
			return nil, errdefs.BadRequest(msgBadBasePool, p, err)
		}
		out = append(out, pfx)
	}
	return out, nil
}

// ValidateInit checks the init request's node and network settings in
// dockerd's order and with its texts, and returns them normalised.
// hostAddr is hushd's own address (its --advertise-addr), used when the
// request names none.
func ValidateInit(req *swarm.InitRequest, hostAddr string) (Network, error) {
	var n Network
	listen := strings.TrimPrefix(req.ListenAddr, "tcp://")
	if listen == "" {
		return n, errdefs.BadRequest("invalid ListenAddr %q: invalid empty address", req.ListenAddr)
	}
	listenHost, listenPort, err := splitAddr(listen, "0.0.0.0", "2377")
	if err != nil {
		return n, errdefs.BadRequest("could not parse listen address %s", req.ListenAddr)
	}
	if name := req.Spec.Name; name != "" && name != "default" {
		return n, errdefs.BadRequest(msgNotDefault)
	}
	lip, err := resolveIP(listenHost, true)
	if err != nil {
		return n, errdefs.BadRequest("%s", orText(err, msgBadListenAddr))
	}
	n.ListenAddr = net.JoinHostPort(lip.String(), listenPort)
	if req.AdvertiseAddr != "" {
		host, port, err := net.SplitHostPort(req.AdvertiseAddr)
		if err != nil {
			host, port = req.AdvertiseAddr, listenPort
		}
		ip, err := resolveIP(host, false)
		if err != nil {
			return n, errdefs.BadRequest("%s", orText(err, msgBadAdvertiseAddr))
		}
		n.AdvertiseAddr = net.JoinHostPort(ip.String(), port)
	} else {
		n.AdvertiseAddr = net.JoinHostPort(hostAddr, listenPort)
	}
	if req.DataPathAddr != "" {
		ip, err := resolveIP(req.DataPathAddr, false)
		if err != nil {
			return n, errdefs.BadRequest("%s", orText(err, msgBadDataPathAddr))
		}
		n.DataPathAddr = ip.String()
	}
	if req.DefaultAddrPool != nil {
		size := req.SubnetSize
		if size == 0 {
			size = DefaultSubnetSize
		}
		if size > MaxSubnetSize {
			return n, errdefs.BadRequest(msgSubnetSizeRange, size)
		}
		if len(req.DefaultAddrPool) > MaxAddrPools {
			return n, errdefs.BadRequest("at most %d default address pools may be given, not %d", MaxAddrPools, len(req.DefaultAddrPool))
		}
		for _, p := range req.DefaultAddrPool {
			if !p.IsValid() {
				return n, errdefs.BadRequest(msgBadBasePool, p, "invalid CIDR address")
			}
			if !p.Addr().Unmap().Is4() {
				// hush's networks are the engine's IPv4 bridges; it cannot
				// take their subnets from an IPv6 pool.
				return n, errdefs.BadRequest("DefaultAddrPool %s: IPv6 default address pools are not supported by hush", p)
			}
			if size < uint32(p.Bits()) {
				return n, errdefs.BadRequest(msgSubnetSizeTooSmall, p.String(), size)
			}
		}
		n.DefaultAddrPool = append([]netip.Prefix(nil), req.DefaultAddrPool...)
		n.SubnetSize = size
	}
	switch port := req.DataPathPort; {
	case port == 0:
		n.DataPathPort = DefaultDataPathPort
	case port < 1024 || port > 49151:
		return n, errdefs.BadRequest(msgDataPathPortRange, port)
	default:
		n.DataPathPort = port
	}
	switch strings.ToLower(string(req.Availability)) {
	case "", string(swarm.NodeAvailabilityActive):
		req.Availability = swarm.NodeAvailabilityActive
	case string(swarm.NodeAvailabilityPause), string(swarm.NodeAvailabilityDrain):
		req.Availability = swarm.NodeAvailability(strings.ToLower(string(req.Availability)))
	default:
		return n, errdefs.BadRequest(msgInvalidAvailability, req.Availability)
	}
	return n, nil
}

// ResolveJoinAddrs reads a join request's listen and advertise addresses
// as ValidateInit reads init's (an interface's name becomes its IP, with
// dockerd's texts), so that join takes what init takes. An empty address
// stays empty (the caller's default); an advertise address keeps the port
// it was given, or none.
func ResolveJoinAddrs(listen, advertise string) (string, string, error) {
	if listen = strings.TrimPrefix(listen, "tcp://"); listen != "" {
		host, port, err := splitAddr(listen, "0.0.0.0", "2377")
		if err != nil {
			return "", "", errdefs.BadRequest("invalid ListenAddr %q: %v", listen, err)
		}
		ip, err := resolveIP(host, true)
		if err != nil {
			return "", "", errdefs.BadRequest("%s", orText(err, msgBadListenAddr))
		}
		listen = net.JoinHostPort(ip.String(), port)
	}
	if advertise != "" {
		host, port, err := net.SplitHostPort(advertise)
		if err != nil {
			host, port = advertise, ""
		}
		ip, err := resolveIP(host, false)
		if err != nil {
			return "", "", errdefs.BadRequest("%s", orText(err, msgBadAdvertiseAddr))
		}
		advertise = ip.String()
		if port != "" {
			advertise = net.JoinHostPort(advertise, port)
		}
	}
	return listen, advertise, nil
}

// splitAddr splits host:port, filling in what is missing as dockerd's
// address parser does ("127.0.0.1" → port 2377, ":4000" → 0.0.0.0).
func splitAddr(addr, defHost, defPort string) (string, string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		if strings.Count(addr, ":") > 1 && !strings.HasPrefix(addr, "[") {
			// A bare IPv6 address.
			return addr, defPort, nil
		}
		if strings.Contains(addr, ":") {
			return "", "", err
		}
		host, port = addr, defPort
	}
	if host == "" {
		host = defHost
	}
	if port == "" {
		port = defPort
	}
	return host, port, nil
}

// errNotAddr means the input is neither an interface name nor an IP.
var errNotAddr = fmt.Errorf("not an address")

// resolveIP reads an IP address or a network interface's name, as dockerd
// lets every swarm address be given.
func resolveIP(s string, unspecifiedOK bool) (net.IP, error) {
	if ifc, err := net.InterfaceByName(s); err == nil {
		return interfaceIP(ifc)
	}
	if ip := net.ParseIP(s); ip != nil && (unspecifiedOK || !ip.IsUnspecified()) {
		return ip, nil
	}
	return nil, errNotAddr
}

// interfaceIP picks an interface's one IPv4 (else one IPv6) address,
// refusing a choice, as dockerd does.
func interfaceIP(ifc *net.Interface) (net.IP, error) {
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil, err
	}
	var v4, v6 []net.IP
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		if ipn.IP.To4() != nil {
			v4 = append(v4, ipn.IP)
		} else {
			v6 = append(v6, ipn.IP)
		}
	}
	switch {
	case len(v4) == 1:
		return v4[0], nil
	case len(v4) > 1:
		return nil, fmt.Errorf("interface %s has more than one IPv4 address (%s and %s)", ifc.Name, v4[0], v4[1])
	case len(v6) == 1:
		return v6[0], nil
	case len(v6) > 1:
		return nil, fmt.Errorf("interface %s has more than one IPv6 address (%s and %s)", ifc.Name, v6[0], v6[1])
	}
	return nil, fmt.Errorf("interface %s has no usable IPv4 or IPv6 address", ifc.Name)
}

// orText is err's text, or def when err only says "not an address".
func orText(err error, def string) string {
	if err == errNotAddr {
		return def
	}
	return err.Error()
}

package store

// DefragForTest runs the defragment step of CompactAll on its own, as a
// caller that passed the compaction just before a Close does.
func DefragForTest(s *Store) error { return s.defrag() }

// ForceCommitForTest runs the backend commit of the quota's reclaim, as
// a write's quota check that passed its gated read just before a Close
// does.
func ForceCommitForTest(s *Store) error { return s.quota.forceCommit() }

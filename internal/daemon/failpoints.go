package daemon

// failpoints make a lifecycle step fail on purpose, so that tests can check
// what hushd leaves behind when a step goes wrong, or stops dead there as a
// kill -9 would (lifecycle_test.go, autolock_test.go). Only tests set them:
// unit tests directly, end-to-end tests through Config.Failpoints in a
// hushd built with the tag hushfailpoints (failpoints_hang.go). In a
// production hushd the map is nil and every point passes.
type failpoints map[string]func() error

// The points, named for the write that has not happened yet when the point
// fires: a failure or a crash there leaves every earlier write of the
// sequence done and this one and the later ones not. See docs/DESIGN.md,
// "Key changes and crashes", for the sequences.
const (
	// Enabling autolock (POST /swarm/update with autolock on, or init
	// with --autolock): the pending locked key, then the record.
	fpEnableWriteNext = "enable-write-next"
	fpEnablePut       = "enable-put"
	// Rotating the unlock key: the pending locked key, then the record.
	fpRotateWriteNext = "rotate-write-next"
	fpRotatePut       = "rotate-put"
	// Handing out a pending unlock key (GET /swarm/unlockkey delivered):
	// the pending file becomes the locked key, then, after enabling, the
	// master key is rotated and the plaintext key file goes.
	fpAckInstall        = "ack-install"
	fpEnableRotate      = "enable-rotate"
	fpEnableRemovePlain = "enable-remove-plain"
	// Disabling autolock: the plaintext key, the record, then the locked
	// key files.
	fpDisableWritePlain   = "disable-write-plain"
	fpDisablePut          = "disable-put"
	fpDisableRemoveNext   = "disable-remove-next"
	fpDisableRemoveLocked = "disable-remove-locked"
	// A manager of a cluster follows the record's unlock key
	// (settleKeysLocked, on every manager): the key handed out is marked
	// in the record first; then each manager writes its pending locked
	// key, installs it, and drops the pending file and the plaintext key
	// (enable-remove-plain); after a disable it writes the plaintext key
	// and removes the locked files.
	fpAckRecord        = "ack-record"
	fpSyncWriteNext    = "keysync-write-next"
	fpSyncInstall      = "keysync-install"
	fpSyncRemoveNext   = "keysync-remove-next"
	fpSyncWritePlain   = "keysync-write-plain"
	fpSyncRemoveLocked = "keysync-remove-locked"
	// fpClusterEnableRotate: the manager that recorded the fetch of the
	// key autolock was enabled with stops before it starts the master-key
	// rotation across the managers that enabling owes.
	fpClusterEnableRotate = "cluster-enable-rotate"
	// A swarm update's write of the cluster record (no autolock change):
	// tests put another write to the record here.
	fpSpecPut = "spec-put"
	// fpLeaveErase: erasing the cluster state on leave fails after the
	// runtime has been stopped.
	fpLeaveErase = "leave-erase"
)

// injected returns the error a test set for point, or nil.
func (d *Daemon) injected(point string) error {
	if fn := d.fail[point]; fn != nil {
		return fn()
	}
	return nil
}

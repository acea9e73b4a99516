package daemon

// failpoints make a lifecycle step fail on purpose, so that tests can check
// what hushd leaves behind when a step that only a store failure reaches
// goes wrong (lifecycle_test.go). Only tests set them: in a running hushd
// the map is nil and every point passes.
type failpoints map[string]func() error

// The points, named for the step that fails there.
const (
	// fpAutolockOffPut: recording "autolock off" in the store fails after
	// the plaintext master key has been written.
	fpAutolockOffPut = "autolock-off-put"
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

package daemon

import "context"

// dataVersions gives the orchestrator the current version of every secret
// and config, so it can give new tasks the current set and roll the tasks
// of services whose secrets were rotated.
func (d *Daemon) dataVersions(ctx context.Context) (map[string]int, map[string]int, error) {
	s, err := d.secrets.CurrentVersions(ctx)
	if err != nil {
		return nil, nil, err
	}
	c, err := d.configs.CurrentVersions(ctx)
	if err != nil {
		return nil, nil, err
	}
	return s, c, nil
}

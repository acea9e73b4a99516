package daemon

import "context"

// dataVersions gives the orchestrator the current version of the secrets
// and configs its services mount, so it can give new tasks the current set
// and roll the tasks of services whose secrets were rotated.
func (d *Daemon) dataVersions(ctx context.Context, secretIDs, configIDs []string) (map[string]int, map[string]int, error) {
	s, err := d.secrets.VersionsOf(ctx, secretIDs)
	if err != nil {
		return nil, nil, err
	}
	c, err := d.configs.VersionsOf(ctx, configIDs)
	if err != nil {
		return nil, nil, err
	}
	return s, c, nil
}

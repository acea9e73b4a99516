package orchestrator

import (
	"math"

	"github.com/moby/moby/api/types/swarm"
)

// Settings are the cluster settings (`docker swarm update`) the
// orchestrator applies.
type Settings struct {
	// HistoryLimit is Orchestration.TaskHistoryRetentionLimit: the tasks
	// kept per slot; negative keeps them all, as in Swarm.
	HistoryLimit int64
	// LogDriver is TaskDefaults.LogDriver, given to the tasks of services
	// that name none.
	LogDriver *swarm.Driver
}

// defaultHistoryLimit is Swarm's default retention.
const defaultHistoryLimit = 5

// SetSettings makes the orchestrator read the cluster settings from fn at
// each use, so a change applies from the next pass. Without it, Swarm's
// defaults apply. Call before Run.
func (o *Orchestrator) SetSettings(fn func() Settings) { o.settings = fn }

func (o *Orchestrator) current() Settings {
	if o.settings == nil {
		return Settings{HistoryLimit: defaultHistoryLimit}
	}
	return o.settings()
}

// historyLimit is the retention as a task count, -1 for "keep all".
func (o *Orchestrator) historyLimit() int {
	l := o.current().HistoryLimit
	if l < 0 {
		return -1
	}
	return int(min(l, math.MaxInt32))
}

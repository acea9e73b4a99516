package e2e

import (
	"strings"
	"testing"
	"time"
)

// suiteTag tags the image src as hush-e2e/<random>/<name>:latest for one
// test and removes that tag when the test ends.
//
// The runbooks name public images (nginx:latest, mysql:latest). The suite
// has no registry, so it stands a busybox image in for them, and it must
// never take those names on the host engine: they may be a developer's real
// images, and retagging them would replace what the developer has. The
// suite's own tag is unique to the test (tests on a shared engine run
// concurrently, and a tag shared between them could be removed while
// another still needs it), so removing it touches nothing the test did not
// create. It keeps the runbook's last path component and tag, so
// the reference still reads "…/nginx:latest" where the runbook has it.
func suiteTag(t testing.TB, eng *dockerCLI, src, name string) string {
	t.Helper()
	ref := suiteRef(t, eng, name)
	eng.MustDocker("tag", src, ref)
	t.Cleanup(func() { removeSuiteTag(t, eng, ref) })
	return ref
}

// suiteRef picks a fresh hush-e2e/<random>/<name>:latest that the engine
// does not have.
func suiteRef(t testing.TB, eng *dockerCLI, name string) string {
	t.Helper()
	ref := "hush-e2e/" + randHex(t, 6) + "/" + name + ":latest"
	if _, _, code := eng.Docker("image", "inspect", "--format", "{{.Id}}", ref); code == 0 {
		t.Fatalf("the engine already has an image %s: not the test's, so it is left alone", ref)
	}
	return ref
}

// removeSuiteTag removes a tag the test made. It is not forced: the image
// stays while another tag or a container still uses it, and a test that
// passed must not leave its tag behind.
func removeSuiteTag(t testing.TB, eng *dockerCLI, ref string) {
	t.Helper()
	if out, errOut, code := eng.Docker("image", "rm", ref); code != 0 {
		msg := "cleanup: docker image rm " + ref + ": " + strings.TrimSpace(out+" "+errOut)
		if t.Failed() {
			t.Log(msg)
		} else {
			t.Error(msg)
		}
	}
}

// agentPassed returns once hushd's orchestrator and agent have acted on a
// change made now: a probe service's task runs (and is removed again). A
// check that something did NOT happen after an event (a restart, a
// re-deploy) waits for this instead of sleeping: by the time the probe
// runs, the passes that would have done the unwanted thing are done.
func agentPassed(t *testing.T, h *Hushd, img string) {
	t.Helper()
	probe := "probe-" + randHex(t, 4)
	h.MustDocker(append([]string{"service", "create", "-d", "--name", probe, "--stop-grace-period", "1s", img}, taskLoop...)...)
	eventually(t, 60*time.Second, "the probe service "+probe+" running", func() bool { return len(hushContainers(t, h, probe)) == 1 })
	h.MustDocker("service", "rm", probe)
	eventually(t, 60*time.Second, "the probe service's container removed", func() bool {
		out := h.MustDocker("ps", "-aq", "--filter", "label="+svcNameLabel+"="+probe, "--filter", "label="+hushNodeLabel+"="+nodeID(t, h))
		return strings.TrimSpace(out) == ""
	})
}

package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
)

type secretJSON struct {
	ID      string
	Version struct{ Index uint64 }
	CreatedAt,
	UpdatedAt string
	Spec struct {
		Name   string
		Labels map[string]string
	}
}

func inspectSecrets(t testing.TB, cli *dockerCLI, names ...string) map[string]secretJSON {
	t.Helper()
	out := cli.MustDocker(append([]string{"secret", "inspect"}, names...)...)
	var list []secretJSON
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("docker secret inspect: bad JSON: %v\n%s", err, out)
	}
	m := map[string]secretJSON{}
	for _, s := range list {
		m[s.Spec.Name] = s
	}
	return m
}

func randHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// TestSecretDurabilityKill9: every acknowledged create survives SIGKILL.
// The last create is acknowledged immediately before the kill.
// (Decryption of the data after restart is proven via an internal endpoint
// in another test; here: metadata.)
func TestSecretDurabilityKill9(t *testing.T) {
	const n = 50
	h := startHushd(t)

	names := make([]string, n)
	ids := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("dur_%02d", i)
	}
	values := make([]string, n)
	for i := range values {
		values[i] = fmt.Sprintf("value-%02d-%s", i, randHex(t, 8))
	}
	// create may run off the test goroutine: no t.Fatal inside.
	create := func(i int) {
		out, errOut, code := h.DockerStdin(values[i],
			"secret", "create", "--label", fmt.Sprintf("idx=%d", i), "--label", "suite=durability", names[i], "-")
		if code != 0 {
			t.Errorf("docker secret create %s: exit %d: %s", names[i], code, errOut)
		}
		ids[i] = strings.TrimSpace(out)
	}
	// The first n-1 with a little concurrency (the CLI is the client).
	var wg sync.WaitGroup
	work := make(chan int)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				create(i)
			}
		}()
	}
	for i := 0; i < n-1; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	before := inspectSecrets(t, h.dockerCLI, names[:n-1]...)
	create(n - 1)
	if t.Failed() {
		t.FailNow()
	}
	h.Kill()
	h.Restart()

	check := func(stage string) {
		t.Helper()
		out := h.MustDocker("secret", "ls", "--format", "{{.ID}} {{.Name}}")
		listed := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if id, name, ok := strings.Cut(l, " "); ok {
				listed[name] = id
			}
		}
		if len(listed) != n {
			t.Errorf("%s: secret ls lists %d secrets, want %d:\n%s", stage, len(listed), n, out)
		}
		after := inspectSecrets(t, h.dockerCLI, names...)
		var missing []string
		for i, name := range names {
			a, ok := after[name]
			if !ok {
				missing = append(missing, name)
				continue
			}
			if listed[name] != ids[i] {
				t.Errorf("%s: ls shows %s with ID %q, created with %q", stage, name, listed[name], ids[i])
			}
			if a.ID != ids[i] {
				t.Errorf("%s: inspect %s: ID %q, created with %q", stage, name, a.ID, ids[i])
			}
			wantLabels := map[string]string{"idx": fmt.Sprint(i), "suite": "durability"}
			if !reflect.DeepEqual(a.Spec.Labels, wantLabels) {
				t.Errorf("%s: inspect %s: labels %v, want %v", stage, name, a.Spec.Labels, wantLabels)
			}
			if b, ok := before[name]; ok && !reflect.DeepEqual(a, b) {
				t.Errorf("%s: inspect %s changed across the restart:\nbefore %+v\nafter  %+v", stage, name, b, a)
			}
		}
		if len(missing) > 0 {
			sort.Strings(missing)
			t.Errorf("%s: %d acknowledged secrets lost: %v", stage, len(missing), missing)
		}
	}
	check("after SIGKILL and restart")

	// A clean stop (exit 0) and a second restart keep everything as well.
	h.Stop()
	h.Restart()
	check("after SIGTERM and restart")
}

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestServiceLogsFollow: `docker service logs -f` through hushd prints each
// line as the workload prints it. The service prints five lines, 200 ms
// apart, and then keeps running silently: a relay that does not flush holds
// the lines (a few hundred bytes, far less than the server's buffer) until
// the stream ends, which here is never.
func TestServiceLogsFollow(t *testing.T) {
	s := startSvcHushd(t)
	name := "logsf_" + runSuffix(t)
	t.Cleanup(func() { s.Docker("service", "rm", name) })
	s.MustDocker("service", "create", "-d", "--name", name, "--stop-grace-period", "1s", s.img, "sh", "-c",
		`i=1; while [ $i -le 5 ]; do echo logsf-line-$i; i=$((i+1)); sleep 0.2; done; trap "exit 0" TERM; while :; do sleep 0.2; done`)

	// The lines asserted are printed first: wait for the task so that none
	// is printed before the follow starts.
	s.waitTasks(name, 1, "the task running", nil)

	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, dockerBinary(), "service", "logs", "-f", "--raw", name)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "DOCKER_HOST=unix://"+s.host, "DOCKER_CONFIG="+s.configDir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	// The bound only keeps a stream that never flushes from hanging the
	// test; what is asserted is that the fifth line arrives while the
	// stream is still open and the task still running.
	timeout := time.After(60 * time.Second)
	for want := 1; want <= 5; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("service logs -f ended before line %d (the service runs on)", want)
			}
			if l == fmt.Sprintf("logsf-line-%d", want) {
				want++
			}
		case <-timeout:
			t.Fatalf("service logs -f: line %d not printed while the service runs", want)
		}
	}
	// The lines came while the workload runs on: the stream is still open.
	if len(s.containers(name)) != 1 {
		t.Fatalf("the task stopped while its logs were followed")
	}
}

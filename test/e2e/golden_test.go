package e2e

import (
	"crypto/rand"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

const goldenDir = "testdata/swarm"

// runSuffix returns a random 8-digit suffix, unique per run, for names on the
// shared Swarm. Digits only, so that upper-casing a name keeps the suffix.
func runSuffix(t testing.TB) string {
	n, err := rand.Int(rand.Reader, big.NewInt(90000000))
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%08d", n.Int64()+10000000)
}

// normaliser replaces what legitimately differs between two runs (IDs,
// times, version indexes, the run suffix, temp paths) with placeholders.
type normaliser struct {
	suffix   string
	ids      []string          // full IDs seen in this run
	prefixes []string          // ID prefixes used as arguments
	literals map[string]string // exact text -> placeholder (e.g. temp file paths)
}

var (
	reID       = regexp.MustCompile(`\b[a-z0-9]{25}\b`)
	reRFC3339  = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`)
	rePretty   = regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? [+-]\d{4} [A-Za-z]+`)
	reRelative = regexp.MustCompile(`(Less than a second|About an? (minute|hour)|\d+ (second|minute|hour|day|week|month|year)s?) ago`)
	reIndex    = regexp.MustCompile(`"Index": \d+`)
	reIndex2   = regexp.MustCompile(`"Index":\d+`)
	reSpaces   = regexp.MustCompile(`(\S)[ \t]{2,}`)
	reTrailing = regexp.MustCompile(`[ \t]+\n`)
)

func (n *normaliser) addID(id string) {
	if id != "" {
		n.ids = append(n.ids, id)
	}
}

func (n *normaliser) norm(s string) string {
	for lit, ph := range n.literals {
		s = strings.ReplaceAll(s, lit, ph)
	}
	ids := append([]string(nil), n.ids...)
	sort.Slice(ids, func(i, j int) bool { return len(ids[i]) > len(ids[j]) })
	for _, id := range ids {
		s = strings.ReplaceAll(s, id, "<ID>")
		s = strings.ReplaceAll(s, strings.ToUpper(id), "<ID-UPPER>")
	}
	s = reID.ReplaceAllString(s, "<ID>")
	for _, p := range n.prefixes {
		s = regexp.MustCompile(`\b`+regexp.QuoteMeta(p)+`\b`).ReplaceAllString(s, "<IDPREFIX>")
	}
	if n.suffix != "" {
		s = strings.ReplaceAll(s, n.suffix, "<RUN>")
	}
	s = reRFC3339.ReplaceAllString(s, "<TIME>")
	s = rePretty.ReplaceAllString(s, "<TIME>")
	s = reRelative.ReplaceAllString(s, "<TIME>")
	s = reIndex.ReplaceAllString(s, `"Index": <N>`)
	s = reIndex2.ReplaceAllString(s, `"Index":<N>`)
	// Column widths of the CLI's tables depend on the widest cell (e.g.
	// "5 seconds ago" vs "About a minute ago"): collapse interior runs.
	s = reSpaces.ReplaceAllString(s, "$1  ")
	s = reTrailing.ReplaceAllString(s, "\n")
	return s
}

func goldenPath(name string) string { return filepath.Join(goldenDir, name+".golden") }

func readGolden(t testing.TB, name string) (string, bool) {
	t.Helper()
	b, err := os.ReadFile(goldenPath(name))
	if os.IsNotExist(err) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b), true
}

func writeGolden(t testing.TB, name, content string) {
	t.Helper()
	if err := os.MkdirAll(goldenDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goldenPath(name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// lineDiff renders a minimal line diff (LCS) of want and got.
func lineDiff(want, got string) string {
	a := strings.Split(want, "\n")
	b := strings.Split(got, "\n")
	dp := make([][]int, len(a)+1)
	for i := range dp {
		dp[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				dp[i][j] = dp[i+1][j+1] + 1
			} else {
				dp[i][j] = max(dp[i+1][j], dp[i][j+1])
			}
		}
	}
	var sb strings.Builder
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			sb.WriteString("  " + a[i] + "\n")
			i++
			j++
		case j < len(b) && (i == len(a) || dp[i][j+1] >= dp[i+1][j]):
			sb.WriteString("+ " + b[j] + "\n")
			j++
		default:
			sb.WriteString("- " + a[i] + "\n")
			i++
		}
	}
	return sb.String()
}

// checkSwarmGolden is the Swarm side of a transcript comparison: under
// -update it records got as the golden; otherwise live Swarm must still
// give the recorded transcript (a change means Swarm or the CLI changed).
func checkSwarmGolden(t testing.TB, name, got string) {
	t.Helper()
	if *update {
		writeGolden(t, name, got)
		return
	}
	want, ok := readGolden(t, name)
	if !ok {
		t.Fatalf("no golden file %s: run with -update", goldenPath(name))
	}
	if got != want {
		t.Errorf("live Swarm differs from %s (re-record with -update if Swarm changed):\n%s", goldenPath(name), lineDiff(want, got))
	}
}

// checkHushdGolden is the hushd side: got must be Swarm's recorded
// transcript and, when live Swarm ran in this process and gave another
// (live != ""), that one too.
func checkHushdGolden(t testing.TB, name, got, live string) {
	t.Helper()
	want, ok := readGolden(t, name)
	if !ok {
		t.Fatalf("no golden file %s: run with -update against Swarm", goldenPath(name))
	}
	if got != want {
		t.Errorf("hushd differs from Swarm's golden %s (- Swarm, + hushd):\n%s", goldenPath(name), lineDiff(want, got))
	}
	if live != "" && live != want && got != live {
		t.Errorf("hushd differs from live Swarm (- Swarm, + hushd):\n%s", lineDiff(live, got))
	}
}

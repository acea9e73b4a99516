package constraint

import "testing"

func TestParseAndMatch(t *testing.T) {
	n := Node{ID: "abc", Hostname: "vm", Role: "manager", OS: "linux", Arch: "amd64",
		Labels: map[string]string{"zone": "a", "Disk": "ssd"}}
	tests := []struct {
		exprs   []string
		wantErr string
		match   bool
	}{
		{[]string{"node.role == manager"}, "", true},
		{[]string{"node.role==worker"}, "", false},
		{[]string{"node.labels.zone == a", "node.platform.os == linux"}, "", true},
		{[]string{"node.labels.zone != a"}, "", false},
		{[]string{"node.labels.missing != x"}, "", true},
		{[]string{"node.labels.missing == x"}, "", false},
		{[]string{"node.labels.disk == SSD"}, "", true},
		{[]string{"node.hostname == VM"}, "", true},
		{[]string{"node.role = manager"}, "constraint expected one operator from ==, !=", false},
		{[]string{"node.color == red"}, "invalid constraint: node.color == red", false},
		{[]string{"node.labels. == x"}, "invalid constraint: node.labels. == x", false},
		// Swarm's texts for characters outside its sets.
		{[]string{"node.role == "}, "value '' is invalid", false},
		{[]string{"node.labels.a= == b"}, "key 'node.labels.a=' is invalid", false},
		{[]string{"node.labels.a===b"}, "value '=b' is invalid", false},
		{[]string{"node.id==a!=b"}, "value 'a!=b' is invalid", false},
	}
	for _, tt := range tests {
		cs, err := Parse(tt.exprs)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("%v: err %v, want %q", tt.exprs, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tt.exprs, err)
			continue
		}
		if got := Match(cs, n); got != tt.match {
			t.Errorf("%v: match %v, want %v", tt.exprs, got, tt.match)
		}
	}
}

package dispatchnet

import (
	"bytes"
	"slices"
	"testing"

	"github.com/hush-secrets/hush/internal/model"
)

// FuzzReadFrame: any bytes from a manager either fail to decode or decode
// into a message whose items hold their kind's bounds and which encodes
// and decodes again to the same tasks and data.
func FuzzReadFrame(f *testing.F) {
	tk := &model.Task{}
	tk.ID = "t1"
	b, err := encodeAssignments(model.Assignments{Full: true, Tasks: []model.AssignedTask{{Task: tk}}, RemovedTasks: []string{"t0"},
		Data: []model.DataItem{{DataRef: model.DataRef{Kind: "secret", ID: "s1", Version: 2}, Name: "n", Data: []byte("v")}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(frame(frameHello, []byte(`{"Session":"x","HeartbeatMillis":5000}`)))
	f.Add(frame(frameEnd, []byte(`{"Kind":"unavailable","Msg":"m"}`)))
	f.Add([]byte{0, 0, 0, 5, 2, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		typ, body, err := readFrame(bytes.NewReader(in), 1<<20)
		if err != nil || typ != frameAssignments {
			return
		}
		m, err := decodeAssignments(body)
		if err != nil {
			return
		}
		for _, it := range m.Data {
			if checkItem(wireItem{DataRef: it.DataRef, Size: len(it.Data)}) != nil {
				t.Fatalf("item out of bounds decoded: %s %d", it.Kind, len(it.Data))
			}
		}
		re, err := encodeAssignments(m)
		if err != nil {
			t.Fatal(err)
		}
		_, body2, err := readFrame(bytes.NewReader(re), MaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := decodeAssignments(body2)
		if err != nil {
			t.Fatal(err)
		}
		if m2.Full != m.Full || !slices.Equal(taskIDs(m2), taskIDs(m)) || len(m2.Data) != len(m.Data) {
			t.Fatal("re-encoding changed the message")
		}
		for i := range m.Data {
			if m.Data[i].DataRef != m2.Data[i].DataRef || !bytes.Equal(m.Data[i].Data, m2.Data[i].Data) {
				t.Fatalf("item %d changed", i)
			}
		}
	})
}

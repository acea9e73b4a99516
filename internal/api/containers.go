package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/hush-secrets/hush/internal/agent/secretfs"
	"github.com/hush-secrets/hush/internal/errdefs"
	"github.com/hush-secrets/hush/internal/manager/objects"
	"github.com/hush-secrets/hush/internal/manager/services"
	"github.com/hush-secrets/hush/internal/manager/standalone"
	"github.com/hush-secrets/hush/internal/model"
	"github.com/moby/moby/api/types/container"
)

// ContainerGrants gives secrets and configs to standalone containers
// (standalone.Manager).
type ContainerGrants interface {
	Prepare(ctx context.Context, req standalone.Request, name string) (*standalone.Prepared, error)
	Commit(ctx context.Context, grantID, containerID, name string) error
	Abort(ctx context.Context, grantID string)
	Holders(ctx context.Context, table, id string) ([]standalone.Holder, error)
}

// maxCreateBodyBytes bounds a container create body hush reads whole (it
// must see the labels before anything goes to the engine). Real ones are a
// few KiB; a large environment stays far below this.
const maxCreateBodyBytes = 4 << 20

// maxCreateAnswerBytes bounds the engine's create answer hush holds
// until the grant names the container ({"Id":..., "Warnings":[...]}).
const maxCreateAnswerBytes = 1 << 20

// isContainerCreate tells the one pass-through call hush looks into, as
// the engine's router matches it: its version prefix is /v[0-9.]+ (so
// /v1.41.0/ is a version to it), wider than the X.Y splitVersion takes.
// It returns the version segment ("" when there is none).
func isContainerCreate(r *http.Request) (string, bool) {
	if r.Method != http.MethodPost {
		return "", false
	}
	p := r.URL.Path
	if p == "/containers/create" {
		return "", true
	}
	v, ok := strings.CutSuffix(p, "/containers/create")
	if !ok || !strings.HasPrefix(v, "/v") || len(v) < 3 {
		return "", false
	}
	v = v[2:]
	for _, c := range v {
		if c != '.' && (c < '0' || c > '9') {
			return "", false
		}
	}
	return v, true
}

// containerCreate serves POST /containers/create. A request without an
// io.hush.* label goes to the engine byte for byte as it came. One with
// them has its references checked, its tmpfs mounted and read-only binds
// added to HostConfig.Mounts; every other field it sent is forwarded as
// is, unknown ones included.
func (s *Server) containerCreate(w http.ResponseWriter, r *http.Request, version string) {
	raw, err := io.ReadAll(io.LimitReader(r.Body, maxCreateBodyBytes+1))
	if err != nil {
		s.writeError(w, r, errdefs.BadRequest("reading request body: %v", err))
		return
	}
	if len(raw) > maxCreateBodyBytes {
		_, _ = io.CopyN(io.Discard, r.Body, maxDrainBytes)
		s.writeError(w, r, &http.MaxBytesError{Limit: maxCreateBodyBytes})
		return
	}
	top, labels, trailing, ok := createLabels(raw)
	if !ok || !standalone.HasLabels(labels) {
		s.forward(w, r, raw)
		return
	}
	if trailing {
		// The engine reads the first JSON value and (before API 1.44's
		// daemons) ignores the rest: refuse rather than guess.
		s.writeError(w, r, errdefs.BadRequest("invalid JSON: unexpected content after the create request's object"))
		return
	}
	if k := repeatedKey(raw); k != "" {
		s.writeError(w, r, errdefs.BadRequest("%s is given twice", k))
		return
	}
	if version != "" && !validVersion(version) {
		s.writeError(w, r, errdefs.BadRequest("API version %q in the path is not of the form X.Y", version))
		return
	}
	if err := checkVersion(version); err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.Swarm != nil {
		if err := s.Swarm.CheckServing(); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	body, grant, err := s.grantCreate(r, top, labels)
	if err != nil {
		s.writeError(w, r, plainError(err))
		return
	}
	rec := &captureWriter{header: http.Header{}, code: http.StatusOK}
	// Seen through even if the client hangs up: the engine may create the
	// container anyway, and a grant undone under it leaves a container
	// that can never start.
	s.forward(rec, r.WithContext(context.WithoutCancel(r.Context())), body)
	if rec.code == http.StatusCreated {
		var ans struct {
			ID string `json:"Id"`
		}
		if rec.over || json.Unmarshal(rec.buf.Bytes(), &ans) != nil || ans.ID == "" {
			// The container exists but its ID is unknown: recorded without
			// it, so the reconciler matches it by its binds (a pending grant
			// is never reconciled, an undone one breaks the container).
			s.log.Warn("standalone: the engine's create answer has no readable container ID", "grant", grant)
			ans.ID = ""
		}
		// Recorded before the client hears of the container, so its
		// first start, and its removal, find the grant complete.
		if err := s.Containers.Commit(context.WithoutCancel(r.Context()), grant, ans.ID, r.URL.Query().Get("name")); err != nil {
			s.log.Warn("standalone: recording a container's grant", "container", ans.ID, "err", err)
		}
	} else {
		s.Containers.Abort(context.WithoutCancel(r.Context()), grant)
	}
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.code)
	_, _ = w.Write(rec.buf.Bytes())
}

// createLabels decodes the create body's top level (kept raw, so that
// every field is forwarded as sent) and its Labels. ok is false when the
// body is not what hush can read: the engine then answers it. Like the
// engine, it reads the first JSON value only; trailing tells that more
// than white space follows it.
func createLabels(raw []byte) (_ map[string]json.RawMessage, _ map[string]string, trailing, ok bool) {
	keys, vals, end, err := objectPairs(raw)
	if err != nil {
		return nil, nil, false, false
	}
	trailing = len(bytes.TrimSpace(raw[end:])) > 0
	top := make(map[string]json.RawMessage, len(keys))
	// The engine matches field names case-insensitively, and decodes a
	// field given several times (in any spelling) into the same map, each
	// in turn: so Labels are the merge of every copy.
	var labels map[string]string
	for i, k := range keys {
		top[k] = vals[i]
		if !strings.EqualFold(k, "Labels") {
			continue
		}
		var m map[string]string
		if err := json.Unmarshal(vals[i], &m); err != nil {
			return nil, nil, false, false
		}
		if labels == nil {
			labels = map[string]string{}
		}
		for lk, lv := range m {
			labels[lk] = lv
		}
	}
	return top, labels, trailing, true
}

// objectPairs reads the members of the JSON object raw starts with, in
// order and repeats included (a map keeps only the last of a repeated
// key, while the engine's decoder merges repeated objects into one), and
// the offset where the object ends.
func objectPairs(raw []byte) (keys []string, vals []json.RawMessage, end int, err error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, 0, errors.New("not a JSON object")
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, 0, err
		}
		k, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, 0, err
		}
		keys, vals = append(keys, k), append(vals, v)
	}
	if _, err := dec.Token(); err != nil {
		return nil, nil, 0, err
	}
	return keys, vals, int(dec.InputOffset()), nil
}

// repeatedKey returns a member name the JSON object raw gives more than
// once in the same spelling ("" if none): hush cannot forward both, and
// the engine would merge them.
func repeatedKey(raw []byte) string {
	keys, _, _, err := objectPairs(raw)
	if err != nil {
		return ""
	}
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if seen[k] {
			return k
		}
		seen[k] = true
	}
	return ""
}

// field returns the one value of top spelled name in any case, refusing a
// request that spells it twice (which one the engine uses is its order).
func field(top map[string]json.RawMessage, where, name string) (string, json.RawMessage, error) {
	key, n := name, 0
	var val json.RawMessage
	for k, v := range top {
		if strings.EqualFold(k, name) {
			key, val, n = k, v, n+1
		}
	}
	if n > 1 {
		return "", nil, errdefs.BadRequest("%s%s is given %d times (in different cases)", where, name, n)
	}
	if n == 1 && bytes.Equal(bytes.TrimSpace(val), []byte("null")) {
		val = nil
	}
	return key, val, nil
}

// grantCreate checks the labels, prepares the grant and returns the body
// to send to the engine.
func (s *Server) grantCreate(r *http.Request, top map[string]json.RawMessage, labels map[string]string) ([]byte, string, error) {
	req, err := standalone.ParseLabels(labels)
	if err != nil {
		return nil, "", err
	}
	if err := checkLabelSpellings(top); err != nil {
		return nil, "", err
	}
	hcKey, h, err := field(top, "", "HostConfig")
	if err != nil {
		return nil, "", err
	}
	if h == nil {
		// The engine then reads HostConfig's fields from the top level,
		// and stops once hush adds a HostConfig for its mounts.
		for k := range top {
			if isHostField(k) {
				return nil, "", errdefs.BadRequest("%s at the top level of a create is the engine's deprecated form, which the HostConfig hush adds for the secrets' mounts would override: send it in HostConfig", k)
			}
		}
	}
	hc := map[string]json.RawMessage{}
	if h != nil {
		if err := json.Unmarshal(h, &hc); err != nil || hc == nil {
			return nil, "", errdefs.BadRequest("HostConfig: not a JSON object")
		}
		if k := repeatedKey(h); k != "" {
			return nil, "", errdefs.BadRequest("HostConfig.%s is given twice", k)
		}
	}
	mKey, m, err := field(hc, "HostConfig.", "Mounts")
	if err != nil {
		return nil, "", err
	}
	var mounts []json.RawMessage
	if m != nil {
		if err := json.Unmarshal(m, &mounts); err != nil {
			return nil, "", errdefs.BadRequest("HostConfig.Mounts: not a JSON array")
		}
	}
	taken, err := containerTargets(hc, mounts)
	if err != nil {
		return nil, "", err
	}
	for _, set := range [][]standalone.Ref{req.Secrets, req.Configs} {
		for _, ref := range set {
			if what, ok := taken[ref.Target]; ok {
				return nil, "", errdefs.BadRequest("%s %q: target %s is already used by %s", nounOf(req, ref), ref.Name, ref.Target, what)
			}
		}
	}
	if req.Empty() {
		return nil, "", errdefs.BadRequest("io.hush.* labels name no secret or config")
	}
	if err := sharedSecretsDir(&req, taken); err != nil {
		return nil, "", err
	}
	name := r.URL.Query().Get("name")
	p, err := s.Containers.Prepare(r.Context(), req, strings.TrimPrefix(name, "/"))
	if err != nil {
		return nil, "", err
	}
	for _, b := range p.Bindings {
		m, _ := json.Marshal(struct {
			Type     string
			Source   string
			Target   string
			ReadOnly bool
		}{"bind", b.HostPath, b.ContainerPath, true})
		mounts = append(mounts, m)
	}
	if hc[mKey], err = json.Marshal(mounts); err == nil {
		if top[hcKey], err = json.Marshal(hc); err == nil {
			var body []byte
			if body, err = json.Marshal(top); err == nil {
				return body, p.GrantID, nil
			}
		}
	}
	s.Containers.Abort(context.WithoutCancel(r.Context()), p.GrantID)
	return nil, "", fmt.Errorf("encode create request: %w: %w", errdefs.ErrInternal, err)
}

// sharedSecretsDir makes the files be bound one by one when the client
// mounts something of its own at or under /run/secrets, which the one
// swappable directory would take whole (or hide); reload and signal:,
// which need that directory, are then refused by name.
func sharedSecretsDir(req *standalone.Request, taken map[string]string) error {
	targets := make([]string, 0, len(taken))
	for t := range taken {
		targets = append(targets, t)
	}
	sort.Strings(targets)
	for _, t := range targets {
		what := taken[t]
		if t != secretfs.SecretsDir && !strings.HasPrefix(t, secretfs.SecretsDir+"/") {
			continue
		}
		if req.Rotate != "" && req.Rotate != model.RotateRestart {
			return errdefs.BadRequest("label %s=%s: %s at %s shares %s, which a reloaded container's secrets take whole: use %s=%s or mount elsewhere",
				standalone.LabelRotate, req.Rotate, what, t, secretfs.SecretsDir, standalone.LabelRotate, model.RotateRestart)
		}
		req.BindEach = true
	}
	return nil
}

// hostFields are the JSON names (lower case) of HostConfig's fields that
// the engine's create body also reads at its top level (those not also
// a container Config field, which Go's decoder would then ignore).
var hostFields = func() map[string]bool {
	names := func(t reflect.Type) map[string]bool {
		out := map[string]bool{}
		var walk func(reflect.Type)
		walk = func(t reflect.Type) {
			for i := range t.NumField() {
				f := t.Field(i)
				if f.Anonymous && f.Type.Kind() == reflect.Struct {
					walk(f.Type)
					continue
				}
				if !f.IsExported() {
					continue
				}
				n, _, _ := strings.Cut(f.Tag.Get("json"), ",")
				if n == "-" {
					continue
				}
				if n == "" {
					n = f.Name
				}
				out[strings.ToLower(n)] = true
			}
		}
		walk(t)
		return out
	}
	hc, cfg := names(reflect.TypeFor[container.HostConfig]()), names(reflect.TypeFor[container.Config]())
	for n := range cfg {
		delete(hc, n)
	}
	return hc
}()

func isHostField(k string) bool { return hostFields[strings.ToLower(k)] }

// checkLabelSpellings refuses Labels spelled twice: the engine would keep
// only one of them, and hush could not tell which its checks must follow.
func checkLabelSpellings(top map[string]json.RawMessage) error {
	_, _, err := field(top, "", "Labels")
	return err
}

func nounOf(req standalone.Request, ref standalone.Ref) string {
	for _, r := range req.Secrets {
		if r == ref {
			return "secret"
		}
	}
	return "config"
}

// containerTargets are the container paths the client's own mounts,
// binds, tmpfs and volumes use, so that a secret is never bound over one.
func containerTargets(hc map[string]json.RawMessage, mounts []json.RawMessage) (map[string]string, error) {
	taken := map[string]string{}
	for i, m := range mounts {
		var mt struct{ Target string }
		if err := json.Unmarshal(m, &mt); err != nil {
			return nil, errdefs.BadRequest("HostConfig.Mounts[%d]: %v", i, err)
		}
		if mt.Target != "" {
			taken[path.Clean(mt.Target)] = "a mount (HostConfig.Mounts)"
		}
	}
	_, b, err := field(hc, "HostConfig.", "Binds")
	if err != nil {
		return nil, err
	}
	_, t, err := field(hc, "HostConfig.", "Tmpfs")
	if err != nil {
		return nil, err
	}
	if b != nil {
		var binds []string
		if json.Unmarshal(b, &binds) == nil {
			for _, bd := range binds {
				parts := strings.Split(bd, ":")
				if len(parts) >= 2 {
					taken[path.Clean(parts[1])] = "a bind (HostConfig.Binds)"
				}
			}
		}
	}
	if t != nil {
		var tm map[string]string
		if json.Unmarshal(t, &tm) == nil {
			for p := range tm {
				taken[path.Clean(p)] = "a tmpfs (HostConfig.Tmpfs)"
			}
		}
	}
	return taken, nil
}

// plainError turns a control-API error into the plain 400 the engine's
// create call gives (no "rpc error" prefix: this is not a swarm call).
func plainError(err error) error {
	var e *errdefs.Error
	if errors.As(err, &e) && e.Control && errors.Is(err, errdefs.ErrInvalidArgument) {
		return errdefs.BadRequest("%s", e.Msg)
	}
	return err
}

// forward hands the request, with body, to the engine.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, body []byte) {
	if s.Fallback == nil {
		writeJSON(w, http.StatusNotFound, errorBody{Message: "page not found"})
		return
	}
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(body))
	r2.ContentLength = int64(len(body))
	r2.TransferEncoding = nil
	r2.Header.Set("Content-Length", strconv.Itoa(len(body)))
	s.Fallback.ServeHTTP(w, r2)
}

// captureWriter holds the engine's (small) create answer.
type captureWriter struct {
	header http.Header
	code   int
	wrote  bool
	buf    bytes.Buffer
	over   bool
}

func (c *captureWriter) Header() http.Header { return c.header }

func (c *captureWriter) WriteHeader(code int) {
	if !c.wrote {
		c.code, c.wrote = code, true
	}
}

func (c *captureWriter) Write(p []byte) (int, error) {
	c.WriteHeader(http.StatusOK)
	if c.buf.Len()+len(p) > maxCreateAnswerBytes {
		c.over = true
		return 0, errors.New("create answer too large")
	}
	return c.buf.Write(p)
}

func (c *captureWriter) Flush() {}

// holders serves GET /hush/v1/secrets/{id}/holders and the configs one:
// who holds the object, containers and tasks.
func (s *Server) holders(table string, get func(ctx context.Context, ref string) (string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := get(r.Context(), r.PathValue("id"))
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		out, err := s.Containers.Holders(r.Context(), table, id)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if s.Services != nil {
			tasks, err := taskHolders(r.Context(), s.Services, table, id)
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			out = append(out, tasks...)
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// taskHolders are the tasks not yet ended whose spec mounts the object.
func taskHolders(ctx context.Context, svcs *services.Manager, table, id string) ([]standalone.Holder, error) {
	_, tasks, err := svcs.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	var out []standalone.Holder
	for _, t := range tasks {
		cs := t.Spec.ContainerSpec
		if cs == nil || model.Terminal(t.Status.State) {
			continue
		}
		holds := false
		if table == "secrets" {
			for _, r := range cs.Secrets {
				holds = holds || (r != nil && r.SecretID == id)
			}
		} else {
			for _, r := range cs.Configs {
				holds = holds || (r != nil && r.ConfigID == id)
			}
		}
		if !holds {
			continue
		}
		name := fmt.Sprintf("%s.%d.%s", t.ServiceName, t.Slot, t.ID)
		if t.Slot == 0 {
			name = fmt.Sprintf("%s.%s.%s", t.ServiceName, t.NodeID, t.ID)
		}
		kind := objects.Secret.Name
		if table == objects.Config.Table {
			kind = objects.Config.Name
		}
		out = append(out, standalone.Holder{Kind: "task", ID: t.ID, Name: name, Service: t.ServiceName, Version: t.HeldVersion(kind, id), Since: t.CreatedAt})
	}
	return out, nil
}

func (s *Server) containerRoutes() {
	if s.Containers == nil {
		return
	}
	s.mux.HandleFunc("GET /hush/v1/secrets/{id}/holders", s.holders("secrets", func(ctx context.Context, ref string) (string, error) {
		o, err := s.Secrets.Get(ctx, ref)
		return o.ID, err
	}))
	if s.Configs != nil {
		s.mux.HandleFunc("GET /hush/v1/configs/{id}/holders", s.holders("configs", func(ctx context.Context, ref string) (string, error) {
			o, err := s.Configs.Get(ctx, ref)
			return o.ID, err
		}))
	}
}

package admin_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/admin"
	"github.com/mpsaas/mpsaas/sqlite"
)

const password = "correct horse battery staple"

var secret = []byte("0123456789abcdef0123456789abcdef")

type fakeMeter struct {
	mu  sync.Mutex
	ids [][]int64
}

func (f *fakeMeter) Replay(_ context.Context, ids []int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ids = append(f.ids, ids)
	return len(ids), nil
}

type env struct {
	t     *testing.T
	db    *sqlite.DB
	srv   *httptest.Server
	meter *fakeMeter
	now   time.Time
	mu    sync.Mutex
	logs  *bytes.Buffer
}

func (e *env) Now() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *env) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

var hashOnce = sync.OnceValue(func() string {
	h, err := admin.HashPassword(password, 2000)
	if err != nil {
		panic(err)
	}
	return h
})

func newEnv(t *testing.T) *env {
	t.Helper()
	db, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e := &env{t: t, db: db, meter: &fakeMeter{}, now: time.Now().UTC(), logs: &bytes.Buffer{}}
	c, err := admin.New(admin.Config{PasswordHash: hashOnce(), Secret: secret, Channels: []string{mpsaas.ChannelWebhook}, Products: []string{"prod-a"},
		Logger: slog.New(slog.NewJSONHandler(syncWriter{e}, nil)), Clock: e}, db, e.meter)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	c.Register(mux)
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	return e
}

type syncWriter struct{ e *env }

func (w syncWriter) Write(p []byte) (int, error) {
	w.e.mu.Lock()
	defer w.e.mu.Unlock()
	return w.e.logs.Write(p)
}

func (e *env) log() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.logs.String()
}

// client is a browser: a cookie jar, no automatic redirects.
func (e *env) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return b.String()
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// get fetches a page and returns its body and CSRF token.
func (e *env) get(c *http.Client, path string) (int, string, string) {
	e.t.Helper()
	resp, err := c.Get(e.srv.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	b := body(e.t, resp)
	m := csrfRe.FindStringSubmatch(b)
	token := ""
	if m != nil {
		token = m[1]
	}
	return resp.StatusCode, b, token
}

func (e *env) post(c *http.Client, path string, form url.Values) (*http.Response, string) {
	e.t.Helper()
	resp, err := c.PostForm(e.srv.URL+path, form)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, body(e.t, resp)
}

// login signs a client in and returns it.
func (e *env) login() *http.Client {
	e.t.Helper()
	c := e.client()
	_, _, token := e.get(c, "/admin/login")
	resp, _ := e.post(c, "/admin/login", url.Values{"csrf": {token}, "password": {password}, "next": {"/admin/buyers"}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/admin/buyers" {
		e.t.Fatalf("login: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	return c
}

func (e *env) addBuyer(key, company, email string, status mpsaas.Status) *mpsaas.Subscriber {
	e.t.Helper()
	s := &mpsaas.Subscriber{Key: key, Identity: mpsaas.Identity{CustomerIdentifier: key, ProductCode: "prod-a", CustomerAWSAccountID: "111122223333"},
		Contact: mpsaas.Contact{CompanyName: company, ContactEmail: email}, State: mpsaas.State{Status: status}, Access: mpsaas.AccessGranted, AccessVersion: 1}
	ch := mpsaas.NewAccessChange(s, e.now)
	if err := e.db.SaveSubscriber(context.Background(), s, &ch, []string{mpsaas.ChannelWebhook}); err != nil {
		e.t.Fatal(err)
	}
	return s
}

// Every page and action refuses a client without a session: pages send it
// to the login form, everything else answers 401.
func TestEveryPageNeedsASession(t *testing.T) {
	e := newEnv(t)
	e.addBuyer("cust-1", "Acme", "a@example.com", mpsaas.StatusActive)
	c := e.client()
	for _, p := range []string{"/admin/", "/admin/buyers", "/admin/buyers/cust-1", "/admin/metering", "/admin/deliveries"} {
		resp, err := c.Get(e.srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		b := body(t, resp)
		if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/admin/login?next=") || strings.Contains(b, "Acme") {
			t.Errorf("GET %s without a session: %d %s", p, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	if status, b, _ := e.get(c, "/admin/buyers.csv"); status != http.StatusUnauthorized || strings.Contains(b, "Acme") {
		t.Errorf("CSV without a session: %d", status)
	}
	for _, p := range []string{"/admin/deliveries/retry", "/admin/metering/replay", "/admin/logout"} {
		if resp, _ := e.post(c, p, url.Values{"id": {"1"}}); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("POST %s without a session: %d", p, resp.StatusCode)
		}
	}
	// A forged or tampered cookie is no session.
	u, _ := url.Parse(e.srv.URL)
	c.Jar.SetCookies(u, []*http.Cookie{{Name: "mpsaas_admin", Value: "9999999999.abcd.forged", Path: "/admin"}})
	if status, _, _ := e.get(c, "/admin/buyers"); status != http.StatusSeeOther {
		t.Errorf("forged cookie: %d", status)
	}
}

func TestLogin(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	_, page, token := e.get(c, "/admin/login")
	if token == "" || !strings.Contains(page, `type="password"`) {
		t.Fatalf("login form: %s", page)
	}
	// Without the form's token (a cross-site post): refused.
	if resp, _ := e.post(c, "/admin/login", url.Values{"password": {password}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("login without CSRF token: %d", resp.StatusCode)
	}
	if resp, _ := e.post(c, "/admin/login", url.Values{"csrf": {token}, "password": {"wrong password!"}}); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("wrong password: %d", resp.StatusCode)
	}
	// An outside redirect target is replaced.
	resp, _ := e.post(c, "/admin/login", url.Values{"csrf": {token}, "password": {password}, "next": {"//evil.example/admin/"}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/admin/buyers" {
		t.Errorf("login: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	var session *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "mpsaas_admin" {
			session = ck
		}
	}
	if session == nil || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || session.Path != "/admin" || session.MaxAge != 12*3600 {
		t.Fatalf("session cookie = %+v", session)
	}
	if session.Secure {
		t.Errorf("a loopback HTTP session cookie is Secure: the browser would drop it")
	}
	if status, _, _ := e.get(c, "/admin/buyers"); status != http.StatusOK {
		t.Errorf("with a session: %d", status)
	}
	if !strings.Contains(e.log(), `"action":"login-failed"`) || !strings.Contains(e.log(), `"action":"login"`) {
		t.Errorf("login attempts are not audited:\n%s", e.log())
	}
	// Sessions end after 12 hours.
	e.advance(12*time.Hour + time.Second)
	if status, _, _ := e.get(c, "/admin/buyers"); status != http.StatusSeeOther {
		t.Errorf("after 12 hours: %d, want the login form", status)
	}
}

// TestSecureCookieBehindTLS: a console reached over HTTPS (or through a
// proxy that says so) sets Secure cookies.
func TestSecureCookieBehindTLS(t *testing.T) {
	e := newEnv(t)
	req := httptest.NewRequest(http.MethodGet, "https://console.example.com/admin/login", nil)
	req.Host = "console.example.com"
	rec := httptest.NewRecorder()
	mux := http.NewServeMux()
	c, _ := admin.New(admin.Config{PasswordHash: hashOnce(), Secret: secret}, e.db, e.meter)
	c.Register(mux)
	mux.ServeHTTP(rec, req)
	for _, ck := range rec.Result().Cookies() {
		if !ck.Secure || !ck.HttpOnly {
			t.Errorf("cookie %s over HTTPS: Secure %v HttpOnly %v", ck.Name, ck.Secure, ck.HttpOnly)
		}
	}
}

func TestLoginIsRateLimited(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	_, _, token := e.get(c, "/admin/login")
	for i := 0; i < 5; i++ {
		if resp, _ := e.post(c, "/admin/login", url.Values{"csrf": {token}, "password": {"guess number " + string(rune('a'+i))}}); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d", i+1, resp.StatusCode)
		}
	}
	// The right password is not even checked now.
	if resp, _ := e.post(c, "/admin/login", url.Values{"csrf": {token}, "password": {password}}); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("sixth attempt in a minute: %d, want 429", resp.StatusCode)
	}
	e.advance(time.Minute)
	if resp, _ := e.post(c, "/admin/login", url.Values{"csrf": {token}, "password": {password}}); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("a minute later: %d, want a login", resp.StatusCode)
	}
}

func TestActionsNeedTheSessionsCSRFToken(t *testing.T) {
	e := newEnv(t)
	e.addBuyer("cust-1", "Acme", "a@example.com", mpsaas.StatusActive)
	due, _ := e.db.DueMessages(context.Background(), e.now.Add(time.Minute), 10)
	_ = e.db.MarkFailed(context.Background(), due[0].ID, "receiver answered 500", e.now.Add(time.Hour))
	alice, bob := e.login(), e.login()
	_, _, aliceToken := e.get(alice, "/admin/deliveries")
	for name, form := range map[string]url.Values{
		"no token":              {"id": {due[0].ID}},
		"another session's one": {"id": {due[0].ID}, "csrf": {aliceToken}},
	} {
		if resp, _ := e.post(bob, "/admin/deliveries/retry", form); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", name, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/admin/deliveries/retry", strings.NewReader(url.Values{"id": {due[0].ID}, "csrf": {aliceToken}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	resp, err := alice.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Body.Close(); resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-origin post: %d, want 403", resp.StatusCode)
	}
	if f, _ := e.db.FailedDeliveries(context.Background(), 10); len(f) != 1 || !f[0].NextAttemptAt.After(e.now.Add(time.Minute)) {
		t.Fatalf("a refused retry changed the message: %+v", f)
	}
	if !strings.Contains(e.log(), `"action":"csrf-refused"`) {
		t.Errorf("refusals are not audited")
	}
}

func TestBuyersSearchAndCSV(t *testing.T) {
	e := newEnv(t)
	e.addBuyer("cust-1", "Acme Corp", "ops@acme.example", mpsaas.StatusActive)
	e.addBuyer("cust-2", "=HYPERLINK(\"http://evil\")", "x@evil.example", mpsaas.StatusCancelled)
	for i := 0; i < 60; i++ {
		e.addBuyer("bulk-"+string(rune('A'+i/26))+string(rune('a'+i%26)), "Bulk", "bulk@example.com", mpsaas.StatusActive)
	}
	c := e.login()
	_, page, _ := e.get(c, "/admin/buyers?q=ACME")
	if !strings.Contains(page, "cust-1") || strings.Contains(page, "cust-2") || strings.Contains(page, "bulk-") {
		t.Errorf("search for ACME:\n%s", page)
	}
	_, page, _ = e.get(c, "/admin/buyers?status=cancelled")
	if !strings.Contains(page, "cust-2") || strings.Contains(page, "cust-1") {
		t.Errorf("cancelled filter:\n%s", page)
	}
	_, page, _ = e.get(c, "/admin/buyers")
	if n := strings.Count(page, `class="buyer"`); n != 50 || !strings.Contains(page, `id="next"`) {
		t.Errorf("first page: %d buyers, next link %v", n, strings.Contains(page, `id="next"`))
	}
	resp, err := c.Get(e.srv.URL + "/admin/buyers.csv?q=example")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(strings.NewReader(body(t, resp))).ReadAll()
	if err != nil || resp.Header.Get("Content-Type") != "text/csv; charset=utf-8" {
		t.Fatalf("CSV: %v (%s)", err, resp.Header.Get("Content-Type"))
	}
	if len(rows) != 1+62 {
		t.Errorf("CSV rows = %d, want a header and 62 buyers (more than a page)", len(rows))
	}
	for _, r := range rows {
		if r[0] == "cust-2" && !strings.HasPrefix(r[4], "'=") {
			t.Errorf("a formula in the CSV is not defused: %q", r[4])
		}
	}
	// A page of the CSV starts after the cursor.
	resp, err = c.Get(e.srv.URL + "/admin/buyers.csv?q=example&after=bulk-Cz")
	if err != nil {
		t.Fatal(err)
	}
	rows, _ = csv.NewReader(strings.NewReader(body(t, resp))).ReadAll()
	if len(rows) != 1+2 || rows[1][0] != "cust-1" {
		t.Errorf("CSV after bulk-Cz: %v", rows)
	}
	if !strings.Contains(e.log(), `"action":"export-buyers"`) {
		t.Errorf("export is not audited")
	}
}

func TestBuyerPageAndRetry(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s := e.addBuyer("cust-1", "Acme Corp", "ops@acme.example", mpsaas.StatusActive)
	if _, err := e.db.AddEvent(ctx, mpsaas.Event{ID: "sns:1", Kind: mpsaas.EventSubscribeSuccess, Source: "sns", Time: e.now, ReceivedAt: e.now,
		Identity: s.Identity, Raw: `{"Type":"Notification","Message":"<script>alert(1)</script>"}`}); err != nil {
		t.Fatal(err)
	}
	hour := mpsaas.Hour(e.now)
	if _, err := e.db.AddUsage(ctx, "u1", "h", []mpsaas.UsageRow{{SubscriberKey: "cust-1", Dimension: "users", Quantity: 7, Time: hour}}, hour, e.now); err != nil {
		t.Fatal(err)
	}
	due, _ := e.db.DueMessages(ctx, e.now.Add(time.Minute), 10)
	if err := e.db.MarkFailed(ctx, due[0].ID, "receiver answered 500", e.now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	c := e.login()
	status, page, token := e.get(c, "/admin/buyers/cust-1")
	if status != http.StatusOK {
		t.Fatalf("buyer page: %d", status)
	}
	for _, want := range []string{"Acme Corp", "subscribe-success", `&lt;script&gt;`, `id="usage-chart"`, `data-dimension="users"`, "receiver answered 500", `class="retry"`,
		`class="attempts"`} {
		if !strings.Contains(page, want) {
			t.Errorf("buyer page lacks %q", want)
		}
	}
	if strings.Contains(page, "<script>") {
		t.Errorf("raw message is not escaped")
	}
	if status, _, _ := e.get(c, "/admin/buyers/nobody"); status != http.StatusNotFound {
		t.Errorf("unknown buyer: %d", status)
	}
	resp, _ := e.post(c, "/admin/deliveries/retry", url.Values{"csrf": {token}, "id": {due[0].ID}, "back": {"/admin/buyers/cust-1"}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/admin/buyers/cust-1?flash=retried" {
		t.Fatalf("retry: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if d, _ := e.db.DueMessages(ctx, e.now.Add(time.Second), 10); len(d) != 1 || d[0].ID != due[0].ID {
		t.Errorf("after retry, due = %+v", d)
	}
	if !strings.Contains(e.log(), `"action":"retry-delivery"`) {
		t.Errorf("retry is not audited")
	}
	if resp, _ := e.post(c, "/admin/deliveries/retry", url.Values{"csrf": {token}, "id": {"424242"}}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("retrying an unknown message: %d", resp.StatusCode)
	}
}

// TestProductChart: the metering page charts usage and billed quantity by
// product from the meter records (SQLite).
func TestProductChart(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	hour := mpsaas.Hour(e.now).Add(-2 * time.Hour)
	rec := mpsaas.MeterRecord{SubscriberKey: "cust-1", Dimension: "users", Hour: hour, Quantity: 6, UsageQuantity: 6, ProductCode: "prod-a",
		CustomerIdentifier: "cust-1", State: mpsaas.UsageSealed}
	if _, err := e.db.AddHeartbeats(ctx, []mpsaas.MeterRecord{rec}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.AddUsage(ctx, "u1", "h", []mpsaas.UsageRow{{SubscriberKey: "cust-1", Dimension: "users", Quantity: 7, Time: mpsaas.Hour(e.now)}}, mpsaas.Hour(e.now), e.now); err != nil {
		t.Fatal(err)
	}
	c := e.login()
	_, page, _ := e.get(c, "/admin/metering")
	if !strings.Contains(page, `id="usage-chart"`) || !strings.Contains(page, `data-dimension="prod-a"`) {
		t.Errorf("metering page has no product chart:\n%s", page)
	}
	// The hours: the open hour's pending usage, the sealed record two hours back.
	for _, want := range []string{`id="hours"`, "pending: 1 / 7", "sealed: 0 / 0; 0", hour.Format("2006-01-02 15:00")} {
		if !strings.Contains(page, want) {
			t.Errorf("metering page's hours lack %q", want)
		}
	}
}

// TestDeadLetteredNotificationReplay: a notification the queue set aside
// is listed with its message and reason, and Replay puts it back.
func TestDeadLetteredNotificationReplay(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.db.Enqueue(ctx, []byte(`{"Type":"Notification","Message":"broken"}`)); err != nil {
		t.Fatal(err)
	}
	msgs, err := e.db.Receive(ctx, 1, time.Minute)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("receive: %v %v", msgs, err)
	}
	if err := e.db.DeadLetter(ctx, msgs[0].ID, "SNS message is not a JSON object"); err != nil {
		t.Fatal(err)
	}
	c := e.login()
	_, page, token := e.get(c, "/admin/deliveries")
	if !strings.Contains(page, "SNS message is not a JSON object") || !strings.Contains(page, `class="redrive"`) {
		t.Fatalf("deliveries page:\n%s", page)
	}
	resp, _ := e.post(c, "/admin/notifications/redrive", url.Values{"csrf": {token}, "id": {fmt.Sprint(msgs[0].ID)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("redrive: %d", resp.StatusCode)
	}
	if again, _ := e.db.Receive(ctx, 1, time.Minute); len(again) != 1 || again[0].ID != msgs[0].ID {
		t.Errorf("after redrive the queue gives %v", again)
	}
	if resp, _ := e.post(c, "/admin/notifications/redrive", url.Values{"csrf": {token}, "id": {fmt.Sprint(msgs[0].ID)}}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("redriving a message that is not dead-lettered: %d", resp.StatusCode)
	}
	if !strings.Contains(e.log(), `"action":"redrive-notification"`) {
		t.Errorf("redrive is not audited")
	}
}

func TestReplayAsksFirst(t *testing.T) {
	e := newEnv(t)
	c := e.login()
	_, _, token := e.get(c, "/admin/metering")
	// Nothing is flagged: the confirmation says nothing would be sent.
	resp, page := e.post(c, "/admin/metering/replay", url.Values{"csrf": {token}, "id": {"5"}})
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, "nothing would be sent") || len(e.meter.ids) != 0 {
		t.Errorf("replay without confirmation: %d, replayed %v\n%s", resp.StatusCode, e.meter.ids, page)
	}
	if resp, _ := e.post(c, "/admin/metering/replay", url.Values{"csrf": {token}, "id": {"x"}}); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad id: %d", resp.StatusCode)
	}
	resp, _ = e.post(c, "/admin/metering/replay", url.Values{"csrf": {token}, "id": {"5", "6"}, "confirm": {"yes"}})
	if resp.StatusCode != http.StatusSeeOther || len(e.meter.ids) != 1 || len(e.meter.ids[0]) != 2 {
		t.Errorf("confirmed replay: %d, replayed %v", resp.StatusCode, e.meter.ids)
	}
	if !strings.Contains(e.log(), `"action":"replay-usage"`) {
		t.Errorf("replay is not audited")
	}
}

func TestHashPassword(t *testing.T) {
	if _, err := admin.HashPassword("short", 0); err == nil {
		t.Error("a short password was hashed")
	}
	for _, bad := range []string{"", "plain", "pbkdf2-sha256$10$c2FsdHNhbHQ$a2V5", "bcrypt$2$x$y"} {
		if admin.ParseHash(bad) == nil {
			t.Errorf("ParseHash(%q) accepted it", bad)
		}
	}
	if err := admin.ParseHash(hashOnce()); err != nil {
		t.Error(err)
	}
	if _, err := admin.New(admin.Config{PasswordHash: "nope", Secret: secret}, nil, nil); err == nil {
		t.Error("New accepted a malformed hash")
	}
}

// Package admin is the seller console at /admin: buyers (search, filters,
// CSV), a buyer's events, deliveries and usage chart, metering (states,
// rejected and flagged records, replay) and failed deliveries (retry). It
// is off unless an admin password hash is configured; then every page
// needs a session from the login form. Sessions are signed cookies, every
// form carries a CSRF token, logins are rate limited, and every action is
// an audit log line. Both runtimes mount it on the same web server.
package admin

import (
	"context"
	"embed"
	"encoding/csv"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mpsaas/mpsaas"
)

//go:embed templates/*.html
var templateFS embed.FS

// Store is what the console reads and changes.
type Store interface {
	mpsaas.ConsoleStore
	mpsaas.UsageHistory
	GetSubscriber(ctx context.Context, key string) (*mpsaas.Subscriber, error)
	EventsFor(ctx context.Context, id mpsaas.Identity) ([]mpsaas.Event, error)
	MeterSummary(ctx context.Context) (map[string]mpsaas.StateCount, error)
	Ledger(ctx context.Context, f mpsaas.LedgerFilter) ([]mpsaas.LedgerEntry, error)
}

// Metering replays flagged usage (the metering service).
type Metering interface {
	Replay(ctx context.Context, ids []int64) (int, error)
}

// Config configures the console.
type Config struct {
	// PasswordHash (HashPassword's format) turns the console on; empty
	// leaves /admin unanswered (404).
	PasswordHash string
	// Secret is the server secret sessions are signed with.
	Secret []byte
	// SessionTTL is how long a login lasts (default 12 hours).
	SessionTTL time.Duration
	// Channels are the delivery channels access changes are queued on.
	Channels []string
	// Products are the product codes offered in the buyer filter.
	Products []string
	Logger   *slog.Logger
	Clock    mpsaas.Clock
}

// Console serves /admin.
type Console struct {
	cfg     Config
	hash    passwordHash
	store   Store
	meter   Metering
	s       sessions
	limit   limiter
	pages   map[string]*template.Template
	log     *slog.Logger
	clock   mpsaas.Clock
	handler http.Handler
}

const (
	sessionCookie = "mpsaas_admin"
	loginCookie   = "mpsaas_admin_login"
	// Prefix is where the console is served.
	Prefix = "/admin"
)

// New returns the console, or an error if the password hash is malformed.
func New(cfg Config, store Store, meter Metering) (*Console, error) {
	h, err := parseHash(cfg.PasswordHash)
	if err != nil {
		return nil, fmt.Errorf("admin password hash: %w", err)
	}
	if len(cfg.Secret) < 32 {
		return nil, errors.New("admin console: the server secret must have at least 32 bytes")
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = mpsaas.SystemClock{}
	}
	c := &Console{cfg: cfg, hash: h, store: store, meter: meter, s: newSessions(cfg.Secret, cfg.PasswordHash, cfg.SessionTTL),
		log: cfg.Logger.With("component", "admin"), clock: cfg.Clock, pages: map[string]*template.Template{}}
	funcs := template.FuncMap{
		"fmtTime": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.UTC().Format("2006-01-02 15:04:05")
		},
		"hour":   func(t time.Time) string { return t.UTC().Format("2006-01-02 15:00") },
		"pathID": url.PathEscape,
	}
	for _, p := range []string{"login", "buyers", "buyer", "metering", "replay", "deliveries"} {
		c.pages[p] = template.Must(template.New("").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+p+".html"))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/login", c.loginForm)
	mux.HandleFunc("POST /admin/login", c.login)
	mux.Handle("POST /admin/logout", c.authed(c.logout))
	mux.Handle("GET /admin/{$}", c.authed(func(w http.ResponseWriter, r *http.Request, _ string) {
		http.Redirect(w, r, "/admin/buyers", http.StatusSeeOther)
	}))
	mux.Handle("GET /admin/buyers", c.authed(c.buyers))
	mux.Handle("GET /admin/buyers.csv", c.authed(c.buyersCSV))
	mux.Handle("GET /admin/buyers/{key}", c.authed(c.buyer))
	mux.Handle("GET /admin/metering", c.authed(c.metering))
	mux.Handle("POST /admin/metering/replay", c.authed(c.replay))
	mux.Handle("GET /admin/deliveries", c.authed(c.deliveries))
	mux.Handle("POST /admin/deliveries/retry", c.authed(c.retry))
	mux.Handle("POST /admin/notifications/redrive", c.authed(c.redrive))
	c.handler = mux
	return c, nil
}

// Register mounts the console on a server's mux (web.Server.Handle).
func (c *Console) Register(s interface{ Handle(string, http.Handler) }) {
	s.Handle("/admin/", c)
	s.Handle("/admin", http.RedirectHandler("/admin/", http.StatusMovedPermanently))
}

// ServeHTTP serves the console with headers that keep its pages out of
// caches and frames.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// same-origin, not no-referrer: under no-referrer browsers send
	// "Origin: null" with the console's own forms, which sameOrigin refuses.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	c.handler.ServeHTTP(w, r)
}

// authed runs h with the session id, or sends the browser to the login
// form (a 401 for anything but a page view). State-changing requests must
// carry the session's CSRF token and, when the browser sends one, an
// Origin of this host.
func (c *Console) authed(h func(http.ResponseWriter, *http.Request, string)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ck, err := r.Cookie(sessionCookie)
		var id string
		ok := err == nil
		if ok {
			id, ok = c.s.check(ck.Value, c.clock.Now())
		}
		if !ok {
			if r.Method == http.MethodGet && !strings.HasSuffix(r.URL.Path, ".csv") {
				http.Redirect(w, r, "/admin/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			http.Error(w, "sign in first", http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if !sameOrigin(r) || !c.s.checkCSRF(id, r.PostFormValue("csrf")) {
				c.audit(r, id, "csrf-refused", "")
				http.Error(w, "the form expired or did not come from this console: reload the page and try again", http.StatusForbidden)
				return
			}
		}
		h(w, r, id)
	})
}

// sameOrigin accepts a request without an Origin header (older browsers,
// same-origin GET-initiated forms in some) or with this host's.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

// audit logs one console action: who (the session's id, "" before a
// sign-in), from where, what.
func (c *Console) audit(r *http.Request, session, action, target string, attrs ...any) {
	if len(session) > 8 {
		session = session[:8] // enough to follow one session; not the cookie
	}
	args := append([]any{"audit", true, "action", action, "target", target, "session", session, "client", clientAddr(r)}, attrs...)
	c.log.Info("admin action", args...)
}

// secureCookie: cookies are Secure except on plain HTTP to a loopback host
// (a local `mpsaas serve`), where a browser would drop them.
func secureCookie(r *http.Request) bool {
	if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
		return true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}

func (c *Console) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge time.Duration) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: Prefix, MaxAge: int(maxAge / time.Second),
		HttpOnly: true, Secure: secureCookie(r), SameSite: http.SameSiteStrictMode})
}

type page struct {
	Title   string
	CSRF    string
	Nav     string
	Flash   string
	Error   string
	Data    any
	Now     time.Time
	Signout bool
}

func (c *Console) render(w http.ResponseWriter, status int, name string, p page) {
	p.Now = c.clock.Now()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := c.pages[name].ExecuteTemplate(w, "layout", p); err != nil {
		c.log.Error("render admin page", "page", name, "err", err)
	}
}

func (c *Console) fail(w http.ResponseWriter, r *http.Request, id string, err error) {
	status := http.StatusInternalServerError
	msg := "Something went wrong; the error is in the log."
	switch mpsaas.ErrorCode(err) {
	case mpsaas.ENOTFOUND:
		status, msg = http.StatusNotFound, mpsaas.ErrorMessage(err)
	case mpsaas.EINVALID:
		status, msg = http.StatusBadRequest, mpsaas.ErrorMessage(err)
	default:
		c.log.Error("admin page", "path", r.URL.Path, "err", err)
	}
	c.render(w, status, "deliveries", page{Title: "Error", Error: msg, CSRF: c.s.csrf(id), Signout: true})
}

func (c *Console) loginForm(w http.ResponseWriter, r *http.Request) {
	nonce := make([]byte, 16)
	_, _ = randRead(nonce)
	n := fmt.Sprintf("%x", nonce)
	c.setCookie(w, r, loginCookie, n, 30*time.Minute)
	c.render(w, http.StatusOK, "login", page{Title: "Sign in", CSRF: c.s.csrf("login:" + n), Data: safeNext(r.URL.Query().Get("next"))})
}

// safeNext keeps only local console paths as a redirect target.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/admin/") || strings.HasPrefix(next, "//") || strings.Contains(next, "\\") {
		return "/admin/buyers"
	}
	return next
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	ck, err := r.Cookie(loginCookie)
	why := ""
	switch {
	case err != nil:
		why = "no sign-in form cookie"
	case !sameOrigin(r):
		why = "cross-origin"
	case !c.s.checkCSRF("login:"+ck.Value, r.PostFormValue("csrf")):
		why = "wrong form token"
	}
	if why != "" {
		c.audit(r, "", "login-refused", "", "why", why)
		http.Error(w, "the sign-in form expired: reload it and try again", http.StatusForbidden)
		return
	}
	if !c.limit.allow(clientAddr(r), c.clock.Now()) {
		c.audit(r, "", "login-refused", "", "why", "rate limit")
		w.Header().Set("Retry-After", "60")
		http.Error(w, "too many sign-in attempts: wait a minute", http.StatusTooManyRequests)
		return
	}
	if !c.hash.verify(r.PostFormValue("password")) {
		c.audit(r, "", "login-failed", "")
		c.render(w, http.StatusUnauthorized, "login", page{Title: "Sign in", Error: "Wrong password.", CSRF: c.s.csrf("login:" + ck.Value),
			Data: safeNext(r.PostFormValue("next"))})
		return
	}
	v, id := c.s.issue(c.clock.Now())
	c.setCookie(w, r, sessionCookie, v, c.cfg.SessionTTL)
	c.setCookie(w, r, loginCookie, "", -time.Second)
	c.audit(r, id, "login", "")
	http.Redirect(w, r, safeNext(r.PostFormValue("next")), http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, id string) {
	c.audit(r, id, "logout", "")
	c.setCookie(w, r, sessionCookie, "", -time.Second)
	http.Redirect(w, r, "/admin/login", http.StatusSeeOther)
}

// filterOf reads the buyer filter of a query string.
func filterOf(q url.Values) mpsaas.SubscriberFilter {
	f := mpsaas.SubscriberFilter{Query: strings.TrimSpace(q.Get("q")), ProductCode: q.Get("product"), Status: mpsaas.Status(q.Get("status")),
		FreeTrial: q.Get("trial") == "1", Unregistered: q.Get("unregistered") == "1", After: q.Get("after")}
	if len(f.Query) > 200 {
		f.Query = f.Query[:200]
	}
	return f
}

type buyersData struct {
	Filter   mpsaas.SubscriberFilter
	Products []string
	Statuses []mpsaas.Status
	Page     mpsaas.SubscriberPage
	NextURL  string
	CSVURL   string
}

func (c *Console) buyers(w http.ResponseWriter, r *http.Request, id string) {
	f := filterOf(r.URL.Query())
	p, err := c.store.ListSubscribers(r.Context(), f)
	if err != nil {
		c.fail(w, r, id, err)
		return
	}
	d := buyersData{Filter: f, Products: c.cfg.Products, Statuses: mpsaas.Statuses, Page: p}
	q := r.URL.Query()
	q.Del("after")
	d.CSVURL = "/admin/buyers.csv?" + q.Encode()
	if p.Next != "" {
		q.Set("after", p.Next)
		d.NextURL = "/admin/buyers?" + q.Encode()
	}
	c.render(w, http.StatusOK, "buyers", page{Title: "Buyers", Nav: "buyers", CSRF: c.s.csrf(id), Data: d, Signout: true})
}

// maxCSVRows bounds one CSV download (about 2 MB): a Lambda response is at
// most 6 MB and API Gateway waits 29 s. A longer export ends with a
// comment line giving the URL of the rest.
var maxCSVRows = 10000

// buyersCSV streams the buyers the filter matches, a page at a time, from
// the after cursor on, at most maxCSVRows.
func (c *Console) buyersCSV(w http.ResponseWriter, r *http.Request, id string) {
	f := filterOf(r.URL.Query())
	f.Limit = 500
	c.audit(r, id, "export-buyers", f.Query, "product", f.ProductCode, "status", string(f.Status))
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="buyers.csv"`)
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"key", "product_code", "status", "access", "company", "contact_person", "contact_email", "contact_phone",
		"aws_account_id", "customer_identifier", "license_arn", "free_trial", "registered_at", "created_at"})
	rows := 0
	for {
		if rows >= maxCSVRows {
			q := r.URL.Query()
			q.Set("after", f.After)
			_ = cw.Write([]string{"# more buyers: /admin/buyers.csv?" + q.Encode()})
			break
		}
		f.Limit = min(500, maxCSVRows-rows)
		p, err := c.store.ListSubscribers(r.Context(), f)
		if err != nil {
			c.log.Error("export buyers", "err", err)
			_ = cw.Write([]string{"# export stopped: " + err.Error()})
			break
		}
		rows += len(p.Subscribers)
		for _, s := range p.Subscribers {
			_ = cw.Write([]string{s.Key, s.ProductCode, string(s.Status), string(s.Access), csvSafe(s.CompanyName), csvSafe(s.ContactPerson),
				csvSafe(s.ContactEmail), csvSafe(s.ContactPhone), s.CustomerAWSAccountID, s.CustomerIdentifier, s.LicenseArn,
				strconv.FormatBool(s.FreeTrial), rfc3339(s.RegisteredAt), rfc3339(s.CreatedAt)})
		}
		cw.Flush()
		if p.Next == "" || r.Context().Err() != nil {
			break
		}
		f.After = p.Next
	}
	cw.Flush()
}

// csvSafe defuses spreadsheet formulas in buyer-supplied text.
func csvSafe(v string) string {
	if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
		return "'" + v
	}
	return v
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

type buyerData struct {
	S          *mpsaas.Subscriber
	Events     []mpsaas.Event
	Deliveries []mpsaas.OutboxMessage
	Usage      []mpsaas.HourUsage
	Chart      template.HTML
	Days       int
}

func (c *Console) buyer(w http.ResponseWriter, r *http.Request, id string) {
	ctx := r.Context()
	s, err := c.store.GetSubscriber(ctx, r.PathValue("key"))
	if err != nil {
		c.fail(w, r, id, err)
		return
	}
	d := buyerData{S: s, Days: 7}
	if n, err := strconv.Atoi(r.URL.Query().Get("days")); err == nil && n >= 1 && n <= 31 {
		d.Days = n
	}
	if d.Events, err = c.store.EventsFor(ctx, mpsaas.Identity{CustomerIdentifier: s.CustomerIdentifier, LicenseID: s.LicenseID}); err != nil {
		c.fail(w, r, id, err)
		return
	}
	slices.Reverse(d.Events) // newest first
	if d.Deliveries, err = c.store.DeliveriesFor(ctx, s, c.cfg.Channels); err != nil {
		c.fail(w, r, id, err)
		return
	}
	now := mpsaas.Hour(c.clock.Now())
	from := now.Add(-time.Duration(d.Days*24-1) * time.Hour)
	if d.Usage, err = c.store.UsageHistory(ctx, s.Key, from, now); err != nil {
		c.fail(w, r, id, err)
		return
	}
	d.Chart = usageChart(d.Usage, from, now)
	slices.Reverse(d.Usage)
	c.render(w, http.StatusOK, "buyer", page{Title: s.Key, Nav: "buyers", CSRF: c.s.csrf(id), Data: d, Signout: true, Flash: flash(r)})
}

// productUsage is implemented by stores that sum usage by product and
// hour cheaply enough for a page view (SQLite from its meter records,
// DynamoDB from the totals its hour marks keep once an hour is final).
type productUsage interface {
	ProductUsage(ctx context.Context, from, to time.Time) ([]mpsaas.ProductHour, error)
}

// hourSummaries is implemented by both metering stores.
type hourSummaries interface {
	HourSummaries(ctx context.Context, from, to time.Time) ([]mpsaas.HourSummary, error)
}

// hourRow is one hour of the metering page.
type hourRow struct {
	mpsaas.HourSummary
	// States are the hour's counts in the page's state order.
	States []stateRow
}

type meteringData struct {
	// Hours are the last 48 hours, newest first.
	Hours []hourRow
	// ProductChart is the last 24 hours' usage and billed quantity by
	// product ("" when the store cannot sum them).
	ProductChart template.HTML
	Summary      []stateRow
	Rejected     []mpsaas.LedgerEntry
	Flagged      []mpsaas.LedgerEntry
	AtRisk       []mpsaas.LedgerEntry
	// Cut: a listing took longer than its budget and shows what was found.
	Cut bool
}

// ledgerBudget bounds each ledger search of the metering page: a state
// filter on DynamoDB reads ledger parts until enough entries match, which
// on a large ledger with few matches is all of it (and API Gateway waits
// only 29 s).
var ledgerBudget = 5 * time.Second

// ledgerWithin searches the ledger for at most ledgerBudget; cut reports
// that it stopped early (the store answers all or nothing, so a cut
// search shows none).
func (c *Console) ledgerWithin(ctx context.Context, f mpsaas.LedgerFilter) (entries []mpsaas.LedgerEntry, cut bool, err error) {
	bctx, cancel := context.WithTimeout(ctx, ledgerBudget)
	defer cancel()
	entries, err = c.store.Ledger(bctx, f)
	if err != nil && bctx.Err() != nil && ctx.Err() == nil {
		return nil, true, nil
	}
	return entries, false, err
}

// stateOrder is the order the console shows usage states in.
var stateOrder = []string{mpsaas.UsagePending, mpsaas.UsageSealed, mpsaas.UsageBatched, mpsaas.UsageBilled, mpsaas.UsageCovered, mpsaas.UsageRejected, mpsaas.UsageFlagged}

type stateRow struct {
	State string
	mpsaas.StateCount
}

// riskAge is how old unsent usage may get before the console warns: AWS
// refuses records more than 6 hours old (TimestampOutOfBounds); two hours
// leaves time to act.
const riskAge = 4 * time.Hour

func (c *Console) metering(w http.ResponseWriter, r *http.Request, id string) {
	ctx := r.Context()
	sum, err := c.store.MeterSummary(ctx)
	if err != nil {
		c.fail(w, r, id, err)
		return
	}
	var d meteringData
	for _, st := range stateOrder {
		if n, ok := sum[st]; ok {
			d.Summary = append(d.Summary, stateRow{st, n})
		}
	}
	for st, n := range sum {
		if !slices.ContainsFunc(d.Summary, func(s stateRow) bool { return s.State == st }) {
			d.Summary = append(d.Summary, stateRow{st, n})
		}
	}
	for _, l := range []struct {
		state string
		out   *[]mpsaas.LedgerEntry
	}{{"rejected", &d.Rejected}, {"flagged", &d.Flagged}} {
		if sum[l.state].Records == 0 {
			continue
		}
		var cut bool
		if *l.out, cut, err = c.ledgerWithin(ctx, mpsaas.LedgerFilter{State: l.state, Limit: 100}); err != nil {
			c.fail(w, r, id, err)
			return
		}
		d.Cut = d.Cut || cut
	}
	now := c.clock.Now()
	if hs, ok := c.store.(hourSummaries); ok {
		to := mpsaas.Hour(now)
		hours, err := hs.HourSummaries(ctx, to.Add(-47*time.Hour), to)
		if err != nil {
			c.fail(w, r, id, err)
			return
		}
		for _, h := range hours {
			row := hourRow{HourSummary: h}
			for _, st := range stateOrder {
				if n, ok := h.Counts[st]; ok {
					row.States = append(row.States, stateRow{st, n})
				}
			}
			d.Hours = append(d.Hours, row)
		}
	}
	if pu, ok := c.store.(productUsage); ok {
		to := mpsaas.Hour(now)
		from := to.Add(-23 * time.Hour)
		hours, err := pu.ProductUsage(ctx, from, to)
		if err != nil {
			c.fail(w, r, id, err)
			return
		}
		series := make([]mpsaas.HourUsage, len(hours))
		for i, h := range hours {
			series[i] = mpsaas.HourUsage{Dimension: h.ProductCode, Hour: h.Hour, Usage: h.Usage, Quantity: h.Billed, State: "billed"}
		}
		d.ProductChart = usageChart(series, from, to)
	}
	for _, st := range []string{mpsaas.UsagePending, "sealed", "batched"} {
		if sum[st].Records == 0 {
			continue
		}
		es, cut, err := c.ledgerWithin(ctx, mpsaas.LedgerFilter{State: st, Limit: 200})
		if err != nil {
			c.fail(w, r, id, err)
			return
		}
		d.Cut = d.Cut || cut
		for _, e := range es {
			if now.Sub(e.Hour) > riskAge && len(d.AtRisk) < 100 {
				d.AtRisk = append(d.AtRisk, e)
			}
		}
	}
	c.render(w, http.StatusOK, "metering", page{Title: "Metering", Nav: "metering", CSRF: c.s.csrf(id), Data: d, Signout: true, Flash: flash(r)})
}

// replay moves flagged usage back to pending: without confirm=yes it shows
// what would be sent; with it, it replays.
func (c *Console) replay(w http.ResponseWriter, r *http.Request, id string) {
	var ids []int64
	for _, v := range r.PostForm["id"] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			c.fail(w, r, id, mpsaas.Errorf(mpsaas.EINVALID, "usage record id %q is not a number", v))
			return
		}
		ids = append(ids, n)
	}
	if len(ids) == 0 || len(ids) > 1000 {
		c.fail(w, r, id, mpsaas.Errorf(mpsaas.EINVALID, "choose 1 to 1000 flagged usage records to replay"))
		return
	}
	if r.PostFormValue("confirm") != "yes" {
		flagged, cut, err := c.ledgerWithin(r.Context(), mpsaas.LedgerFilter{State: "flagged", Limit: 10000})
		if err == nil && cut {
			err = mpsaas.Errorf(mpsaas.EINVALID, "the flagged usage could not be listed in time to confirm it: replay it with `mpsaas meter replay` or POST /v1/meter/replay")
		}
		if err != nil {
			c.fail(w, r, id, err)
			return
		}
		var chosen []mpsaas.LedgerEntry
		for _, e := range flagged {
			if slices.Contains(ids, e.ID) {
				chosen = append(chosen, e)
			}
		}
		c.render(w, http.StatusOK, "replay", page{Title: "Replay usage", Nav: "metering", CSRF: c.s.csrf(id), Data: chosen, Signout: true})
		return
	}
	n, err := c.meter.Replay(r.Context(), ids)
	if err != nil {
		c.fail(w, r, id, err)
		return
	}
	c.audit(r, id, "replay-usage", fmt.Sprint(ids), "moved", n)
	http.Redirect(w, r, "/admin/metering?flash=replayed&n="+strconv.Itoa(n), http.StatusSeeOther)
}

type deliveriesData struct {
	Failed []mpsaas.OutboxMessage
	// Dead are the dead-lettered notifications (nil: the store's queue is
	// SQS, whose dead-letter queue is redriven in SQS).
	Dead      []mpsaas.DeadNotification
	LocalDead bool
}

// deadLetters is implemented by stores that hold the notification queue
// (SQLite: serve without MPSAAS_SQS_QUEUE_URL).
type deadLetters interface {
	DeadNotifications(ctx context.Context, limit int) ([]mpsaas.DeadNotification, error)
	RedriveNotification(ctx context.Context, id int64) error
}

func (c *Console) deliveries(w http.ResponseWriter, r *http.Request, id string) {
	failed, err := c.store.FailedDeliveries(r.Context(), 200)
	if err != nil {
		c.fail(w, r, id, err)
		return
	}
	d := deliveriesData{Failed: failed}
	if dl, ok := c.store.(deadLetters); ok {
		d.LocalDead = true
		if d.Dead, err = dl.DeadNotifications(r.Context(), 100); err != nil {
			c.fail(w, r, id, err)
			return
		}
	}
	c.render(w, http.StatusOK, "deliveries", page{Title: "Deliveries", Nav: "deliveries", CSRF: c.s.csrf(id), Data: d,
		Signout: true, Flash: flash(r)})
}

func (c *Console) retry(w http.ResponseWriter, r *http.Request, id string) {
	msg := r.PostFormValue("id")
	if err := c.store.RetryDelivery(r.Context(), msg, c.clock.Now()); err != nil {
		c.fail(w, r, id, err)
		return
	}
	c.audit(r, id, "retry-delivery", msg)
	back := r.PostFormValue("back")
	if !strings.HasPrefix(back, "/admin/") {
		back = "/admin/deliveries"
	}
	sep := "?"
	if strings.Contains(back, "?") {
		sep = "&"
	}
	http.Redirect(w, r, back+sep+"flash=retried", http.StatusSeeOther)
}

// flash is the message of a redirect after an action: only fixed texts,
// so a crafted link cannot put words in the console's mouth.
func flash(r *http.Request) string {
	switch r.URL.Query().Get("flash") {
	case "retried":
		return "Delivery queued again: the dispatcher sends it on its next pass."
	case "redriven":
		return "Notification back in the queue: it is handled again within seconds."
	case "replayed":
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		return fmt.Sprintf("%d usage records are pending again: the next meter run sends them.", n)
	}
	return ""
}

// redrive puts a dead-lettered notification back in the local queue.
func (c *Console) redrive(w http.ResponseWriter, r *http.Request, id string) {
	dl, ok := c.store.(deadLetters)
	n, err := strconv.ParseInt(r.PostFormValue("id"), 10, 64)
	switch {
	case !ok:
		c.fail(w, r, id, mpsaas.Errorf(mpsaas.ENOTFOUND, "notifications come from SQS here: redrive its dead-letter queue in SQS"))
		return
	case err != nil:
		c.fail(w, r, id, mpsaas.Errorf(mpsaas.EINVALID, "notification id %q is not a number", r.PostFormValue("id")))
		return
	}
	if err := dl.RedriveNotification(r.Context(), n); err != nil {
		c.fail(w, r, id, err)
		return
	}
	c.audit(r, id, "redrive-notification", strconv.FormatInt(n, 10))
	http.Redirect(w, r, "/admin/deliveries?flash=redriven", http.StatusSeeOther)
}

// Package web serves the buyer-facing HTTP side of the integration: the
// fulfillment URL that AWS Marketplace form-POSTs to, the registration page
// and API (including the sample stack's JSON API), and the buyer's
// subscription status page. It is a plain http.Handler, so `mpsaas serve`
// and the Lambda adapter serve the same code.
package web

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/subscription"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Subscriptions is the workflow the handlers drive.
type Subscriptions interface {
	Resolve(ctx context.Context, token string, opts subscription.ResolveOptions) (*mpsaas.Subscriber, error)
	Register(ctx context.Context, key string, c mpsaas.Contact) (*mpsaas.Subscriber, error)
	RegisterWithToken(ctx context.Context, token string, c mpsaas.Contact) (*mpsaas.Subscriber, error)
	Get(ctx context.Context, key string) (*mpsaas.Subscriber, error)
	Claim(ctx context.Context, key, claimID, accountID string) (*mpsaas.Subscriber, error)
}

// Config configures the handler.
type Config struct {
	// Secret signs hidden form fields and status links (at least 32 bytes).
	Secret []byte
	// ProductName is shown on the pages.
	ProductName string
	// SignInURL is where registered buyers sign in to the seller's app.
	SignInURL string
	// Products override ProductName and SignInURL per product code on the
	// pages about one buyer (the products file).
	Products map[string]mpsaas.Product
	// SignupURL, when set, is the seller's own sign-up or sign-in page:
	// /fulfillment sends the buyer there with a claim code (the only thing
	// in the URL) instead of showing the registration form.
	SignupURL string
	// ClaimTTL is how long a claim code can be redeemed (default 10 minutes).
	ClaimTTL time.Duration
	// Observe, when set, hears of every request: its route pattern
	// ("" when none matched), status and duration (metrics).
	Observe func(route string, status int, d time.Duration)
	// Ready, when set, answers GET /readyz: nil when the process can do
	// its work (the store is writable, AWS Marketplace is reachable,
	// metering keeps up), else why not (503).
	Ready func(ctx context.Context) error
	// SupportEmail is shown when something goes wrong.
	SupportEmail string
	// CORSOrigins may call the JSON registration API from a browser ("*" for any).
	CORSOrigins []string
	// APIOnly turns off the HTML pages (fulfillment, registration, status):
	// the seller hosts its own landing page and calls POST /subscriber.
	APIOnly bool
	// RegistrationTTL is how long a registration form stays valid (default 4h,
	// the token lifetime).
	RegistrationTTL time.Duration
	// EmailsBuyers tells the pages an email goes to the buyer (SMTP or SES
	// configured); otherwise they do not tell buyers to check their email.
	EmailsBuyers bool
	// Emulator says the integration talks to an AWS Marketplace emulator:
	// every page footer and /healthz say so, so nobody mistakes it for
	// production.
	Emulator bool
	Logger   *slog.Logger
	Clock    mpsaas.Clock
}

// Server is the buyer-facing HTTP handler.
type Server struct {
	cfg   Config
	subs  Subscriptions
	sign  signer
	log   *slog.Logger
	tmpl  *template.Template
	mux   *http.ServeMux
	clock mpsaas.Clock
	// patterns are the routes registered, for Routes.
	patterns []string
	claims   claimCodec
}

// New returns the handler. It panics only if the embedded templates are broken.
func New(cfg Config, subs Subscriptions) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = mpsaas.SystemClock{}
	}
	if cfg.RegistrationTTL == 0 {
		cfg.RegistrationTTL = 4 * time.Hour
	}
	if cfg.ProductName == "" {
		cfg.ProductName = "our service"
	}
	s := &Server{cfg: cfg, subs: subs, sign: signer{secret: cfg.Secret}, claims: newClaimCodec(cfg.Secret), log: cfg.Logger, clock: cfg.Clock,
		tmpl: template.Must(template.New("").Funcs(template.FuncMap{
			"fmtTime": func(t time.Time) string {
				if t.IsZero() {
					return ""
				}
				return t.UTC().Format("2 Jan 2006 15:04 MST")
			},
		}).ParseFS(templateFS, "templates/*.html")),
		mux: http.NewServeMux(),
	}
	s.routes()
	return s
}

// ServeHTTP serves a request with security headers and access logging.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; form-action 'self' https:; frame-ancestors 'none'")
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	s.mux.ServeHTTP(rec, r)
	// Only method, path and status: never bodies, query strings, or the
	// secrets some paths carry (a status link is a bearer credential).
	took := time.Since(start)
	s.log.Info("http", "method", r.Method, "path", logPath(r), "status", rec.status, "duration", took.Round(time.Microsecond))
	if s.cfg.Observe != nil {
		s.cfg.Observe(r.Pattern, rec.status, took)
	}
}

// logPath is the request path fit for a log: a matched route's wildcard
// segments are shown by name ("/account/{link}"); an unmatched path only by
// its first segment, since it may be a mistyped secret.
func logPath(r *http.Request) string {
	if r.Pattern != "" {
		_, path, _ := strings.Cut(r.Pattern, " ")
		if path == "" {
			path = r.Pattern
		}
		if strings.Contains(path, "{") || strings.HasSuffix(path, "/") && path != "/" {
			return path
		}
		return r.URL.Path
	}
	first, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if rest != "" {
		return "/" + first + "/…"
	}
	return "/" + first
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Handle lets other packages mount routes on the same server (the usage API).
func (s *Server) Handle(pattern string, h http.Handler) {
	s.mux.Handle(pattern, h)
	s.patterns = append(s.patterns, pattern)
}

// Routes lists the patterns the server answers ("METHOD /path").
func (s *Server) Routes() []string { return slices.Clone(s.patterns) }

// OpenAPI is the OpenAPI 3.1 document of the JSON APIs, served at
// /openapi.json and checked against Routes by the tests.
//
//go:embed openapi.json
var OpenAPI []byte

func (s *Server) routes() {
	s.Handle("GET /openapi.json", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		_, _ = w.Write(OpenAPI)
	}))
	s.Handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Emulator {
			_, _ = w.Write([]byte("ok (EMULATOR MODE: usage goes to an AWS Marketplace emulator; nothing is billed)\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	}))
	if s.cfg.Ready != nil {
		s.Handle("GET /readyz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
			defer cancel()
			w.Header().Set("Cache-Control", "no-store")
			if err := s.cfg.Ready(ctx); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ready\n"))
		}))
	}
	s.Handle("POST /subscriber", http.HandlerFunc(s.handleSubscriberAPI))
	s.Handle("OPTIONS /subscriber", http.HandlerFunc(s.handleSubscriberAPI))
	if s.cfg.APIOnly {
		return
	}
	// The buyer pages (HTML; not part of the OpenAPI document).
	s.Handle("GET /{$}", http.HandlerFunc(s.handleHome))
	s.Handle("GET /static/", http.FileServerFS(staticFS))
	s.Handle("POST /fulfillment", http.HandlerFunc(s.handleFulfillment))
	s.Handle("GET /fulfillment", http.HandlerFunc(s.handleFulfillmentGet))
	s.Handle("POST /register", http.HandlerFunc(s.handleRegister))
	s.Handle("GET /account/{link}", http.HandlerFunc(s.handleStatus))
}

// page is the data every template gets.
type page struct {
	Title        string
	ProductName  string
	SupportEmail string
	SignInURL    string
	Message      string
	Session      string
	Contact      mpsaas.Contact
	Errors       mpsaas.FieldErrors
	Subscriber   *mpsaas.Subscriber
	StatusURL    string
	FreeTrial    bool
	Emulator     bool
	Update       bool // the registration form updates a registered buyer's details
	// Product is the product code the page is about (else the
	// Subscriber's), for per-product names and sign-in URLs.
	Product string
}

func (s *Server) render(w http.ResponseWriter, status int, name string, p page) {
	p.ProductName, p.SupportEmail, p.SignInURL, p.Emulator = s.cfg.ProductName, s.cfg.SupportEmail, s.cfg.SignInURL, s.cfg.Emulator
	if p.Product == "" && p.Subscriber != nil {
		p.Product = p.Subscriber.ProductCode
	}
	if prod, ok := s.cfg.Products[p.Product]; ok {
		if prod.Name != "" {
			p.ProductName = prod.Name
		}
		if prod.SignInURL != "" {
			p.SignInURL = prod.SignInURL
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if err := s.tmpl.ExecuteTemplate(w, name, p); err != nil {
		s.log.Error("render template", "template", name, "err", err)
	}
}

// renderError shows an error page. Internal details are logged, not shown.
func (s *Server) renderError(w http.ResponseWriter, r *http.Request, err error) {
	status := errorStatus(err)
	if status >= 500 {
		s.log.Error("request failed", "path", r.URL.Path, "err", err)
	}
	s.render(w, status, "error.html", page{Title: "Something went wrong", Message: mpsaas.ErrorMessage(err)})
}

// errorStatus is the one table from error codes to HTTP status.
func errorStatus(err error) int {
	switch mpsaas.ErrorCode(err) {
	case mpsaas.EINVALID:
		return http.StatusBadRequest
	case mpsaas.ENOTFOUND:
		return http.StatusNotFound
	case mpsaas.ECONFLICT:
		return http.StatusConflict
	case mpsaas.EUNAUTHORIZED:
		return http.StatusUnauthorized
	case mpsaas.EUNAVAILABLE:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func (s *Server) handleHome(w http.ResponseWriter, r *http.Request) {
	s.render(w, http.StatusOK, "home.html", page{Title: s.cfg.ProductName})
}

// handleFulfillmentGet answers a visit without a token (and AWS's URL
// check) with 200 and directions.
func (s *Server) handleFulfillmentGet(w http.ResponseWriter, r *http.Request) {
	s.render(w, http.StatusOK, "home.html", page{Title: s.cfg.ProductName, Message: "To register, subscribe on AWS Marketplace and choose \"Set up your account\"."})
}

// handleFulfillment receives the buyer's browser form POST from AWS
// Marketplace with x-amzn-marketplace-token. It resolves the token at once
// and renders the registration page (200). The token is not put in a URL,
// a cookie or a log; the form carries a signed subscriber key instead.
func (s *Server) handleFulfillment(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		s.render(w, http.StatusBadRequest, "error.html", page{Title: "Something went wrong", Message: "The request could not be read. Please return to AWS Marketplace and choose \"Set up your account\" again."})
		return
	}
	token := r.PostForm.Get("x-amzn-marketplace-token")
	if token == "" {
		// AWS validates the fulfillment URL with a POST and expects 200.
		s.render(w, http.StatusOK, "home.html", page{Title: s.cfg.ProductName, Message: "To register, subscribe on AWS Marketplace and choose \"Set up your account\"."})
		return
	}
	freeTrial := r.PostForm.Get("x-amzn-marketplace-offer-type") == mpsaas.OfferTypeFreeTrial
	sub, err := s.subs.Resolve(r.Context(), token, subscription.ResolveOptions{FreeTrial: freeTrial})
	if err != nil {
		s.renderError(w, r, err)
		return
	}
	if s.cfg.SignupURL != "" {
		s.handoff(w, r, sub)
		return
	}
	if sub.Registered() {
		// A fresh visit from AWS Marketplace may update the details, once.
		s.render(w, http.StatusOK, "register.html", page{Title: "Welcome back", Subscriber: sub, StatusURL: s.statusURL(sub.Key), Update: true,
			Session: s.session(sub.Key, sub.Contact), Contact: sub.Contact, FreeTrial: sub.FreeTrial,
			Message: "You have already registered. Sign in to continue, or update your contact details below."})
		return
	}
	s.render(w, http.StatusOK, "register.html", page{Title: "Create your account", Session: s.session(sub.Key, sub.Contact), FreeTrial: sub.FreeTrial, Product: sub.ProductCode})
}

// session signs the form for the subscriber's contact details as they are
// now: once a form was used (the details changed), it cannot write again.
func (s *Server) session(key string, c mpsaas.Contact) string {
	return s.sign.sign("register", key+"|"+contactHash(c), s.clock.Now().Add(s.cfg.RegistrationTTL))
}

// contactHash fingerprints contact details ("" for none).
func contactHash(c mpsaas.Contact) string {
	if c == (mpsaas.Contact{}) {
		return ""
	}
	h := sha256.Sum256([]byte(c.CompanyName + "\x00" + c.ContactPerson + "\x00" + c.ContactPhone + "\x00" + c.ContactEmail))
	return base64.RawURLEncoding.EncodeToString(h[:12])
}

func (s *Server) statusURL(key string) string {
	// Status links stay valid for a year; they show, never change, anything.
	return "/account/" + s.sign.sign("status", key, s.clock.Now().AddDate(1, 0, 0))
}

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		s.render(w, http.StatusBadRequest, "error.html", page{Title: "Something went wrong", Message: "The form could not be read. Please try again."})
		return
	}
	sess := r.PostForm.Get("session")
	value, ok := s.sign.verify("register", sess, s.clock.Now())
	if !ok {
		s.render(w, http.StatusBadRequest, "error.html", page{Title: "Registration expired", Message: "This registration form has expired or is not valid. Please return to AWS Marketplace and choose \"Set up your account\" again."})
		return
	}
	key, formFor := value, ""
	if i := strings.LastIndexByte(value, '|'); i >= 0 {
		key, formFor = value[:i], value[i+1:]
	}
	// A form writes once: after it was used, the details it was issued for
	// are gone, and a replay of it changes nothing.
	if cur, err := s.subs.Get(r.Context(), key); err != nil {
		s.renderError(w, r, err)
		return
	} else if contactHash(cur.Contact) != formFor {
		s.render(w, http.StatusConflict, "error.html", page{Title: "Form already used", Message: "This registration form was already used. To change your details, return to AWS Marketplace and choose \"Set up your account\" again, or contact support."})
		return
	}
	c := mpsaas.Contact{
		CompanyName: r.PostForm.Get("companyName"), ContactPerson: r.PostForm.Get("contactPerson"),
		ContactPhone: r.PostForm.Get("contactPhone"), ContactEmail: r.PostForm.Get("contactEmail"),
	}.Normalize()
	if fe := c.Validate(); fe != nil {
		s.render(w, http.StatusBadRequest, "register.html", page{Title: "Create your account", Session: sess, Contact: c, Errors: fe})
		return
	}
	sub, err := s.subs.Register(r.Context(), key, c)
	if err != nil {
		if mpsaas.ErrorCode(err) == mpsaas.EUNAVAILABLE {
			s.render(w, http.StatusServiceUnavailable, "register.html", page{Title: "Create your account", Session: sess, Contact: c, Message: mpsaas.ErrorMessage(err)})
			return
		}
		s.renderError(w, r, err)
		return
	}
	msg := "Thank you for registering. Keep the link below to see your subscription at any time."
	if s.cfg.EmailsBuyers {
		msg = "Thank you for registering. Please check your email for a confirmation!"
	}
	s.render(w, http.StatusOK, "registered.html", page{Title: "Registration complete", Subscriber: sub, StatusURL: s.statusURL(sub.Key), Message: msg})
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	key, ok := s.sign.verify("status", r.PathValue("link"), s.clock.Now())
	if !ok {
		s.render(w, http.StatusNotFound, "error.html", page{Title: "Link not valid", Message: "This account link is not valid or has expired."})
		return
	}
	sub, err := s.subs.Get(r.Context(), key)
	if err != nil {
		s.renderError(w, r, err)
		return
	}
	s.render(w, http.StatusOK, "status.html", page{Title: "Your subscription", Subscriber: sub})
}

// Sample stack API messages (its landing page shows them verbatim).
const (
	sampleSuccess = "Thank you for registering. Please check your email for a confirmation!"
	sampleInvalid = "Registration data not valid. Please try again, or contact support!"
)

type sampleRegistration struct {
	RegToken      string `json:"regToken"`
	CompanyName   string `json:"companyName"`
	ContactPerson string `json:"contactPerson"`
	ContactPhone  string `json:"contactPhone"`
	ContactEmail  string `json:"contactEmail"`
}

// handleSubscriberAPI is the sample stack's registration API: a JSON body
// with regToken and the contact fields.
func (s *Server) handleSubscriberAPI(w http.ResponseWriter, r *http.Request) {
	s.cors(w, r)
	if r.Method == http.MethodOptions {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	var in sampleRegistration
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	if err := dec.Decode(&in); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"message": sampleInvalid, "error": "The request body must be a JSON object."})
		return
	}
	c := mpsaas.Contact{CompanyName: in.CompanyName, ContactPerson: in.ContactPerson, ContactPhone: in.ContactPhone, ContactEmail: in.ContactEmail}.Normalize()
	if fe := c.Validate(); fe != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"message": sampleInvalid, "errors": fe})
		return
	}
	sub, err := s.subs.RegisterWithToken(r.Context(), strings.TrimSpace(in.RegToken), c)
	if err != nil {
		status := errorStatus(err)
		if status >= 500 {
			s.log.Error("registration API failed", "err", err)
		}
		writeJSON(w, status, map[string]any{"message": sampleInvalid, "error": mpsaas.ErrorMessage(err)})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"message": sampleSuccess, "subscriber": sub.Key, "status": sub.Status, "statusUrl": s.statusURL(sub.Key)})
}

func (s *Server) cors(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return
	}
	if slices.Contains(s.cfg.CORSOrigins, "*") {
		w.Header().Set("Access-Control-Allow-Origin", "*")
	} else if slices.Contains(s.cfg.CORSOrigins, origin) {
		w.Header().Set("Access-Control-Allow-Origin", origin)
		w.Header().Add("Vary", "Origin")
	} else {
		return
	}
	w.Header().Set("Access-Control-Allow-Methods", "POST, OPTIONS")
	w.Header().Set("Access-Control-Allow-Headers", "Content-Type")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

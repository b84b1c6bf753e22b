// Command receiver is a small example of a seller's application behind
// mpsaas, written with the standard library only: it is the sign-up page
// mpsaas hands buyers to (MPSAAS_SIGNUP_URL), it redeems the claim code
// and links the buyer to its own account, and it receives mpsaas's signed
// access-change webhooks (MPSAAS_WEBHOOK_URL) and keeps each account's
// access up to date.
//
//	MPSAAS_URL=http://localhost:8080 MPSAAS_API_KEY=... MPSAAS_WEBHOOK_SECRET=... go run ./examples/receiver
//
// then start mpsaas with MPSAAS_SIGNUP_URL=http://localhost:9090/signup and
// MPSAAS_WEBHOOK_URL=http://localhost:9090/hooks/mpsaas.
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	cfg := config{MpsaasURL: strings.TrimRight(os.Getenv("MPSAAS_URL"), "/"), APIKey: os.Getenv("MPSAAS_API_KEY"), WebhookSecret: os.Getenv("MPSAAS_WEBHOOK_SECRET")}
	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = "localhost:9090"
	}
	if cfg.MpsaasURL == "" || cfg.APIKey == "" || cfg.WebhookSecret == "" {
		log.Fatal("set MPSAAS_URL, MPSAAS_API_KEY and MPSAAS_WEBHOOK_SECRET")
	}
	srv := &http.Server{Addr: addr, Handler: newApp(cfg), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	log.Printf("example seller app on http://%s (sign-up at /signup, webhooks at /hooks/mpsaas)", addr)
	log.Fatal(srv.ListenAndServe())
}

type config struct {
	MpsaasURL, APIKey, WebhookSecret string
}

// account is the seller's own record of a customer.
type account struct {
	ID            string `json:"id"`
	Email         string `json:"email"`
	SubscriberKey string `json:"subscriberKey"`
	Access        string `json:"access"`
	Version       int    `json:"version"`
}

type app struct {
	cfg      config
	http     *http.Client
	mu       sync.Mutex
	accounts map[string]*account
	seen     map[string]bool // webhook idempotency keys handled
}

func newApp(cfg config) http.Handler {
	a := &app{cfg: cfg, http: &http.Client{Timeout: 10 * time.Second}, accounts: map[string]*account{}, seen: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /signup", a.signupForm)
	mux.HandleFunc("POST /signup", a.signup)
	mux.HandleFunc("POST /hooks/mpsaas", a.webhook)
	mux.HandleFunc("GET /accounts", a.list)
	return mux
}

var pages = template.Must(template.New("").Parse(`
{{define "form"}}<!doctype html><title>Seller App: sign up</title>
<h1>Create your Seller App account</h1>
<form id="signup-form" method="post" action="/signup">
<input type="hidden" name="code" value="{{.}}">
<label>Email <input id="email" name="email" type="email" required></label>
<button id="create" type="submit">Create account</button></form>{{end}}
{{define "welcome"}}<!doctype html><title>Seller App: welcome</title>
<p id="welcome">Welcome, {{.Email}}. Your AWS Marketplace subscription is linked to account {{.ID}}.</p>{{end}}
{{define "error"}}<!doctype html><title>Seller App</title><p id="error">{{.}}</p>{{end}}`))

func (a *app) signupForm(w http.ResponseWriter, r *http.Request) {
	code := r.URL.Query().Get("code")
	if code == "" {
		w.WriteHeader(http.StatusBadRequest)
		_ = pages.ExecuteTemplate(w, "error", "Please start from AWS Marketplace.")
		return
	}
	_ = pages.ExecuteTemplate(w, "form", code)
}

// signup creates the account and redeems the claim code, linking it.
func (a *app) signup(w http.ResponseWriter, r *http.Request) {
	code, email := r.PostFormValue("code"), r.PostFormValue("email")
	a.mu.Lock()
	acct := &account{ID: "acct-" + strconv.Itoa(len(a.accounts)+1), Email: email}
	a.mu.Unlock()
	body, _ := json.Marshal(map[string]string{"accountId": acct.ID})
	req, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, a.cfg.MpsaasURL+"/v1/claims/"+url.PathEscape(code), bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+a.cfg.APIKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.http.Do(req)
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		_ = pages.ExecuteTemplate(w, "error", "Could not reach the subscription service; please try again.")
		return
	}
	defer resp.Body.Close()
	var buyer struct {
		SubscriberKey string `json:"subscriberKey"`
		Access        string `json:"access"`
		Version       int    `json:"version"`
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if err := json.NewDecoder(resp.Body).Decode(&buyer); err != nil {
			w.WriteHeader(http.StatusBadGateway)
			_ = pages.ExecuteTemplate(w, "error", "Unexpected answer from the subscription service.")
			return
		}
	case http.StatusConflict:
		w.WriteHeader(http.StatusConflict)
		_ = pages.ExecuteTemplate(w, "error", "This sign-up link was already used. Sign in instead.")
		return
	default:
		w.WriteHeader(http.StatusBadRequest)
		_ = pages.ExecuteTemplate(w, "error", "This sign-up link has expired. Please start again from AWS Marketplace.")
		return
	}
	acct.SubscriberKey, acct.Access, acct.Version = buyer.SubscriberKey, buyer.Access, buyer.Version
	a.mu.Lock()
	a.accounts[acct.ID] = acct
	a.mu.Unlock()
	_ = pages.ExecuteTemplate(w, "welcome", acct)
}

// webhook takes an access change: signature checked, each delivered once.
func (a *app) webhook(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "unreadable body", http.StatusBadRequest)
		return
	}
	if err := verify([]byte(a.cfg.WebhookSecret), r.Header.Get("X-Mpsaas-Signature"), body, time.Now(), 5*time.Minute); err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var change struct {
		IdempotencyKey string `json:"idempotencyKey"`
		Access         string `json:"access"`
		Version        int    `json:"version"`
		Subscriber     struct {
			Key             string `json:"key"`
			LinkedAccountID string `json:"linkedAccountId"`
		} `json:"subscriber"`
	}
	if err := json.Unmarshal(body, &change); err != nil {
		http.Error(w, "not an access change", http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seen[change.IdempotencyKey] {
		return // a retry of a change already applied
	}
	a.seen[change.IdempotencyKey] = true
	if acct := a.accounts[change.Subscriber.LinkedAccountID]; acct != nil && change.Version > acct.Version {
		acct.Access, acct.Version = change.Access, change.Version // changes can arrive out of order
	}
}

func (a *app) list(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a.accounts)
}

// verify checks X-Mpsaas-Signature: "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>",
// with t within tolerance of now (a replayed old delivery is refused).
func verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return fmt.Errorf("malformed signature header")
	}
	if d := now.Sub(time.Unix(t, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("signature too old or in the future")
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts + "." + string(body)))
	want, _ := hex.DecodeString(sig)
	if !hmac.Equal(mac.Sum(nil), want) {
		return fmt.Errorf("signature does not match")
	}
	return nil
}

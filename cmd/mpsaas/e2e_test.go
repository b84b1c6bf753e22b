package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/internal/config"
	"github.com/mpsaas/mpsaas/webhook"
)

const testWebhookSecret = "test-webhook-secret-0123456789"

// webhookSink is the seller's system: it verifies every webhook and records it.
type webhookSink struct {
	mu      sync.Mutex
	changes []mpsaas.AccessChange
	bad     []string
}

func (s *webhookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := webhook.Verify([]byte(testWebhookSecret), r.Header.Get(webhook.SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
		s.bad = append(s.bad, err.Error())
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var c mpsaas.AccessChange
	if err := json.Unmarshal(body, &c); err != nil || c.IdempotencyKey != r.Header.Get("Idempotency-Key") {
		s.bad = append(s.bad, fmt.Sprintf("payload %s: %v", body, err))
		http.Error(w, "bad payload", http.StatusBadRequest)
		return
	}
	s.changes = append(s.changes, c)
}

// waitFor polls until the sink holds a change for product with access a.
func (s *webhookSink) waitFor(t *testing.T, product string, a mpsaas.Access) mpsaas.AccessChange {
	t.Helper()
	return s.wait(t, fmt.Sprintf("%s webhook for %s", a, product), func(c mpsaas.AccessChange) bool {
		return c.Subscriber.ProductCode == product && c.Access == a
	})
}

// waitForEvent polls until the sink holds a change for product of kind event.
func (s *webhookSink) waitForEvent(t *testing.T, product, event string) mpsaas.AccessChange {
	t.Helper()
	return s.wait(t, fmt.Sprintf("%s webhook for %s", event, product), func(c mpsaas.AccessChange) bool {
		return c.Subscriber.ProductCode == product && c.Event == event
	})
}

// wait polls until the sink holds a change that matches, for 15 seconds.
func (s *webhookSink) wait(t *testing.T, what string, match func(mpsaas.AccessChange) bool) mpsaas.AccessChange {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		for _, c := range s.changes {
			if match(c) {
				s.mu.Unlock()
				return c
			}
		}
		s.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t.Fatalf("no %s; got %+v (rejected: %v)", what, s.changes, s.bad)
	return mpsaas.AccessChange{}
}

type testApp struct {
	*App
	sink *webhookSink
	logs *strings.Builder
}

// startApp runs `mpsaas serve` in-process on free ports with the embedded
// emulator and a webhook sink.
func startApp(t *testing.T, listing string, extraEnv ...string) *testApp {
	t.Helper()
	sink := &webhookSink{}
	hook := httptest.NewServer(sink)
	t.Cleanup(hook.Close)
	env := map[string]string{
		"MPSAAS_ADDR": "127.0.0.1:0", "MPSAAS_EMULATOR_ADDR": "127.0.0.1:0", "MPSAAS_DB": filepath.Join(t.TempDir(), "e2e.db"),
		"MPSAAS_LISTING": listing, "MPSAAS_WEBHOOK_URL": hook.URL, "MPSAAS_WEBHOOK_SECRET": testWebhookSecret,
		"MPSAAS_EMULATOR": "on", "MPSAAS_SECRET": strings.Repeat("s", 32), "MPSAAS_PRODUCT_NAME": "Widgets Cloud",
	}
	for i := 0; i+1 < len(extraEnv); i += 2 {
		env[extraEnv[i]] = extraEnv[i+1]
	}
	var cfg Config
	if err := cfg.Load(flag.NewFlagSet("test", flag.ContinueOnError), nil, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(config.Serve); err != nil {
		t.Fatal(err)
	}
	logs := &strings.Builder{}
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), nil))
	ctx, cancel := context.WithCancel(context.Background())
	app, err := openApp(ctx, cfg, func(k string) string { return env[k] }, logger)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return &testApp{App: app, sink: sink, logs: logs}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func (a *testApp) agreement(t *testing.T, product string) emulator.Subscription {
	t.Helper()
	for _, s := range a.em.Subscriptions() {
		if s.ProductCode == product {
			return s
		}
	}
	t.Fatalf("no agreement for %s", product)
	return emulator.Subscription{}
}

var journeyContact = mpsaas.Contact{CompanyName: "Acme Robotics", ContactPerson: "Ann Lee", ContactPhone: "+1 206 555 0100", ContactEmail: "ann@acme.example"}

// TestFreeTrialComesFromAWS (issue 9): the fulfillment POST comes through
// the buyer's browser, so its offer type decides nothing: a buyer who
// edits the form into a free trial gets none, and a buyer whose agreement
// has a free trial gets it without the form saying so (the Agreement API).
func TestFreeTrialComesFromAWS(t *testing.T) {
	for _, tc := range []struct {
		name      string
		trial     bool   // the agreement has a free trial term
		offerType string // what the (edited) POST says
	}{{"forged claim", false, "free-trial"}, {"claim removed", true, ""}} {
		t.Run(tc.name, func(t *testing.T) {
			app := startApp(t, mpsaas.ListingSubscriptions)
			client := &http.Client{}
			form := url.Values{"productCode": {demoLicenseProduct}, "buyerAccountId": {"123456789012"}}
			if tc.trial {
				form.Set("freeTrial", "1")
			}
			page := postForm(t, client, app.EmulatorURL()+"/emulator/ui/subscribe", form, 200)
			action, fields := parseForm(t, page, "setup-form")
			fields.Set("x-amzn-marketplace-offer-type", tc.offerType)
			page = postForm(t, client, action, fields, 200)
			_, reg := parseForm(t, page, "register-form")
			postForm(t, client, app.URL()+"/register", url.Values{"session": reg["session"], "companyName": {journeyContact.CompanyName},
				"contactPerson": {journeyContact.ContactPerson}, "contactPhone": {journeyContact.ContactPhone}, "contactEmail": {journeyContact.ContactEmail}}, 200)
			granted := app.sink.waitFor(t, demoLicenseProduct, mpsaas.AccessGranted)
			if granted.Subscriber.FreeTrial != tc.trial {
				t.Errorf("free trial = %v, want %v (the agreement's)", granted.Subscriber.FreeTrial, tc.trial)
			}
		})
	}
}

// TestBuyerJourneyHTTP drives the journey with a plain HTTP client posting
// the same forms a browser would (fast; runs everywhere).
func TestBuyerJourneyHTTP(t *testing.T) {
	for _, product := range []string{demoLicenseProduct, demoLegacyProduct} {
		t.Run(product, func(t *testing.T) {
			app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_METER_INTERVAL", "1s")
			client := &http.Client{}
			// The buyer subscribes on the (emulated) listing page.
			page := postForm(t, client, app.EmulatorURL()+"/emulator/ui/subscribe", url.Values{"productCode": {product}, "buyerAccountId": {"123456789012"}, "freeTrial": {"1"}}, 200)
			action, fields := parseForm(t, page, "setup-form")
			if action != app.URL()+"/fulfillment" || fields.Get("x-amzn-marketplace-token") == "" || fields.Get("x-amzn-marketplace-offer-type") != "free-trial" {
				t.Fatalf("setup form posts to %s with %v", action, fields)
			}
			// Marketplace's form POST reaches the fulfillment URL: 200 and the form.
			page = postForm(t, client, action, fields, 200)
			_, reg := parseForm(t, page, "register-form")
			if strings.Contains(page, fields.Get("x-amzn-marketplace-token")) {
				t.Fatal("the registration page contains the registration token")
			}
			// Bad input first: clear errors, nothing stored.
			bad := url.Values{"session": reg["session"], "companyName": {""}, "contactPerson": {"Ann"}, "contactPhone": {"phone"}, "contactEmail": {"nope"}}
			page = postForm(t, client, app.URL()+"/register", bad, 400)
			for _, want := range []string{"Company name is required.", "Phone number may contain only digits", "Email address must look like"} {
				if !strings.Contains(page, want) {
					t.Errorf("error page lacks %q", want)
				}
			}
			good := url.Values{"session": reg["session"], "companyName": {journeyContact.CompanyName}, "contactPerson": {journeyContact.ContactPerson},
				"contactPhone": {journeyContact.ContactPhone}, "contactEmail": {journeyContact.ContactEmail}}
			page = postForm(t, client, app.URL()+"/register", good, 200)
			if !strings.Contains(page, "Thank you for registering") {
				t.Fatalf("registered page: %s", page)
			}
			// No SMTP configured: no email goes to the buyer, so the page
			// does not tell them to look for one.
			if strings.Contains(page, "check your email") {
				t.Error("the registered page promises an email although no email channel is configured")
			}
			granted := app.sink.waitFor(t, product, mpsaas.AccessGranted)
			// The form writes once: a replay (another tab, an attacker with
			// the page) cannot overwrite the details.
			replay := url.Values{"session": reg["session"], "companyName": {"Evil Corp"}, "contactPerson": {"Mallory"},
				"contactPhone": {journeyContact.ContactPhone}, "contactEmail": {"mallory@evil.example"}}
			if page := postForm(t, client, app.URL()+"/register", replay, 409); !strings.Contains(page, "already used") {
				t.Errorf("replayed form: %s", page)
			}
			if granted.Subscriber.ContactEmail != journeyContact.ContactEmail || !granted.Subscriber.FreeTrial {
				t.Errorf("granted webhook subscriber = %+v", granted.Subscriber)
			}
			if product == demoLicenseProduct && (granted.Subscriber.CustomerIdentifier != "" || granted.Subscriber.LicenseArn == "") {
				t.Errorf("license-based buyer: %+v", granted.Subscriber)
			}
			if product == demoLegacyProduct && granted.Subscriber.CustomerIdentifier == "" {
				t.Errorf("legacy buyer without CustomerIdentifier: %+v", granted.Subscriber)
			}
			// The buyer cancels: access is kept through the final metering
			// window, then revoked (SNS: unsubscribe-success; EventBridge
			// alone: the window's end).
			postForm(t, client, app.EmulatorURL()+"/emulator/ui/subscriptions/"+app.agreement(t, product).AgreementID+"/cancel", nil, 200)
			app.sink.waitFor(t, product, mpsaas.AccessPendingCancellation)
			emulatorClock(t, app, "61m")
			revoked := app.sink.waitFor(t, product, mpsaas.AccessRevoked)
			if revoked.Subscriber.Key != granted.Subscriber.Key || revoked.Version <= granted.Version {
				t.Errorf("revoked %+v after granted %+v", revoked, granted)
			}
			// The status page shows it.
			statusLink := regexp.MustCompile(`href="(/account/[^"]+)"`).FindStringSubmatch(page)
			if statusLink == nil {
				t.Fatal("no status link on the registered page")
			}
			status := get(t, client, app.URL()+statusLink[1], 200)
			if !strings.Contains(status, "Your subscription has ended") || !strings.Contains(status, "revoked") || strings.Contains(status, "being cancelled") {
				t.Errorf("status page does not show the subscription ended, access revoked:\n%s", status)
			}
			// A second fulfillment POST with a fresh token: already registered.
			again, err := app.em.NewToken(app.agreement(t, product).AgreementID)
			if err != nil {
				t.Fatal(err)
			}
			page = postForm(t, client, app.URL()+"/fulfillment", url.Values{"x-amzn-marketplace-token": {again.Token}}, 200)
			if !strings.Contains(page, "already registered") {
				t.Errorf("second visit: want 'already registered', got %s", page)
			}
			// The fresh visit may update the details, once; the seller hears
			// of it as contact.updated.
			_, hidden := parseForm(t, page, "register-form")
			if !strings.Contains(page, `value="`+journeyContact.ContactEmail+`"`) {
				t.Errorf("update form not prefilled:\n%s", page)
			}
			upd := url.Values{"session": hidden["session"], "companyName": {journeyContact.CompanyName}, "contactPerson": {journeyContact.ContactPerson},
				"contactPhone": {"+1 206 555 0177"}, "contactEmail": {journeyContact.ContactEmail}}
			postForm(t, client, app.URL()+"/register", upd, 200)
			updated := app.sink.waitForEvent(t, product, mpsaas.EventContactUpdated)
			if updated.Subscriber.ContactPhone != "+1 206 555 0177" {
				t.Errorf("contact.updated carries %+v", updated.Subscriber.Contact)
			}
			postForm(t, client, app.URL()+"/register", upd, 409)
			if strings.Contains(app.logs.String(), fields.Get("x-amzn-marketplace-token")) {
				t.Error("the registration token appears in the logs")
			}
			// The status link is a bearer credential: never logged.
			if secret := strings.TrimPrefix(statusLink[1], "/account/"); strings.Contains(app.logs.String(), secret) {
				t.Error("the status link appears in the logs")
			}
		})
	}
}

func TestFulfillmentBadInput(t *testing.T) {
	app := startApp(t, mpsaas.ListingSubscriptions)
	client := &http.Client{}
	tests := []struct {
		name   string
		form   url.Values
		status int
		want   string
	}{
		{"no token (AWS URL check)", url.Values{}, 200, "subscribe on AWS Marketplace"},
		{"unknown token", url.Values{"x-amzn-marketplace-token": {"forged"}}, 400, "registration token is not valid"},
	}
	for _, tt := range tests {
		page := postForm(t, client, app.URL()+"/fulfillment", tt.form, tt.status)
		if !strings.Contains(page, tt.want) {
			t.Errorf("%s: page lacks %q", tt.name, tt.want)
		}
	}
	// A forged or expired registration session.
	page := postForm(t, client, app.URL()+"/register", url.Values{"session": {"abc.def"}, "companyName": {"x"}}, 400)
	if !strings.Contains(page, "expired or is not valid") {
		t.Errorf("forged session page: %s", page)
	}
	// The sample stack's JSON API with bad input.
	resp, err := client.Post(app.URL()+"/subscriber", "application/json", strings.NewReader(`{"regToken":"forged","companyName":"A","contactPerson":"B","contactPhone":"+1 555 0100","contactEmail":"b@a.example"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "Registration data not valid") {
		t.Errorf("sample API with forged token: %d %s", resp.StatusCode, body)
	}
}

func TestSampleRegistrationAPI(t *testing.T) {
	app := startApp(t, mpsaas.ListingContractsWithSubscription)
	res, err := app.em.Subscribe(emulator.SubscribeOptions{StartedAt: app.em.Clock.Now().Add(-24 * time.Hour), ProductCode: demoLegacyProduct, BuyerAccountID: "210987654321", Entitlements: map[string]int32{"users": 25}})
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`{"regToken":%q,"companyName":"Acme","contactPerson":"Ann","contactPhone":"+1 555 0100","contactEmail":"ann@acme.example"}`, res.Token)
	resp, err := http.Post(app.URL()+"/subscriber", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "Thank you for registering. Please check your email for a confirmation!") {
		t.Fatalf("sample API: %d %s", resp.StatusCode, b)
	}
	c := app.sink.waitFor(t, demoLegacyProduct, mpsaas.AccessGranted)
	if len(c.Subscriber.Entitlements) != 1 || c.Subscriber.Entitlements[0].Dimension != "users" {
		t.Errorf("entitlements in webhook = %+v, want users", c.Subscriber.Entitlements)
	}
}

func postForm(t *testing.T, c *http.Client, u string, form url.Values, wantStatus int) string {
	t.Helper()
	resp, err := c.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("POST %s: status %d, want %d\n%s", u, resp.StatusCode, wantStatus, b)
	}
	return string(b)
}

func get(t *testing.T, c *http.Client, u string, wantStatus int) string {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: status %d, want %d\n%s", u, resp.StatusCode, wantStatus, b)
	}
	return string(b)
}

var (
	formRE  = regexp.MustCompile(`(?s)<form[^>]*action="([^"]*)"[^>]*id="([^"]+)"[^>]*>(.*?)</form>`)
	inputRE = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)
)

// parseForm returns the action and hidden fields of the form with id.
func parseForm(t *testing.T, page, id string) (string, url.Values) {
	t.Helper()
	for _, m := range formRE.FindAllStringSubmatch(page, -1) {
		if m[2] != id {
			continue
		}
		vals := url.Values{}
		for _, in := range inputRE.FindAllStringSubmatch(m[3], -1) {
			vals.Add(in[1], htmlUnescape(in[2]))
		}
		return htmlUnescape(m[1]), vals
	}
	t.Fatalf("no form %q in page:\n%s", id, page)
	return "", nil
}

func htmlUnescape(s string) string {
	return strings.NewReplacer("&amp;", "&", "&#43;", "+", "&#34;", `"`, "&#39;", "'", "&lt;", "<", "&gt;", ">").Replace(s)
}

// TestBuyerJourneyBrowser drives the journey in headless Chromium exactly as
// a buyer's browser would. It needs Debian's chromium; it is skipped when
// chromium is missing unless MPSAAS_BROWSER_TESTS=1 (CI), where it fails.
func TestBuyerJourneyBrowser(t *testing.T) {
	chrome := requireChromium(t)
	for _, product := range []string{demoLicenseProduct, demoLegacyProduct} {
		t.Run(product, func(t *testing.T) {
			app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_METER_INTERVAL", "1s")
			ctx := newBrowser(t, chrome)

			css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
			err := chromedp.Do(ctx,
				chromedp.Navigate(app.EmulatorURL()+"/emulator/"),
				chromedp.SetValue(css("#product"), product),
				chromedp.SetValue(css("#buyer"), "123456789012"),
				chromedp.Click(css("#subscribe")),
				chromedp.WaitVisible(css("#setup")),
				chromedp.Click(css("#setup")), // Marketplace's form POST to the fulfillment URL
				chromedp.WaitVisible(css("#register-form")),
				chromedp.SendKeys(css("#companyName"), journeyContact.CompanyName),
				chromedp.SendKeys(css("#contactPerson"), journeyContact.ContactPerson),
				chromedp.SendKeys(css("#contactPhone"), journeyContact.ContactPhone),
				chromedp.SendKeys(css("#contactEmail"), journeyContact.ContactEmail),
				chromedp.Click(css("#register")),
				chromedp.WaitVisible(css("#registered-message")),
			)
			if err != nil {
				t.Fatalf("browser: %v\nlogs:\n%s", err, app.logs.String())
			}
			message, err := chromedp.Run(ctx, chromedp.Text(css("#registered-message")))
			if err != nil || !strings.Contains(message, "Thank you for registering") {
				t.Errorf("registered message = %q (%v)", message, err)
			}
			granted := app.sink.waitFor(t, product, mpsaas.AccessGranted)
			if granted.Subscriber.CompanyName != journeyContact.CompanyName {
				t.Errorf("webhook company = %q", granted.Subscriber.CompanyName)
			}
			row := `tr[data-agreement="` + app.agreement(t, product).AgreementID + `"]`
			err = chromedp.Do(ctx,
				chromedp.Navigate(app.EmulatorURL()+"/emulator/"),
				chromedp.Click(css(row+" button.cancel")),
				chromedp.WaitNotPresent(css(row+" button.cancel")), // the page reloaded after the cancel
			)
			if err != nil {
				t.Fatalf("browser cancel: %v", err)
			}
			status, err := chromedp.Run(ctx, chromedp.Text(css(row+" td.status")))
			if err != nil || status != "unsubscribe-pending" {
				t.Errorf("agreement status after cancel = %q (%v)", status, err)
			}
			app.sink.waitFor(t, product, mpsaas.AccessPendingCancellation)
			emulatorClock(t, app, "61m")
			app.sink.waitFor(t, product, mpsaas.AccessRevoked)
		})
	}
}

// requireChromium returns chromium's path. Without chromium the test is
// skipped, unless MPSAAS_BROWSER_TESTS=1 (CI), where it fails.
func requireChromium(t *testing.T) string {
	t.Helper()
	chrome := findChromium()
	if chrome == "" {
		if os.Getenv("MPSAAS_BROWSER_TESTS") == "1" {
			t.Fatal("MPSAAS_BROWSER_TESTS=1 but chromium is not installed")
		}
		t.Skip("chromium not installed (apt-get install chromium); set MPSAAS_BROWSER_TESTS=1 to require it")
	}
	return chrome
}

// newBrowser starts headless chromium for the test: the context of its
// tab, with a 60 s deadline; the browser is closed when the test ends.
func newBrowser(t *testing.T, chrome string) context.Context {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	return ctx
}

func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// TestSlowClientsAreCutOff (issue 9): a client that sends its request
// headers slowly (slowloris) is disconnected by the web server and by the
// embedded emulator once the header timeout passes.
func TestSlowClientsAreCutOff(t *testing.T) {
	old := httpTimeouts
	httpTimeouts.header = 300 * time.Millisecond
	t.Cleanup(func() { httpTimeouts = old })
	app := startApp(t, mpsaas.ListingSubscriptions)
	for name, base := range map[string]string{"web server": app.URL(), "emulator": app.EmulatorURL()} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n") // never finished
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		_, err = io.ReadAll(conn)
		conn.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s kept a connection with unfinished headers open for 5 s", name)
		} else if took := time.Since(start); took > 3*time.Second {
			t.Errorf("%s closed it after %s", name, took)
		}
	}
}

// TestSignupHandoffBrowser (issue 12): in headless Chromium, a buyer
// subscribes on the (emulated) listing, chooses "Set up your account" and
// lands on the seller's own sign-up (the example receiver in
// examples/receiver, built and run as a program); signing up there redeems
// the claim and links the account, and the signed grant webhook reaches it.
func TestSignupHandoffBrowser(t *testing.T) {
	chrome := requireChromium(t)
	bin := filepath.Join(t.TempDir(), "receiver")
	if out, err := exec.Command("go", "build", "-o", bin, "../../examples/receiver").CombinedOutput(); err != nil {
		t.Fatalf("go build examples/receiver: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	receiverAddr := ln.Addr().String()
	ln.Close()
	receiverURL := "http://" + receiverAddr
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_USAGE_API_KEYS", testUsageKey, "MPSAAS_SIGNUP_URL", receiverURL+"/signup",
		"MPSAAS_WEBHOOK_URL", receiverURL+"/hooks/mpsaas")
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "ADDR="+receiverAddr, "MPSAAS_URL="+app.URL(), "MPSAAS_API_KEY="+testUsageKey, "MPSAAS_WEBHOOK_SECRET="+testWebhookSecret)
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", receiverAddr); err == nil {
			c.Close()
			break
		}
		if i > 100 {
			t.Fatalf("the example receiver did not start: %s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	ctx := newBrowser(t, chrome)
	err = chromedp.Do(ctx,
		chromedp.Navigate(app.EmulatorURL()+"/emulator/"),
		chromedp.SetValue(chromedp.CSS("#product"), demoLicenseProduct),
		chromedp.SetValue(chromedp.CSS("#buyer"), "123456789012"),
		chromedp.Click(chromedp.CSS("#subscribe")),
		chromedp.WaitVisible(chromedp.CSS("#setup")),
		chromedp.Click(chromedp.CSS("#setup")), // Marketplace's POST to /fulfillment, redirected to the seller
		chromedp.WaitVisible(chromedp.CSS("#signup-form")),
	)
	if err != nil {
		t.Fatalf("browser: %v\nmpsaas logs:\n%s\nreceiver logs:\n%s", err, app.logs.String(), logs.String())
	}
	location, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS("#email"), "ann@acme.example"),
		chromedp.Click(chromedp.CSS("#create")),
		chromedp.WaitVisible(chromedp.CSS("#welcome")),
	)
	if err != nil {
		t.Fatalf("browser sign-up: %v\nreceiver logs:\n%s", err, logs.String())
	}
	welcome, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#welcome")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(location, receiverURL+"/signup?code=") || !strings.Contains(welcome, "linked to account acct-1") {
		t.Errorf("landed on %s: %q", location, welcome)
	}
	// The grant webhook, signed, reaches the seller's app and updates the account.
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(receiverURL + "/accounts")
		if err != nil {
			t.Fatal(err)
		}
		var accounts map[string]struct{ Access string }
		_ = json.NewDecoder(resp.Body).Decode(&accounts)
		resp.Body.Close()
		if accounts["acct-1"].Access == string(mpsaas.AccessGranted) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the seller's account never got access: %+v\nmpsaas logs:\n%s", accounts, app.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/admin"
)

// gatedSink refuses webhooks (502) until opened, then verifies and keeps
// them like webhookSink: a seller's receiver that was down.
type gatedSink struct {
	open    atomic.Bool
	refused atomic.Int64
	*webhookSink
}

func (s *gatedSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.open.Load() {
		s.refused.Add(1)
		http.Error(w, "receiver down", http.StatusBadGateway)
		return
	}
	s.webhookSink.ServeHTTP(w, r)
}

// TestConsoleInBrowser (issue 10): in headless Chromium against `mpsaas
// serve`: the console sends a visitor without a session to sign in; the
// seller signs in, finds the buyer, opens the usage chart, and retries the
// access change the receiver refused, which then arrives; after signing
// out every page asks for the password again.
func TestConsoleInBrowser(t *testing.T) {
	chrome := requireChromium(t)
	const password = "browser console password"
	hash, err := admin.HashPassword(password, 2000)
	if err != nil {
		t.Fatal(err)
	}
	sink := &gatedSink{webhookSink: &webhookSink{}}
	hook := httptest.NewServer(sink)
	t.Cleanup(hook.Close)
	const usageKey = "browser-usage-key-0123456789"
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_ADMIN_PASSWORD_HASH", hash, "MPSAAS_WEBHOOK_URL", hook.URL,
		"MPSAAS_USAGE_API_KEYS", usageKey, "MPSAAS_METER_INTERVAL", "1s")
	ctx := newBrowser(t, chrome)
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }

	// A buyer subscribes and registers; the receiver is down.
	err = chromedp.Do(ctx,
		chromedp.Navigate(app.EmulatorURL()+"/emulator/"),
		chromedp.SetValue(css("#product"), demoLicenseProduct),
		chromedp.SetValue(css("#buyer"), "123456789012"),
		chromedp.Click(css("#subscribe")),
		chromedp.WaitVisible(css("#setup")),
		chromedp.Click(css("#setup")),
		chromedp.WaitVisible(css("#register-form")),
		chromedp.SendKeys(css("#companyName"), "Console Buyer Ltd"),
		chromedp.SendKeys(css("#contactPerson"), "Ann Lee"),
		chromedp.SendKeys(css("#contactPhone"), "+1 206 555 0100"),
		chromedp.SendKeys(css("#contactEmail"), "ann@console.example"),
		chromedp.Click(css("#register")),
		chromedp.WaitVisible(css("#registered-message")),
	)
	if err != nil {
		t.Fatalf("buyer journey: %v\nlogs:\n%s", err, app.logs.String())
	}
	license := app.agreement(t, demoLicenseProduct).LicenseArn
	body, _ := json.Marshal(map[string]any{"idempotencyKey": "console-usage-1", "records": []mpsaas.Usage{
		{Customer: license, Dimension: "users", Quantity: 7, Time: time.Now().UTC()}}})
	req, _ := http.NewRequest(http.MethodPost, app.URL()+"/v1/usage", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+usageKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("usage: %v %v", resp, err)
	}
	resp.Body.Close()
	// Wait until deliveries failed a few times: the next automatic attempt
	// is then seconds away, so the retry below is the console's.
	deadline := time.Now().Add(30 * time.Second)
	for sink.refused.Load() < 4 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if sink.refused.Load() < 4 {
		t.Fatalf("the receiver was called %d times", sink.refused.Load())
	}

	// Without a session the console asks for the password.
	for i, step := range []chromedp.Action[chromedp.Void]{
		chromedp.Navigate(app.URL() + "/admin/buyers"),
		chromedp.WaitVisible(css("#password")),
		chromedp.SendKeys(css("#password"), password),
		chromedp.Click(css("#signin")),
		chromedp.WaitVisible(css("table#buyers")),
		chromedp.SendKeys(css("#q"), "console buyer"),
		chromedp.Click(css("#search")),
		// The results page (its search box holds the query as rendered);
		// the list before the search has buyer links too.
		chromedp.WaitVisible(css(`#q[value="console buyer"]`)),
		chromedp.WaitVisible(css("a.buyer")),
		chromedp.Click(css("a.buyer")),
		chromedp.WaitVisible(css("#usage-chart")),
	} {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := chromedp.Do(sctx, step)
		cancel()
		if err != nil {
			html, _ := chromedp.Run(ctx, chromedp.OuterHTML(css("body")))
			t.Fatalf("console step %d: %v\npage:\n%s\nlogs:\n%s", i, err, html, app.logs.String())
		}
	}
	dims, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#usage-chart polyline.usage")].map(p => p.dataset.dimension)`))
	if err != nil || fmt.Sprint(dims) != "[users]" {
		t.Errorf("chart lines = %v (%v), want [users]", dims, err)
	}
	company, err := chromedp.Run(ctx, chromedp.Text(css("h1")))
	if err != nil || company != "Console Buyer Ltd" {
		t.Errorf("buyer page heading = %q (%v)", company, err)
	}
	// The receiver is back: retry the refused delivery from the console.
	sink.open.Store(true)
	err = chromedp.Do(ctx,
		chromedp.Click(css("#deliveries button.retry")),
		chromedp.WaitVisible(css("#flash")),
	)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	granted := sink.waitFor(t, demoLicenseProduct, mpsaas.AccessGranted)
	if granted.Subscriber.CompanyName != "Console Buyer Ltd" {
		t.Errorf("webhook after retry: %+v", granted.Subscriber)
	}
	if !strings.Contains(app.logs.String(), "action=retry-delivery") {
		t.Errorf("the retry is not in the audit log")
	}
	// Signed out, every page asks for the password again.
	if err := chromedp.Do(ctx, chromedp.Click(css("#signout")), chromedp.WaitVisible(css("#password"))); err != nil {
		t.Fatalf("sign out: %v", err)
	}
	for _, p := range []string{"/admin/buyers", "/admin/metering", "/admin/deliveries"} {
		if err := chromedp.Do(ctx, chromedp.Navigate(app.URL()+p), chromedp.WaitVisible(css("#password"))); err != nil {
			t.Errorf("%s after sign-out: %v", p, err)
		}
	}
}

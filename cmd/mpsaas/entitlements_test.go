package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/client"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/web"
)

// TestEntitlementsAPI (issue 12): the seller's application asks, through
// the Go client over HTTP, whether a buyer is entitled and to what; the
// answer comes from the store with an ETag; the client caches it until a
// webhook says the buyer's access changed.
func TestEntitlementsAPI(t *testing.T) {
	app := startApp(t, mpsaas.ListingContractsWithSubscription, "MPSAAS_USAGE_API_KEYS", testUsageKey, "MPSAAS_METER_INTERVAL", "1s")
	key, agreement := contractBuyer(t, app, "123456789012", map[string]int32{"users": 5})
	ctx := context.Background()
	c := client.New(app.URL(), testUsageKey)
	c.CacheTTL = time.Hour

	for _, customer := range []string{key, agreement.LicenseArn} {
		v, err := c.Entitlements(ctx, customer)
		if err != nil {
			t.Fatal(err)
		}
		if v.SubscriberKey != key || v.Access != mpsaas.AccessGranted || len(v.Entitlements) != 1 || v.Entitlements[0].Dimension != "users" || v.Customer != customer {
			t.Errorf("entitlements of %s: %+v", customer, v)
		}
	}
	for dim, want := range map[string]bool{"users": true, "": true, "requests": false} {
		if got, err := c.Entitled(ctx, key, dim); err != nil || got != want {
			t.Errorf("Entitled(%q) = %v, %v; want %v", dim, got, err, want)
		}
	}

	// HTTP caching: an ETag, and 304 for a request that has it.
	get := func(etag string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, app.URL()+"/v1/entitlements?customer="+url.QueryEscape(key), nil)
		req.Header.Set("Authorization", "Bearer "+testUsageKey)
		if etag != "" {
			req.Header.Set("If-None-Match", etag)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	first := get("")
	etag := first.Header.Get("ETag")
	if first.StatusCode != 200 || etag == "" || first.Header.Get("Cache-Control") == "" {
		t.Fatalf("GET: %d, ETag %q, Cache-Control %q", first.StatusCode, etag, first.Header.Get("Cache-Control"))
	}
	if r := get(etag); r.StatusCode != http.StatusNotModified {
		t.Errorf("GET with If-None-Match: %d, want 304", r.StatusCode)
	}

	// The buyer cancels; the final window ends; access is revoked. The
	// cached answer stands until the webhook invalidates it.
	emulatorControl(t, app, "subscriptions/"+agreement.AgreementID+"/cancel")
	app.sink.waitFor(t, demoLicenseProduct, mpsaas.AccessPendingCancellation)
	emulatorClock(t, app, "61m")
	revoked := app.sink.waitFor(t, demoLicenseProduct, mpsaas.AccessRevoked)
	if ok, _ := c.Entitled(ctx, key, "users"); !ok {
		t.Error("the cached answer changed before the webhook invalidated it (CacheTTL is an hour)")
	}
	c.InvalidateChange(revoked)
	if ok, err := c.Entitled(ctx, key, "users"); ok || err != nil {
		t.Errorf("after the revocation webhook: entitled %v, %v", ok, err)
	}
	if r := get(etag); r.StatusCode != 200 {
		t.Errorf("GET with the old ETag after a change: %d, want 200", r.StatusCode)
	}

	// Errors.
	for customer, want := range map[string]int{"": 400, "nobody-at-all": 404, "bad\x01name": 400, strings.Repeat("k", 2049): 400} {
		_, err := c.Entitlements(ctx, customer)
		var apiErr *client.Error
		if !errors.As(err, &apiErr) || apiErr.Status != want {
			t.Errorf("customer %q: %v, want %d", customer, err, want)
		}
	}
	if _, err := client.New(app.URL(), "wrong-key-0123456789").Entitlements(ctx, key); err == nil {
		t.Error("a wrong API key was accepted")
	}
}

// TestOpenAPIExamplesAreAccepted (issue 12): the example request of every
// documented operation, sent to a running serve (placeholders filled in
// with a real buyer, token and time), gets a documented 2xx answer; and
// serve answers every documented GET without a body.
func TestOpenAPIExamplesAreAccepted(t *testing.T) {
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_USAGE_API_KEYS", testUsageKey)
	key, agreement := registeredBuyer(t, app, demoLegacyProduct, "123456789012")
	other, err := app.em.Subscribe(emulator.SubscribeOptions{ProductCode: demoLicenseProduct, BuyerAccountID: "210987654321"})
	if err != nil {
		t.Fatal(err)
	}
	fill := strings.NewReplacer(`"CUSTOMER"`, strconv.Quote(agreement.CustomerIdentifier), `"TIME"`, strconv.Quote(time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)),
		`"TOKEN"`, strconv.Quote(other.Token), `"TIMESTAMP"`, strconv.FormatInt(time.Now().Add(-time.Minute).Unix(), 10))
	var doc struct {
		Paths map[string]map[string]struct {
			RequestBody struct {
				Content map[string]struct{ Example json.RawMessage }
			}
			Parameters []struct{ Name, In string }
			Responses  map[string]any
		}
	}
	if err := json.Unmarshal(web.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	tried := 0
	for path, ops := range doc.Paths {
		for method, op := range ops {
			method = strings.ToUpper(method)
			example := op.RequestBody.Content["application/json"].Example
			if method == http.MethodOptions || (method != http.MethodGet && example == nil) || strings.Contains(path, "{") {
				continue // a path with a parameter (a claim code) has its own test
			}
			url := app.URL() + path
			for _, p := range op.Parameters {
				if p.In == "query" && p.Name == "customer" {
					url += "?customer=" + key
				}
			}
			req, _ := http.NewRequest(method, url, strings.NewReader(fill.Replace(string(example))))
			req.Header.Set("Authorization", "Bearer "+testUsageKey)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if _, documented := op.Responses[strconv.Itoa(resp.StatusCode)]; !documented || resp.StatusCode >= 300 {
				t.Errorf("%s %s with the documented example: %d %s", method, path, resp.StatusCode, body)
			}
			tried++
		}
	}
	if tried < 8 {
		t.Errorf("tried %d operations", tried)
	}
}

// TestSignupHandoff (issue 12): with MPSAAS_SIGNUP_URL the buyer arriving
// from AWS Marketplace is sent to the seller's own sign-up with a claim
// code, the only thing in the URL; the seller's backend redeems it once for
// the buyer's identity, linking its own account id, which every later
// webhook carries.
func TestSignupHandoff(t *testing.T) {
	sellerApp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "seller sign-up") }))
	defer sellerApp.Close()
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_USAGE_API_KEYS", testUsageKey, "MPSAAS_SIGNUP_URL", sellerApp.URL+"/signup?from=aws")
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	page := postForm(t, noRedirect, app.EmulatorURL()+"/emulator/ui/subscribe", url.Values{"productCode": {demoLicenseProduct}, "buyerAccountId": {"123456789012"}}, 200)
	action, fields := parseForm(t, page, "setup-form")
	resp, err := noRedirect.PostForm(action, fields)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusSeeOther || err != nil || !strings.HasPrefix(loc.String(), sellerApp.URL+"/signup?") {
		t.Fatalf("fulfillment answered %d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	agreement := app.agreement(t, demoLicenseProduct)
	code := loc.Query().Get("code")
	if len(loc.Query()) != 2 || loc.Query().Get("from") != "aws" || code == "" {
		t.Errorf("the seller's URL carries %v, want its own parameter and the code", loc.Query())
	}
	for _, secret := range []string{fields.Get("x-amzn-marketplace-token"), agreement.BuyerAccountID, agreement.LicenseArn, strings.TrimPrefix(agreement.LicenseArn, "arn:aws:license-manager::123456789012:license:")} {
		if strings.Contains(loc.String(), secret) || strings.Contains(loc.String(), url.QueryEscape(secret)) {
			t.Errorf("the redirect URL contains %q", secret)
		}
	}
	redeem := func(code, body, key string) (int, mpsaas.AccessView) {
		req, _ := http.NewRequest(http.MethodPost, app.URL()+"/v1/claims/"+url.PathEscape(code), strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v mpsaas.AccessView
		_ = json.NewDecoder(resp.Body).Decode(&v)
		return resp.StatusCode, v
	}
	if status, _ := redeem(code, `{"accountId":"acct-42"}`, "wrong-key-0123456789"); status != 401 {
		t.Errorf("without the API key: %d", status)
	}
	status, v := redeem(code, `{"accountId":"acct-42"}`, testUsageKey)
	if status != 200 || v.LicenseArn != agreement.LicenseArn || v.CustomerAWSAccountID != "123456789012" || v.ProductCode != demoLicenseProduct || v.LinkedAccountID != "acct-42" || v.SubscriberKey == "" {
		t.Fatalf("redeemed: %d %+v", status, v)
	}
	if status, _ := redeem(code, `{"accountId":"acct-42"}`, testUsageKey); status != 409 {
		t.Errorf("second redemption: %d, want 409", status)
	}
	if status, _ := redeem("bm90LWEtY29kZQ", "", testUsageKey); status != 404 {
		t.Errorf("unknown code: %d, want 404", status)
	}
	// Bad bodies change nothing (the code was redeemed above; these are
	// refused before it is looked at).
	for body, want := range map[string]int{`{"accountId":"` + strings.Repeat("a", 257) + `"}`: 400, `{"accountId":"a\u0000b"}`: 400,
		`{"accountId":`: 400, `{"account":"x"}`: 400} {
		if status, _ := redeem("bm90LWEtY29kZQ", body, testUsageKey); status != want {
			t.Errorf("claim body %.40q: %d, want %d", body, status, want)
		}
	}
	// The buyer counts as registered by the seller's sign-up: the grant
	// goes out with the linked account.
	granted := app.sink.waitFor(t, demoLicenseProduct, mpsaas.AccessGranted)
	if granted.Subscriber.LinkedAccountID != "acct-42" || granted.Subscriber.Key != v.SubscriberKey {
		t.Errorf("granted webhook: %+v", granted.Subscriber)
	}
	// The seller names the buyer by its own account id: usage and
	// entitlement checks.
	c := client.New(app.URL(), testUsageKey)
	rec, err := c.RecordUsage(context.Background(), "by-account", []mpsaas.Usage{{Customer: "acct-42", Dimension: "users", Quantity: 2, Time: time.Now().Add(-time.Minute)}})
	if err != nil || rec.Accepted != 1 {
		t.Errorf("usage by linked account: %+v, %v", rec, err)
	}
	if ledger, err := c.Ledger(context.Background(), mpsaas.LedgerFilter{SubscriberKey: "acct-42"}); err != nil || len(ledger) != 1 ||
		ledger[0].SubscriberKey != v.SubscriberKey || ledger[0].LinkedAccountID != "acct-42" {
		t.Errorf("ledger of the linked account: %+v, %v", ledger, err)
	}
	if ent, err := c.Entitlements(context.Background(), "acct-42"); err != nil || ent.SubscriberKey != v.SubscriberKey || ent.Access != mpsaas.AccessGranted {
		t.Errorf("entitlements by linked account: %+v, %v", ent, err)
	}

	// The buyer cancels, and later subscribes again: a new agreement (a new
	// license, a new subscriber key) that lands on the same linked account
	// before the seller redeems anything.
	emulatorControl(t, app, "subscriptions/"+agreement.AgreementID+"/cancel")
	emulatorClock(t, app, "61m")
	page = postForm(t, noRedirect, app.EmulatorURL()+"/emulator/ui/subscribe", url.Values{"productCode": {demoLicenseProduct}, "buyerAccountId": {"123456789012"}}, 200)
	action, fields = parseForm(t, page, "setup-form")
	if resp, err := noRedirect.PostForm(action, fields); err != nil || resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("second fulfillment: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	var again emulator.Subscription
	for _, s := range app.em.Subscriptions() {
		if s.AgreementID != agreement.AgreementID && s.BuyerAccountID == "123456789012" {
			again = s
		}
	}
	ent, err := c.Entitlements(context.Background(), again.LicenseArn)
	if err != nil || ent.LinkedAccountID != "acct-42" || ent.SubscriberKey == v.SubscriberKey {
		t.Errorf("the new agreement's buyer: %+v, %v; want a new subscriber linked to acct-42", ent, err)
	}
	if ent, err := c.Entitlements(context.Background(), "acct-42"); err != nil || ent.LicenseArn != again.LicenseArn {
		t.Errorf("the linked account now names the new agreement's buyer: %+v, %v", ent, err)
	}
}

// TestMetricsAndReadiness (issue 10): serve answers /readyz and serves
// Prometheus metrics on MPSAAS_METRICS_ADDR: requests by route and status,
// metering runs, deliveries by channel, and the store's gauges.
func TestMetricsAndReadiness(t *testing.T) {
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_USAGE_API_KEYS", testUsageKey, "MPSAAS_METRICS_ADDR", "127.0.0.1:0", "MPSAAS_METER_INTERVAL", "1s")
	key, _ := registeredBuyer(t, app, demoLicenseProduct, "123456789012") // a webhook delivery
	if _, err := client.New(app.URL(), testUsageKey).RecordUsage(context.Background(), "m-1", []mpsaas.Usage{{Customer: key, Dimension: "users", Quantity: 1, Time: time.Now().Add(-time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.New(app.URL(), testUsageKey).RecordUsage(context.Background(), "m-bad", []mpsaas.Usage{{Customer: "nobody", Dimension: "users", Quantity: 1, Time: time.Now()}}); err == nil {
		t.Fatal("usage for an unknown customer was accepted")
	}
	resp, err := http.Get(app.URL() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/readyz: %d %s", resp.StatusCode, body)
	}
	if err := app.ready("http://127.0.0.1:1")(context.Background()); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("readiness with the metering endpoint down: %v", err)
	}
	app.lastMeterOK.Store(time.Now().Add(-time.Hour).UnixNano()) // as if the metering loop had stalled an hour ago
	if err := app.ready(app.EmulatorURL())(context.Background()); err == nil || !strings.Contains(err.Error(), "metering is behind") {
		t.Errorf("readiness with metering stalled: %v", err)
	}
	metricsURL := "http://" + app.metricsLn.Addr().String() + "/metrics"
	want := []string{
		`mpsaas_http_requests_total{route="POST /v1/usage",status="202"} 1`,
		`mpsaas_http_requests_total{route="GET /readyz",status="200"} 1`,
		`mpsaas_access_change_deliveries_total{channel="webhook",result="delivered"}`,
		`mpsaas_meter_runs_total{result="ok"}`,
		`mpsaas_registrations_total{product="` + demoLicenseProduct + `"} 1`,
		`mpsaas_usage_records_total{result="stored"} 1`,
		`mpsaas_usage_records_total{result="refused"} 1`,
		`mpsaas_outbox_pending 0`,
		`mpsaas_database_bytes`,
		`mpsaas_gauges_error 0`,
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(metricsURL)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var missing []string
		for _, w := range want {
			if !strings.Contains(string(b), w) {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %q:\n%s", missing, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The web server itself does not serve the metrics.
	if resp, err := http.Get(app.URL() + "/metrics"); err == nil && resp.StatusCode == 200 {
		t.Error("metrics on the public web server")
	}
}

package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/client"
	"github.com/mpsaas/mpsaas/emulator"
)

// TestTwoProductsOneServe (issue 11): one serve sells a subscription and a
// contract listing, configured by a products file. Each product's buyers
// see its name, its access changes go to its webhook, its usage is checked
// against its dimensions and billed by its listing type (the contract's
// entitlement covers usage; the subscription bills it), though the
// deployment-wide listing type is subscriptions.
func TestTwoProductsOneServe(t *testing.T) {
	enterprise := &webhookSink{}
	hook := httptest.NewServer(enterprise)
	t.Cleanup(hook.Close)
	file := filepath.Join(t.TempDir(), "products.yaml")
	products := fmt.Sprintf(`products:
  - code: %s
    listing: subscriptions
    name: Widgets Cloud
    dimensions: [users]
  - code: enterprise-prod
    listing: contracts
    name: Widgets Enterprise
    sign_in_url: https://enterprise.example/login
    dimensions: [seats]
    webhook_url: %s
`, demoLicenseProduct, hook.URL)
	if err := os.WriteFile(file, []byte(products), 0o600); err != nil {
		t.Fatal(err)
	}
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_PRODUCTS_FILE", file, "MPSAAS_USAGE_API_KEYS", testUsageKey, "MPSAAS_METER_INTERVAL", "1s")
	// The emulator has the file's products (a seller can try each locally).
	var seeded *emulator.Product
	for _, p := range app.em.Products() {
		if p.Code == "enterprise-prod" {
			seeded = &p
		}
	}
	if seeded == nil || seeded.Type != emulator.ProductContract || seeded.Name != "Widgets Enterprise" || len(seeded.Dimensions) != 1 || seeded.Dimensions[0].Name != "seats" {
		t.Fatalf("the emulator's enterprise product: %+v", seeded)
	}
	ctx := context.Background()
	c := client.New(app.URL(), testUsageKey)

	// The subscription buyer: the default webhook, the product's name.
	res, err := app.em.Subscribe(emulator.SubscribeOptions{StartedAt: app.em.Clock.Now().Add(-24 * time.Hour), ProductCode: demoLicenseProduct, BuyerAccountID: "123456789012"})
	if err != nil {
		t.Fatal(err)
	}
	if page := postForm(t, &http.Client{}, app.URL()+"/fulfillment", url.Values{"x-amzn-marketplace-token": {res.Token}}, 200); !strings.Contains(page, "Create your Widgets Cloud account") {
		t.Errorf("subscription product's registration page:\n%s", page)
	}
	subsKey, _ := subscribeAndRegister(t, app, emulator.SubscribeOptions{StartedAt: app.em.Clock.Now().Add(-24 * time.Hour), ProductCode: demoLicenseProduct, BuyerAccountID: "210987654321"})

	// The contract buyer: its own webhook, name and sign-in link.
	res, err = app.em.Subscribe(emulator.SubscribeOptions{StartedAt: app.em.Clock.Now().Add(-24 * time.Hour), ProductCode: "enterprise-prod", BuyerAccountID: "123456789012",
		Entitlements: map[string]int32{"seats": 10}})
	if err != nil {
		t.Fatal(err)
	}
	page := postForm(t, &http.Client{}, app.URL()+"/fulfillment", url.Values{"x-amzn-marketplace-token": {res.Token}}, 200)
	if !strings.Contains(page, "Create your Widgets Enterprise account") || !strings.Contains(page, "https://enterprise.example/login") {
		t.Errorf("contract product's registration page:\n%s", page)
	}
	_, reg := parseForm(t, page, "register-form")
	postForm(t, &http.Client{}, app.URL()+"/register", url.Values{"session": reg["session"], "companyName": {"Big Co"}, "contactPerson": {"Bo"},
		"contactPhone": {"+1 555 0100"}, "contactEmail": {"bo@big.example"}}, 200)
	granted := enterprise.waitFor(t, "enterprise-prod", mpsaas.AccessGranted)
	if len(granted.Subscriber.Entitlements) != 1 {
		t.Errorf("contract grant without its entitlements (the product's listing type reads them): %+v", granted.Subscriber)
	}
	app.sink.mu.Lock()
	for _, ch := range app.sink.changes {
		if ch.Subscriber.ProductCode == "enterprise-prod" {
			t.Errorf("the enterprise product's change went to the default webhook: %+v", ch)
		}
	}
	app.sink.mu.Unlock()

	// Usage: each product's dimensions.
	if _, err := c.RecordUsage(ctx, "wrong-dim", []mpsaas.Usage{{Customer: subsKey, Dimension: "seats", Quantity: 1, Time: time.Now().UTC()}}); err == nil ||
		!strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "are users") {
		t.Errorf("seats for the subscription product: %v, want 400 naming users", err)
	}
	now := app.em.Clock.Now()
	if _, err := c.RecordUsage(ctx, "u1", []mpsaas.Usage{{Customer: subsKey, Dimension: "users", Quantity: 4, Time: now},
		{Customer: granted.Subscriber.Key, Dimension: "seats", Quantity: 3, Time: now}}); err != nil {
		t.Fatal(err)
	}
	emulatorClock(t, app, mpsaas.Hour(now).Add(time.Hour+6*time.Minute).Sub(now).Round(time.Second).String())
	if e := waitFinal(t, app, c, subsKey, 1); e[0].State != mpsaas.UsageBilled {
		t.Errorf("subscription usage: %+v, want billed", e[0])
	}
	if e := waitFinal(t, app, c, granted.Subscriber.Key, 1); e[0].State != mpsaas.UsageCovered {
		t.Errorf("contract usage within its entitlement: %+v, want covered", e[0])
	}
}

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/client"
	"github.com/mpsaas/mpsaas/emulator"
)

// contractBuyer subscribes a buyer to the demo contract product with the
// given entitlements and registers them through serve's HTTP API.
func contractBuyer(t *testing.T, app *testApp, account string, ents map[string]int32) (string, emulator.Subscription) {
	t.Helper()
	return subscribeAndRegister(t, app, emulator.SubscribeOptions{StartedAt: app.em.Clock.Now().Add(-24 * time.Hour), ProductCode: demoLicenseProduct, BuyerAccountID: account, Entitlements: ents})
}

// emulatorControl calls the emulator's control API over HTTP.
func emulatorControl(t *testing.T, app *testApp, path string) {
	t.Helper()
	resp, err := http.Post(app.EmulatorURL()+"/emulator/api/"+path, "application/json", strings.NewReader("{}"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("POST %s: %v %v", path, resp, err)
	}
	resp.Body.Close()
}

// waitFinal waits until every ledger entry of key is in a final state and
// returns the entries.
func waitFinal(t *testing.T, app *testApp, c *client.Client, key string, n int) []mpsaas.LedgerEntry {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		entries, err := c.Ledger(context.Background(), mpsaas.LedgerFilter{SubscriberKey: key})
		if err != nil {
			t.Fatal(err)
		}
		final := 0
		for _, e := range entries {
			switch e.State {
			case mpsaas.UsageBilled, mpsaas.UsageCovered, mpsaas.UsageRejected, mpsaas.UsageFlagged:
				final++
			}
		}
		if final == n && len(entries) == n {
			return entries
		}
		if time.Now().After(deadline) {
			t.Fatalf("ledger = %+v, want %d final entries\nlogs:\n%s", entries, n, app.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestContractCancelDoesNotBillCoveredUsage (issue 14, item 1): a buyer
// entitled to 5 users reports 3 in the open hour, then cancels. The hour is
// sealed at once (the final metering window) with the entitlement the
// buyer had in that hour: nothing is billed, the usage is covered.
func TestContractCancelDoesNotBillCoveredUsage(t *testing.T) {
	app := startApp(t, mpsaas.ListingContracts, "MPSAAS_USAGE_API_KEYS", testUsageKey, "MPSAAS_METER_INTERVAL", "1s")
	key, agreement := contractBuyer(t, app, "123456789012", map[string]int32{"users": 5})
	c := client.New(app.URL(), testUsageKey)
	if _, err := c.RecordUsage(context.Background(), "u1", []mpsaas.Usage{{Customer: key, Dimension: "users", Quantity: 3, Time: time.Now().UTC()}}); err != nil {
		t.Fatal(err)
	}
	emulatorControl(t, app, "subscriptions/"+agreement.AgreementID+"/cancel")
	app.sink.waitFor(t, demoLicenseProduct, mpsaas.AccessPendingCancellation)
	entries := waitFinal(t, app, c, key, 1)
	if entries[0].State != mpsaas.UsageCovered {
		t.Errorf("usage within the entitlement ended %s (%s), want covered", entries[0].State, entries[0].Reason)
	}
	var billed int64
	for _, b := range app.em.Billed("123456789012") {
		billed += b.Quantity
	}
	if billed != 0 {
		t.Errorf("AWS billed %d for usage the contract covered", billed)
	}
	st, err := c.Status(context.Background())
	if err != nil || st[mpsaas.UsageBilled].MeterQuantity != 0 || st[mpsaas.UsageCovered].Quantity != 3 {
		t.Errorf("status = %+v, %v; want 3 covered, nothing billed", st, err)
	}
}

// emulatorClock advances the emulator's clock through its control API.
func emulatorClock(t *testing.T, app *testApp, advance string) {
	t.Helper()
	resp, err := http.Post(app.EmulatorURL()+"/emulator/api/clock", "application/json", strings.NewReader(`{"advance":"`+advance+`"}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("advance the emulator clock: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestLateContractUsageBillsTheHoursOverage (issue 14, item 2) through
// serve's usage API and the emulator's clock: 3 users in an hour within an
// entitlement of 5 are covered; 4 more for that hour, arriving after it
// was sealed, bill 2 (7 - 5) in the next closed hour.
func TestLateContractUsageBillsTheHoursOverage(t *testing.T) {
	app := startApp(t, mpsaas.ListingContractsWithSubscription, "MPSAAS_USAGE_API_KEYS", testUsageKey, "MPSAAS_METER_INTERVAL", "1s")
	key, _ := contractBuyer(t, app, "123456789012", map[string]int32{"users": 5})
	c := client.New(app.URL(), testUsageKey)
	ctx := context.Background()
	t0 := app.em.Clock.Now()
	if _, err := c.RecordUsage(ctx, "on-time", []mpsaas.Usage{{Customer: key, Dimension: "users", Quantity: 3, Time: t0}}); err != nil {
		t.Fatal(err)
	}
	nextHour := mpsaas.Hour(t0).Add(time.Hour)
	emulatorClock(t, app, nextHour.Add(6*time.Minute).Sub(t0).Round(time.Second).String())
	if e := waitFinal(t, app, c, key, 1); e[0].State != mpsaas.UsageCovered {
		t.Fatalf("on-time usage within the entitlement: %+v, want covered", e[0])
	}
	if _, err := c.RecordUsage(ctx, "late", []mpsaas.Usage{{Customer: key, Dimension: "users", Quantity: 4, Time: t0}}); err != nil {
		t.Fatal(err)
	}
	emulatorClock(t, app, "1h")
	entries := waitFinal(t, app, c, key, 2)
	if entries[1].State != mpsaas.UsageBilled || !strings.Contains(entries[1].Reason, "late usage") {
		t.Errorf("late entry %+v: want billed, explained as late", entries[1])
	}
	var billed int64
	for _, b := range app.em.Billed("123456789012") {
		billed += b.Quantity
		if !b.Hour.Equal(nextHour) {
			t.Errorf("billed in hour %s, want the open hour %s", b.Hour, nextHour)
		}
	}
	if billed != 2 {
		t.Errorf("AWS billed %d, want 2: the hour's usage 7 less its entitlement 5", billed)
	}
	st, err := c.Status(ctx)
	if err != nil || st[mpsaas.UsageBilled].MeterQuantity != 2 || st[mpsaas.UsageCovered].Quantity != 3 {
		t.Errorf("status = %+v, %v", st, err)
	}
}

// TestConcurrentFulfillmentPosts (issue 9): 50 POSTs of one token at once
// (a buyer double-clicking, a browser retrying) all end in the same
// registration page, none in a 409.
func TestConcurrentFulfillmentPosts(t *testing.T) {
	app := startApp(t, mpsaas.ListingSubscriptions)
	res, err := app.em.Subscribe(emulator.SubscribeOptions{StartedAt: app.em.Clock.Now().Add(-24 * time.Hour), ProductCode: demoLicenseProduct, BuyerAccountID: "123456789012"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	statuses := make(chan string, 50)
	for range 50 {
		wg.Go(func() {
			resp, err := http.PostForm(app.URL()+"/fulfillment", url.Values{"x-amzn-marketplace-token": {res.Token}})
			if err != nil {
				statuses <- err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(b), "Create your account") {
				statuses <- fmt.Sprintf("%d %.200s", resp.StatusCode, b)
				return
			}
			statuses <- "ok"
		})
	}
	wg.Wait()
	close(statuses)
	bad := map[string]int{}
	for s := range statuses {
		if s != "ok" {
			bad[s]++
		}
	}
	if len(bad) > 0 {
		t.Errorf("concurrent fulfillment POSTs that did not get the registration form: %v", bad)
	}
}

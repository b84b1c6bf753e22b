package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/client"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/sqlite"
)

const testUsageKey = "usage-key-0123456789abcdef"

// registeredBuyer subscribes and registers a buyer through the app's own
// HTTP API and returns the subscriber key and the agreement.
func registeredBuyer(t *testing.T, app *testApp, product, account string) (string, emulator.Subscription) {
	t.Helper()
	return subscribeAndRegister(t, app, emulator.SubscribeOptions{StartedAt: app.em.Clock.Now().Add(-24 * time.Hour), ProductCode: product, BuyerAccountID: account})
}

// subscribeAndRegister subscribes in the emulator and registers through
// serve's sample registration API; it returns the subscriber key.
func subscribeAndRegister(t *testing.T, app *testApp, opts emulator.SubscribeOptions) (string, emulator.Subscription) {
	t.Helper()
	product := opts.ProductCode
	res, err := app.em.Subscribe(opts)
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`{"regToken":%q,"companyName":"Acme","contactPerson":"Ann","contactPhone":"+1 555 0100","contactEmail":"ann@acme.example"}`, res.Token)
	resp, err := http.Post(app.URL()+"/subscriber", "application/json", strings.NewReader(body))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("register: %v %v", resp, err)
	}
	resp.Body.Close()
	c := app.sink.waitFor(t, product, mpsaas.AccessGranted)
	return c.Subscriber.Key, res.Subscription
}

func waitBilled(t *testing.T, app *testApp, account string, want int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var got int64
	for time.Now().Before(deadline) {
		got = 0
		for _, b := range app.em.Billed(account) {
			got += b.Quantity
		}
		if got == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("billed for %s = %d, want %d\nlogs:\n%s", account, got, want, app.logs.String())
}

// TestUsageAPIAndScheduler: usage sent with the Go client and the CLI is
// billed by serve's metering loop, once, and the ledger says so.
func TestUsageAPIAndScheduler(t *testing.T) {
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_USAGE_API_KEYS", testUsageKey, "MPSAAS_METER_INTERVAL", "1s")
	key, agreement := registeredBuyer(t, app, demoLicenseProduct, "123456789012")
	ctx := context.Background()
	c := client.New(app.URL(), testUsageKey)
	// Two hours back: a closed hour past the sealing grace at any minute of the hour.
	lastHour := mpsaas.Hour(time.Now()).Add(-2 * time.Hour)
	recs := []mpsaas.Usage{
		{Customer: key, Dimension: "requests", Quantity: 40, Time: lastHour.Add(time.Minute), Tags: map[string]string{"team": "blue"}},
		{Customer: agreement.LicenseArn, Dimension: "requests", Quantity: 2, Time: lastHour.Add(2 * time.Minute)},
	}
	r, err := c.RecordUsage(ctx, "job-1", recs)
	if err != nil || r.Accepted != 2 {
		t.Fatalf("RecordUsage = %+v, %v", r, err)
	}
	// The same request again is counted once.
	if r, err := c.RecordUsage(ctx, "job-1", recs); err != nil || !r.Replayed {
		t.Fatalf("retry = %+v, %v; want replayed", r, err)
	}
	if _, err := c.RecordUsage(ctx, "job-1", recs[:1]); !client.IsConflict(err) {
		t.Errorf("reused key with other records: %v, want a conflict", err)
	}
	// The CLI, twice: the second is recognised as a resend.
	var out, errOut bytes.Buffer
	env := map[string]string{"MPSAAS_URL": app.URL(), "MPSAAS_USAGE_API_KEY": testUsageKey}
	args := []string{"usage", "record", "--customer", key, "--dimension", "users", "--quantity", "3", "--time", lastHour.Add(3 * time.Minute).Format(time.RFC3339)}
	for i, want := range []string{"recorded under key", "already recorded"} {
		out.Reset()
		if err := run(ctx, args, func(k string) string { return env[k] }, &out, &errOut); err != nil || !strings.Contains(out.String(), want) {
			t.Fatalf("CLI run %d: %v %q %q", i+1, err, out.String(), errOut.String())
		}
	}
	waitBilled(t, app, "123456789012", 45)
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, err := c.Ledger(ctx, mpsaas.LedgerFilter{SubscriberKey: key})
		if err != nil {
			t.Fatal(err)
		}
		billed := 0
		for _, e := range entries {
			if e.State == mpsaas.UsageBilled && e.MeteringRecordID != "" {
				billed++
			}
		}
		if billed == 3 && len(entries) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ledger = %+v, want 3 billed entries", entries)
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, err := c.Status(ctx)
	if err != nil || st[mpsaas.UsageBilled].Quantity != 45 {
		t.Errorf("status = %+v, %v; want 45 billed", st, err)
	}
	// Authentication and bad input.
	bad := client.New(app.URL(), "wrong-key-wrong-key")
	bad.Attempts = 1
	if _, err := bad.RecordUsage(ctx, "k", recs); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong key: %v, want 401", err)
	}
	for name, body := range map[string]string{
		"not JSON":         `nope`,
		"unknown field":    `{"idempotencyKey":"x","records":[],"extra":1}`,
		"no records":       `{"idempotencyKey":"x","records":[]}`,
		"unknown buyer":    `{"idempotencyKey":"x","records":[{"customer":"nobody","dimension":"users","quantity":1,"time":"2026-01-01T00:00:00Z"}]}`,
		"bad time":         `{"idempotencyKey":"x","records":[{"customer":"` + key + `","dimension":"users","quantity":1,"time":"yesterday"}]}`,
		"float quantity":   `{"idempotencyKey":"x","records":[{"customer":"` + key + `","dimension":"users","quantity":1.5,"time":"2026-01-01T00:00:00Z"}]}`,
		"NUL in dimension": `{"idempotencyKey":"x","records":[{"customer":"` + key + `","dimension":"us\u0000ers","quantity":1,"time":"2026-01-01T00:00:00Z"}]}`,
		"newline in key":   `{"idempotencyKey":"x\u0000y","records":[{"customer":"` + key + `","dimension":"users","quantity":1,"time":"2026-01-01T00:00:00Z"}]}`,
	} {
		req, _ := http.NewRequest("POST", app.URL()+"/v1/usage", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testUsageKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("%s: status %d, want 400", name, resp.StatusCode)
		}
	}
}

func TestSampleStackUsageFormat(t *testing.T) {
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_USAGE_API_KEYS", testUsageKey, "MPSAAS_METER_INTERVAL", "1s")
	_, agreement := registeredBuyer(t, app, demoLegacyProduct, "210987654321")
	ts := mpsaas.Hour(time.Now()).Add(-2*time.Hour).Unix() + 60
	ci := agreement.CustomerIdentifier
	// One item as plain JSON, one as DynamoDB JSON (as exported from the table).
	body := fmt.Sprintf(`[{"create_timestamp": %d, "customerIdentifier": %q, "dimension_usage": [{"dimension": "users", "value": 3}, {"dimension": "requests", "value": 1}], "metering_pending": "true"},
		{"create_timestamp": {"N": "%d"}, "customerIdentifier": {"S": %q}, "dimension_usage": {"L": [{"M": {"dimension": {"S": "users"}, "value": {"N": "2"}}}]}, "metering_pending": {"S": "true"}}]`, ts, ci, ts+1, ci)
	for i := 0; i < 2; i++ { // sent twice: counted once
		req, _ := http.NewRequest("POST", app.URL()+"/v1/usage/sample-stack", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testUsageKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 202 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	waitBilled(t, app, "210987654321", 6)
}

func TestMeterCLI(t *testing.T) {
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_USAGE_API_KEYS", testUsageKey, "MPSAAS_METER_INTERVAL", "1h")
	key, _ := registeredBuyer(t, app, demoLicenseProduct, "123456789012")
	ctx := context.Background()
	c := client.New(app.URL(), testUsageKey)
	if _, err := c.RecordUsage(ctx, "k1", []mpsaas.Usage{{Customer: key, Dimension: "users", Quantity: 9, Time: time.Now().Add(-30 * time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	db := app.cfg.DB
	env := map[string]string{"MPSAAS_DB": db, "MPSAAS_METERING_ENDPOINT": app.EmulatorURL(), "MPSAAS_ENTITLEMENT_ENDPOINT": app.EmulatorURL(), "MPSAAS_LISTING": "subscriptions"}
	getenv := func(k string) string { return env[k] }
	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"meter", "run"}, getenv, &out, &errOut); err != nil {
		t.Fatalf("meter run: %v\n%s", err, errOut.String())
	}
	if !strings.Contains(out.String(), "flagged 1") {
		t.Errorf("meter run output: %s", out.String())
	}
	out.Reset()
	if err := run(ctx, []string{"meter", "status"}, getenv, &out, &errOut); err != nil || !strings.Contains(out.String(), "flagged") || !strings.Contains(out.String(), "meter replay") {
		t.Errorf("meter status: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := run(ctx, []string{"meter", "status", "--state", "flagged"}, getenv, &out, &errOut); err != nil || !strings.Contains(out.String(), "TimestampOutOfBounds") {
		t.Errorf("meter status --state flagged: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := run(ctx, []string{"meter", "replay"}, getenv, &out, &errOut); err != nil || !strings.Contains(out.String(), "replayed 1") {
		t.Errorf("meter replay: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := run(ctx, []string{"meter", "verify"}, getenv, &out, &errOut); err != nil || !strings.HasPrefix(out.String(), "ok:") {
		t.Errorf("meter verify on a sound database: %v\n%s", err, out.String())
	}
	// Break the invariant the way the sealing race did: a usage record
	// sealed with no meter record for its hour.
	if _, err := c.RecordUsage(ctx, "k2", []mpsaas.Usage{{Customer: key, Dimension: "users", Quantity: 4, Time: time.Now().Add(-3 * time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	raw, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.ExecContext(ctx, `UPDATE usage SET state = 'sealed' WHERE state = 'pending' AND quantity = 4`); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	err = run(ctx, []string{"meter", "verify"}, getenv, &out, &errOut)
	if !errors.Is(err, errViolations) || !strings.Contains(out.String(), "sealed-without-record") || !strings.Contains(out.String(), key+"/users/") {
		t.Errorf("meter verify on a broken database: %v\n%s", err, out.String())
	}
	out.Reset()
	err = run(ctx, []string{"meter", "verify", "--json"}, getenv, &out, &errOut)
	var report struct{ Violations []mpsaas.MeterViolation }
	if jerr := json.Unmarshal(out.Bytes(), &report); jerr != nil || err == nil || len(report.Violations) != 1 || report.Violations[0].SubscriberKey != key || report.Violations[0].Got != 4 {
		t.Errorf("meter verify --json: %v, %v\n%s", err, jerr, out.String())
	}
	if err := run(ctx, []string{"meter", "run"}, envMap{"MPSAAS_DB": filepath.Join(t.TempDir(), "none.db")}.get, &out, &errOut); err == nil {
		t.Error("meter run on a missing database succeeded")
	}
	if err := run(ctx, []string{"meter", "run"}, envMap{"MPSAAS_DB": db}.get, &out, &errOut); err == nil || !strings.Contains(err.Error(), "no AWS configuration") {
		t.Errorf("meter run without AWS configuration: %v", err)
	}
}

type envMap map[string]string

func (m envMap) get(k string) string { return m[k] }

// TestDatabaseMetersToOneKindOfEndpoint (issue 9): a database that billed
// usage to the emulator refuses to meter to AWS (and the other way round),
// with an error that says what to do.
func TestDatabaseMetersToOneKindOfEndpoint(t *testing.T) {
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_USAGE_API_KEYS", testUsageKey, "MPSAAS_METER_INTERVAL", "1s")
	key, _ := registeredBuyer(t, app, demoLicenseProduct, "123456789012")
	ctx := context.Background()
	c := client.New(app.URL(), testUsageKey)
	if _, err := c.RecordUsage(ctx, "k1", []mpsaas.Usage{{Customer: key, Dimension: "users", Quantity: 3, Time: mpsaas.Hour(time.Now()).Add(-2 * time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	waitBilled(t, app, "123456789012", 3)
	env := envMap{"MPSAAS_DB": app.cfg.DB, "MPSAAS_LISTING": "subscriptions", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret",
		"MPSAAS_METERING_ENDPOINT": "https://metering.marketplace.us-east-1.amazonaws.com", "MPSAAS_ENTITLEMENT_ENDPOINT": "https://entitlement.marketplace.us-east-1.amazonaws.com"}
	var out, errOut bytes.Buffer
	err := run(ctx, []string{"meter", "run"}, env.get, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "has billed usage to an AWS Marketplace emulator") || !strings.Contains(err.Error(), "another MPSAAS_DB") {
		t.Errorf("meter run to AWS on an emulator database: %v", err)
	}
	// To an emulator again it meters as before.
	env = envMap{"MPSAAS_DB": app.cfg.DB, "MPSAAS_LISTING": "subscriptions", "MPSAAS_METERING_ENDPOINT": app.EmulatorURL(), "MPSAAS_ENTITLEMENT_ENDPOINT": app.EmulatorURL()}
	if err := run(ctx, []string{"meter", "run"}, env.get, &out, &errOut); err != nil {
		t.Errorf("meter run to the emulator: %v", err)
	}
}

func TestMeterStatusRefusesUnknownState(t *testing.T) {
	db := filepath.Join(t.TempDir(), "s.db")
	env := envMap{"MPSAAS_DB": db, "MPSAAS_EMULATOR": "off"}
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"meter", "status"}, env.get, &out, &errOut); err == nil {
		t.Fatal("status of a missing database succeeded")
	}
	// Create it, then ask for a state that does not exist.
	if d, err := sqlite.Open(context.Background(), db); err != nil {
		t.Fatal(err)
	} else {
		d.Close()
	}
	err := run(context.Background(), []string{"meter", "status", "--state", "bogus"}, env.get, &out, &errOut)
	if !errors.As(err, new(usageError)) || !strings.Contains(err.Error(), "billed, rejected, flagged, covered") {
		t.Errorf("--state bogus: %v, want a usage error listing the states", err)
	}
	if err := run(context.Background(), []string{"meter", "status", "--state", "flagged"}, env.get, &out, &errOut); err != nil {
		t.Errorf("--state flagged: %v", err)
	}
}

// TestUsageRecordCountsWhatItsHelpSays: the help of "mpsaas usage record"
// says a record sent again with the same --time is counted once, and that
// without --time every run is a new record. Both, through the CLI.
func TestUsageRecordCountsWhatItsHelpSays(t *testing.T) {
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_USAGE_API_KEYS", testUsageKey, "MPSAAS_METER_INTERVAL", "1h")
	key, _ := registeredBuyer(t, app, demoLicenseProduct, "123456789012")
	ctx := context.Background()
	env := envMap{"MPSAAS_URL": app.URL(), "MPSAAS_USAGE_API_KEY": testUsageKey}
	var help, errOut bytes.Buffer
	if err := run(ctx, []string{"usage", "--help"}, env.get, &help, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(help.String(), "Give --time (or --key)") || !strings.Contains(help.String(), "counted twice") {
		t.Fatalf("help does not say what is idempotent:\n%s", help.String())
	}
	send := func(args ...string) string {
		var out bytes.Buffer
		if err := run(ctx, append([]string{"usage", "record", "--customer", key, "--dimension", "users", "--quantity", "2"}, args...), env.get, &out, &errOut); err != nil {
			t.Fatalf("usage record %v: %v %s", args, err, errOut.String())
		}
		return out.String()
	}
	at := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	if a, b := send("--time", at), send("--time", at); !strings.HasPrefix(a, "recorded") || !strings.HasPrefix(b, "already recorded") {
		t.Errorf("with --time: %q then %q; want the second counted once", a, b)
	}
	if a, b := send(), send(); !strings.HasPrefix(a, "recorded") || !strings.HasPrefix(b, "recorded") {
		t.Errorf("without --time: %q then %q; want two records, as the help says", a, b)
	}
	c := client.New(app.URL(), testUsageKey)
	entries, err := c.Ledger(ctx, mpsaas.LedgerFilter{SubscriberKey: key})
	if err != nil || len(entries) != 3 {
		t.Errorf("ledger = %d entries, %v; want 3", len(entries), err)
	}
}

// TestMeterSubcommandHelpShowsItsOwnFlags (issue 9): "meter status -h"
// lists its flags, not the ~35 of serve.
func TestMeterSubcommandHelpShowsItsOwnFlags(t *testing.T) {
	for sub, want := range map[string]string{"status": "-state", "run": "-metering-endpoint", "replay": "-id", "verify": "-limit"} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), []string{"meter", sub, "-h"}, envMap{}.get, &out, &errOut)
		help := errOut.String() + out.String()
		if !errors.Is(err, flag.ErrHelp) || !strings.Contains(help, want) || !strings.Contains(help, "-db") || strings.Contains(help, "-smtp-addr") || strings.Contains(help, "-webhook-url") {
			t.Errorf("meter %s -h: %v\n%s", sub, err, help)
		}
	}
}

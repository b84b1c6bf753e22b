package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/marketplace"
	"github.com/mpsaas/mpsaas/reconcile"
	"github.com/mpsaas/mpsaas/sqlite"
	"github.com/mpsaas/mpsaas/subscription"
)

// TestReconcileRepairsLostNotifications (issue 11): notifications lost on
// the way (the emulator's drop control) leave one buyer active in mpsaas
// whose agreement AWS cancelled, and one whose agreement started without
// mpsaas hearing of it; a third buyer never registered. `mpsaas reconcile`
// reports all three and changes nothing; with --apply it records the two
// missing events, so access is revoked and granted through the outbox as
// for a notification; a second run finds only the unregistered buyer.
func TestReconcileRepairsLostNotifications(t *testing.T) {
	ctx := context.Background()
	em := emulator.New(emulator.DefaultConfig())
	srv := httptest.NewServer(em.Handler())
	t.Cleanup(srv.Close)
	if _, err := em.AddProduct(emulator.Product{Code: "rec-prod", Type: emulator.ProductSubscription, LicenseBased: true, Dimensions: []emulator.Dimension{{Name: "users"}}}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "rec.db")
	db, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	mp := marketplace.New(aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("a", "b", "")},
		marketplace.Options{MeteringEndpoint: srv.URL, EntitlementEndpoint: srv.URL, AgreementEndpoint: srv.URL})
	subs := &subscription.Service{Store: db, Marketplace: mp, Listing: mpsaas.ListingSubscriptions, ProductCodes: []string{"rec-prod"}}
	seen := 0
	deliver := func() {
		for _, n := range em.Notifications(seen) {
			seen = n.Seq
			if err := subs.HandleMessage(ctx, n.Body); err != nil {
				t.Fatal(err)
			}
		}
	}
	buyer := func(drop bool) (*mpsaas.Subscriber, emulator.SubscribeResult) {
		b, err := em.AddBuyer(emulator.Buyer{})
		if err != nil {
			t.Fatal(err)
		}
		if drop {
			if err := em.DropNotifications(10, ""); err != nil {
				t.Fatal(err)
			}
		}
		res, err := em.Subscribe(emulator.SubscribeOptions{StartedAt: em.Clock.Now().Add(-time.Hour), ProductCode: "rec-prod", BuyerAccountID: b.AccountID})
		if err != nil {
			t.Fatal(err)
		}
		_ = em.DropNotifications(0, "")
		deliver()
		sub, err := subs.RegisterWithToken(ctx, res.Token, mpsaas.Contact{CompanyName: "Acme", ContactPerson: "Ann", ContactPhone: "+1 555 0100", ContactEmail: "ann@acme.example"})
		if err != nil {
			t.Fatal(err)
		}
		return sub, res
	}
	cancelled, cres := buyer(false) // active, then cancels while notifications are lost
	started, _ := buyer(true)       // its subscription's start is lost
	if started.Status == mpsaas.StatusActive || cancelled.Status != mpsaas.StatusActive {
		t.Fatalf("setup: statuses %s and %s", cancelled.Status, started.Status)
	}
	if err := em.DropNotifications(10, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := em.Cancel(cres.Subscription.AgreementID); err != nil {
		t.Fatal(err)
	}
	deliver()
	b3, _ := em.AddBuyer(emulator.Buyer{})
	if _, err := em.Subscribe(emulator.SubscribeOptions{ProductCode: "rec-prod", BuyerAccountID: b3.AccountID}); err != nil {
		t.Fatal(err)
	}
	deliver()
	env := map[string]string{"MPSAAS_DB": path, "MPSAAS_PRODUCT_CODES": "rec-prod", "MPSAAS_LISTING": "subscriptions",
		"MPSAAS_AGREEMENT_ENDPOINT": srv.URL, "MPSAAS_ENTITLEMENT_ENDPOINT": srv.URL,
		"MPSAAS_WEBHOOK_URL": "http://127.0.0.1:9/hook", "MPSAAS_WEBHOOK_SECRET": strings.Repeat("w", 32)}
	reconcileCLI := func(args ...string) reconcile.Report {
		t.Helper()
		var out, errOut strings.Builder
		if err := run(ctx, append([]string{"reconcile", "--json"}, args...), func(k string) string { return env[k] }, &out, &errOut); err != nil {
			t.Fatalf("reconcile %v: %v\n%s", args, err, errOut.String())
		}
		var rep reconcile.Report
		if err := json.Unmarshal([]byte(out.String()), &rep); err != nil {
			t.Fatalf("%v: %s", err, out.String())
		}
		return rep
	}
	kinds := func(rep reconcile.Report) map[string]string {
		out := map[string]string{}
		for _, d := range rep.Drift {
			out[d.Kind] = d.Subscriber + "/" + d.AccountID
		}
		return out
	}
	dry := reconcileCLI()
	want := map[string]string{reconcile.EndedInAWS: cancelled.Key + "/" + cancelled.CustomerAWSAccountID, reconcile.ActiveInAWS: started.Key + "/" + started.CustomerAWSAccountID,
		reconcile.NotRegistered: "/" + b3.AccountID}
	if got := kinds(dry); len(got) != 3 || got[reconcile.EndedInAWS] != want[reconcile.EndedInAWS] || got[reconcile.ActiveInAWS] != want[reconcile.ActiveInAWS] || got[reconcile.NotRegistered] != want[reconcile.NotRegistered] {
		t.Fatalf("dry run drift %v, want %v (%+v)", got, want, dry)
	}
	if dry.Buyers != 2 || dry.Agreements != 3 || dry.Applied {
		t.Errorf("dry run = %+v", dry)
	}
	for _, k := range []string{cancelled.Key, started.Key} {
		if s, _ := db.GetSubscriber(ctx, k); s.Status != map[string]mpsaas.Status{cancelled.Key: mpsaas.StatusActive, started.Key: started.Status}[k] {
			t.Errorf("the dry run changed %s to %s", k, s.Status)
		}
	}
	applied := reconcileCLI("--apply")
	for _, d := range applied.Drift {
		if d.Fix != "" && !d.Applied {
			t.Errorf("not repaired: %+v", d)
		}
	}
	if s, _ := db.GetSubscriber(ctx, started.Key); s.Status != mpsaas.StatusActive || s.Access != mpsaas.AccessGranted {
		t.Errorf("after --apply, the started buyer is %s with access %s; want active, granted", s.Status, s.Access)
	}
	if s, _ := db.GetSubscriber(ctx, cancelled.Key); s.Status == mpsaas.StatusActive || s.Access == mpsaas.AccessGranted {
		t.Errorf("after --apply, the cancelled buyer is %s with access %s; want it ending", s.Status, s.Access)
	}
	// The access changes wait in the outbox like any other.
	due, err := db.DueMessages(ctx, time.Now().Add(time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	changed := map[string]bool{}
	for _, m := range due {
		var c mpsaas.AccessChange
		if err := json.Unmarshal(m.Payload, &c); err != nil {
			t.Fatal(err)
		}
		changed[c.Subscriber.Key] = true
	}
	if !changed[started.Key] || !changed[cancelled.Key] {
		t.Errorf("outbox holds changes for %v; want both repaired buyers", changed)
	}
	again := reconcileCLI("--apply")
	if got := kinds(again); len(got) != 1 || got[reconcile.NotRegistered] == "" {
		t.Errorf("second run drift %v, want only the unregistered buyer", got)
	}
	// The text report and the flags' validation.
	var out strings.Builder
	if err := run(ctx, []string{"reconcile"}, func(k string) string { return env[k] }, &out, io.Discard); err != nil || !strings.Contains(out.String(), "not-registered") {
		t.Errorf("text report: %v\n%s", err, out.String())
	}
	if err := run(ctx, []string{"reconcile", "--product-resources", "other=prod-1"}, func(k string) string { return env[k] }, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "MPSAAS_PRODUCT_RESOURCES") {
		t.Errorf("--product-resources of an unknown product: %v", err)
	}
}

// TestServeReconcilesOnSchedule (issue 11): serve reconciles on its own
// schedule. A buyer cancels while every notification is lost (the
// emulator's drop control); the scheduled reconciliation records the end,
// and the seller's webhook hears of it as of a notification.
func TestServeReconcilesOnSchedule(t *testing.T) {
	first, every := reconcileFirst, reconcileEvery
	reconcileFirst, reconcileEvery = 100*time.Millisecond, func(time.Duration) time.Duration { return 100 * time.Millisecond }
	t.Cleanup(func() { reconcileFirst, reconcileEvery = first, every })
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_RECONCILE_INTERVAL", "1h")
	client := &http.Client{}
	page := postForm(t, client, app.EmulatorURL()+"/emulator/ui/subscribe", url.Values{"productCode": {demoLicenseProduct}, "buyerAccountId": {"123456789012"}}, 200)
	action, fields := parseForm(t, page, "setup-form")
	page = postForm(t, client, action, fields, 200)
	_, reg := parseForm(t, page, "register-form")
	postForm(t, client, app.URL()+"/register", url.Values{"session": reg["session"], "companyName": {journeyContact.CompanyName},
		"contactPerson": {journeyContact.ContactPerson}, "contactPhone": {journeyContact.ContactPhone}, "contactEmail": {journeyContact.ContactEmail}}, 200)
	app.sink.waitFor(t, demoLicenseProduct, mpsaas.AccessGranted)
	if err := app.em.DropNotifications(100, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := app.em.Cancel(app.agreement(t, demoLicenseProduct).AgreementID); err != nil {
		t.Fatal(err)
	}
	change := app.sink.wait(t, "an access change after the lost cancellation", func(c mpsaas.AccessChange) bool {
		return c.Subscriber.ProductCode == demoLicenseProduct && c.Access != mpsaas.AccessGranted
	})
	if app.em.Dropped() == 0 {
		t.Error("no notification was dropped: the test did not create drift")
	}
	if !strings.Contains(app.logs.String(), "drift") {
		t.Errorf("the log does not report the drift:\n%s", app.logs.String())
	}
	t.Logf("repaired: %s (%s)", change.Access, change.Event)
}

package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/subscription"
)

// TestReconcileThroughLambda (issue 11): the reconcile function's
// scheduled handler, on DynamoDB Local, finds a buyer whose cancellation
// never arrived (the emulator dropped every notification), records the
// end, reports the drift as a metric, and finds nothing the next day.
func TestReconcileThroughLambda(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, emulator.Product{Code: "rec-license", Type: emulator.ProductSubscription, LicenseBased: true, Dimensions: []emulator.Dimension{{Name: "users"}}})
	f.env["MPSAAS_PRODUCT_CODES"] = "rec-license"
	app := f.build(t, "reconcile")
	var emf lockedBuffer
	app.metrics.W = &emf
	subs := &subscription.Service{Store: f.store, Marketplace: app.svc.Marketplace, Listing: mpsaas.ListingSubscriptions}
	b, err := f.em.AddBuyer(emulator.Buyer{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.em.Subscribe(emulator.SubscribeOptions{StartedAt: f.em.Clock.Now().Add(-time.Hour), ProductCode: "rec-license", BuyerAccountID: b.AccountID})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range f.em.Notifications(0) {
		if err := subs.HandleMessage(ctx, n.Body); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := subs.RegisterWithToken(ctx, res.Token, mpsaas.Contact{CompanyName: "C", ContactPerson: "P", ContactPhone: "+1 555 0100", ContactEmail: "p@c.example"})
	if err != nil || sub.Status != mpsaas.StatusActive {
		t.Fatalf("register = %+v, %v", sub, err)
	}
	seen := len(f.em.Notifications(0))
	if err := f.em.DropNotifications(100, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := f.em.Cancel(res.Subscription.AgreementID); err != nil {
		t.Fatal(err)
	}
	if n := len(f.em.Notifications(0)); n != seen {
		t.Fatalf("%d notifications got through; the test needs them lost", n-seen)
	}
	handler := app.handler().(func(context.Context, events.EventBridgeEvent) error)
	for day := range 2 {
		if err := handler(ctx, events.EventBridgeEvent{DetailType: "Scheduled Event"}); err != nil {
			t.Fatalf("day %d: %v", day, err)
		}
	}
	after, err := f.store.GetSubscriber(ctx, sub.Key)
	if err != nil {
		t.Fatal(err)
	}
	if after.Status == mpsaas.StatusActive || after.Access == mpsaas.AccessGranted {
		t.Errorf("after reconciliation the buyer is %s with access %s; want the cancellation recorded", after.Status, after.Access)
	}
	var drift []int64
	for _, line := range strings.Split(strings.TrimSpace(emf.String()), "\n") {
		var m struct {
			Function       string
			ReconcileDrift *int64
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil || m.Function != "reconcile" || m.ReconcileDrift == nil {
			t.Fatalf("EMF line %q: %v", line, err)
		}
		drift = append(drift, *m.ReconcileDrift)
	}
	if len(drift) != 2 || drift[0] != 1 || drift[1] != 0 {
		t.Errorf("ReconcileDrift per day = %v, want [1 0]", drift)
	}
}

package subscription_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/internal/testenv"
	"github.com/mpsaas/mpsaas/sqlite"
	"github.com/mpsaas/mpsaas/subscription"
)

type harness struct {
	em  *emulator.Server
	db  *sqlite.DB
	svc *subscription.Service
}

var start = time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)

func newHarness(t *testing.T, listing string, products ...emulator.Product) *harness {
	t.Helper()
	em, db, mp := testenv.Local(t, start, products...)
	var codes []string
	for _, p := range products {
		codes = append(codes, p.Code)
	}
	return &harness{em: em, db: db, svc: &subscription.Service{
		Store: db, Marketplace: mp, Agreements: mp, Clock: mpsaas.ClockFunc(em.Clock.Now),
		Listing: listing, ProductCodes: codes, Channels: []string{mpsaas.ChannelWebhook},
	}}
}

func (h *harness) buyer(t *testing.T) string {
	t.Helper()
	b, err := h.em.AddBuyer(emulator.Buyer{})
	if err != nil {
		t.Fatal(err)
	}
	return b.AccountID
}

// collect returns every notification emitted after seq.
func (h *harness) collect(after int) [][]byte {
	var out [][]byte
	for _, n := range h.em.Notifications(after) {
		out = append(out, n.Body)
	}
	return out
}

func (h *harness) deliver(t *testing.T, bodies [][]byte) {
	t.Helper()
	for _, b := range bodies {
		if err := h.svc.HandleMessage(context.Background(), b); err != nil {
			t.Fatalf("HandleMessage(%s): %v", b, err)
		}
	}
}

// changes returns the queued access changes, oldest first.
func (h *harness) changes(t *testing.T) []mpsaas.AccessChange {
	t.Helper()
	msgs, err := h.db.DueMessages(context.Background(), start.Add(1000*time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []mpsaas.AccessChange
	for _, m := range msgs {
		var c mpsaas.AccessChange
		if err := json.Unmarshal(m.Payload, &c); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func accesses(cs []mpsaas.AccessChange) []mpsaas.Access {
	var out []mpsaas.Access
	for _, c := range cs {
		out = append(out, c.Access)
	}
	return out
}

var contact = mpsaas.Contact{CompanyName: "Acme", ContactPerson: "Ann Lee", ContactPhone: "+1 206 555 0100", ContactEmail: "ann@acme.example"}

func subProduct(code string, licenseBased bool) emulator.Product {
	return emulator.Product{Code: code, Type: emulator.ProductSubscription, LicenseBased: licenseBased, Dimensions: []emulator.Dimension{{Name: "users"}}}
}

func TestEventOrderDoesNotMatter(t *testing.T) {
	for _, licenseBased := range []bool{false, true} {
		name := map[bool]string{false: "CustomerIdentifier", true: "LicenseArn"}[licenseBased]
		for _, order := range []string{"in order", "reversed", "twice", "before registration"} {
			t.Run(name+"/"+order, func(t *testing.T) {
				ctx := context.Background()
				h := newHarness(t, mpsaas.ListingSubscriptions, subProduct("prod1", licenseBased))
				res, err := h.em.Subscribe(emulator.SubscribeOptions{ProductCode: "prod1", BuyerAccountID: h.buyer(t), FreeTrial: true})
				if err != nil {
					t.Fatal(err)
				}
				subscribeMsgs := h.collect(0)
				seq := len(h.em.Notifications(0))
				if _, err := h.em.Cancel(res.Subscription.AgreementID); err != nil {
					t.Fatal(err)
				}
				h.em.Clock.Advance(time.Hour)
				h.em.RunDue()
				cancelMsgs := h.collect(seq)
				all := append(slices.Clone(subscribeMsgs), cancelMsgs...)

				var key string
				register := func() {
					sub, err := h.svc.Resolve(ctx, res.Token, subscription.ResolveOptions{FreeTrial: true})
					if err != nil {
						t.Fatal(err)
					}
					if _, err := h.svc.Register(ctx, sub.Key, contact); err != nil {
						t.Fatal(err)
					}
					key = sub.Key
				}
				switch order {
				case "in order":
					h.deliver(t, subscribeMsgs)
					register()
					h.deliver(t, cancelMsgs)
				case "reversed":
					register()
					rev := slices.Clone(all)
					slices.Reverse(rev)
					h.deliver(t, rev)
				case "twice":
					register()
					h.deliver(t, all)
					h.deliver(t, all)
				case "before registration":
					h.deliver(t, all)
					register()
				}
				// The final metering window (an hour) has passed: on the
				// EventBridge path no event says so, the scheduled sweep does.
				h.em.Clock.Advance(time.Minute)
				if _, err := h.svc.EndFinalWindows(ctx); err != nil {
					t.Fatal(err)
				}
				sub, err := h.svc.Get(ctx, key)
				if err != nil {
					t.Fatal(err)
				}
				// SNS says unsubscribe-success; EventBridge only starts the
				// window (License Deprovisioned), so the status stays.
				wantStatus := mpsaas.StatusCancelled
				if licenseBased {
					wantStatus = mpsaas.StatusUnsubscribePending
				}
				if sub.Status != wantStatus || !sub.FreeTrial {
					t.Errorf("final state = %s (free trial %v), want %s with free trial", sub.Status, sub.FreeTrial, wantStatus)
				}
				if licenseBased && sub.CustomerIdentifier != "" {
					t.Errorf("license-based subscriber has CustomerIdentifier %q", sub.CustomerIdentifier)
				}
				// A buyer who was active when their events arrived is granted,
				// told of the pending cancellation, then revoked. A buyer whose
				// cancellation was known before any grant never had access:
				// nothing is granted and nothing needs revoking.
				want := []mpsaas.Access{mpsaas.AccessGranted, mpsaas.AccessPendingCancellation, mpsaas.AccessRevoked}
				if order == "reversed" || order == "before registration" {
					want = nil
				}
				if got := accesses(h.changes(t)); !slices.Equal(got, want) {
					t.Errorf("access changes = %v, want %v", got, want)
				}
				keys := map[string]bool{}
				for _, c := range h.changes(t) {
					if keys[c.IdempotencyKey] {
						t.Errorf("idempotency key %s queued twice", c.IdempotencyKey)
					}
					keys[c.IdempotencyKey] = true
				}
			})
		}
	}
}

func TestRegistrationIsIdempotent(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, mpsaas.ListingSubscriptions, subProduct("prod1", false))
	res, err := h.em.Subscribe(emulator.SubscribeOptions{ProductCode: "prod1", BuyerAccountID: h.buyer(t)})
	if err != nil {
		t.Fatal(err)
	}
	h.deliver(t, h.collect(0))
	a, err := h.svc.RegisterWithToken(ctx, res.Token, contact)
	if err != nil {
		t.Fatal(err)
	}
	c2 := contact
	c2.ContactPhone = "+1 206 555 0199"
	b, err := h.svc.RegisterWithToken(ctx, res.Token, c2)
	if err != nil {
		t.Fatal(err)
	}
	// A new token for the same agreement finds the same subscriber.
	again, err := h.em.NewToken(res.Subscription.AgreementID)
	if err != nil {
		t.Fatal(err)
	}
	c, err := h.svc.Resolve(ctx, again.Token, subscription.ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Key != b.Key || b.Key != c.Key || !c.Registered() || c.ContactPhone != c2.ContactPhone {
		t.Errorf("keys %s %s %s, registered %v, phone %q: want one registered subscriber with the updated phone", a.Key, b.Key, c.Key, c.Registered(), c.ContactPhone)
	}
	// One grant, then the new phone number as a contact.updated change
	// (access unchanged) on the same channels.
	var got []string
	for _, ch := range h.changes(t) {
		got = append(got, ch.Event+"/"+string(ch.Access)+"/"+ch.Subscriber.ContactPhone)
	}
	if want := []string{"access.changed/granted/" + contact.ContactPhone, "contact.updated/granted/" + c2.ContactPhone}; !slices.Equal(got, want) {
		t.Errorf("changes = %v, want %v", got, want)
	}
}

func TestContractEntitlements(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, mpsaas.ListingContracts, emulator.Product{Code: "cprod", Type: emulator.ProductContract, Dimensions: []emulator.Dimension{{Name: "seats"}, {Name: "tier_pro"}}})
	res, err := h.em.Subscribe(emulator.SubscribeOptions{ProductCode: "cprod", BuyerAccountID: h.buyer(t), Entitlements: map[string]int32{"seats": 5}})
	if err != nil {
		t.Fatal(err)
	}
	// Registration before any notification: the contract's entitlements confirm it.
	sub, err := h.svc.RegisterWithToken(ctx, res.Token, contact)
	if err != nil {
		t.Fatal(err)
	}
	if len(sub.Entitlements) != 1 || sub.Entitlements[0].Value != int64(5) || sub.EntitlementsRaw == "" {
		t.Fatalf("entitlements = %+v raw %q, want seats=5 and the raw response", sub.Entitlements, sub.EntitlementsRaw)
	}
	seq := len(h.em.Notifications(0))
	h.deliver(t, h.collect(0))
	if _, err := h.em.SetEntitlements(res.Subscription.AgreementID, map[string]int32{"seats": 20, "tier_pro": 1}); err != nil {
		t.Fatal(err)
	}
	h.deliver(t, h.collect(seq))
	sub, _ = h.svc.Get(ctx, sub.Key)
	if len(sub.Entitlements) != 2 {
		t.Errorf("entitlements after upgrade = %+v, want 2", sub.Entitlements)
	}
	seq = len(h.em.Notifications(0))
	if _, err := h.em.Expire(res.Subscription.AgreementID); err != nil {
		t.Fatal(err)
	}
	h.deliver(t, h.collect(seq))
	got := accesses(h.changes(t))
	want := []mpsaas.Access{mpsaas.AccessGranted, mpsaas.AccessGranted, mpsaas.AccessRevoked}
	if !slices.Equal(got, want) {
		t.Errorf("access changes = %v, want %v (grant, upgrade, expiry)", got, want)
	}
	cs := h.changes(t)
	if n := len(cs[1].Subscriber.Entitlements); n != 2 {
		t.Errorf("upgrade change carries %d entitlements, want 2", n)
	}
}

func TestResolveErrors(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, mpsaas.ListingSubscriptions, subProduct("mine", false))
	if _, err := h.em.AddProduct(subProduct("theirs", false)); err != nil {
		t.Fatal(err)
	}
	other, err := h.em.Subscribe(emulator.SubscribeOptions{ProductCode: "theirs", BuyerAccountID: h.buyer(t)})
	if err != nil {
		t.Fatal(err)
	}
	mine, err := h.em.Subscribe(emulator.SubscribeOptions{ProductCode: "mine", BuyerAccountID: h.buyer(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, token string
		advance     time.Duration
	}{
		{"empty token", "", 0},
		{"unknown token", "bogus", 0},
		{"token for another product", other.Token, 0},
		{"expired token", mine.Token, 5 * time.Hour},
	} {
		h.em.Clock.Advance(tt.advance)
		_, err := h.svc.Resolve(ctx, tt.token, subscription.ResolveOptions{})
		if mpsaas.ErrorCode(err) != mpsaas.EINVALID {
			t.Errorf("%s: error = %v, want EINVALID", tt.name, err)
		}
	}
	if got := h.changes(t); len(got) != 0 {
		t.Errorf("bad tokens queued %d access changes", len(got))
	}
	if _, err := h.svc.Register(ctx, "nobody", contact); mpsaas.ErrorCode(err) != mpsaas.ENOTFOUND {
		t.Errorf("Register(unknown key) = %v, want ENOTFOUND", err)
	}
}

func TestMalformedMessagesChangeNothing(t *testing.T) {
	h := newHarness(t, mpsaas.ListingSubscriptions, subProduct("prod1", false))
	for _, body := range []string{`nope`, `{}`, `{"action":"subscribe-success"}`, `{"Type":"Notification","MessageId":"x","Timestamp":"bad","Message":"{}"}`} {
		if err := h.svc.HandleMessage(context.Background(), []byte(body)); mpsaas.ErrorCode(err) != mpsaas.EINVALID {
			t.Errorf("HandleMessage(%s) = %v, want EINVALID", body, err)
		}
	}
	evs, _ := h.db.EventsFor(context.Background(), mpsaas.Identity{CustomerIdentifier: "x"})
	if len(evs) != 0 {
		t.Errorf("events stored: %v", evs)
	}
}

// TestOneAccessTimeline (issue 14, item 4): SNS alone, EventBridge alone and
// both together give the same access changes for the same buyer actions. A
// cancellation keeps access through the final metering window, then
// revokes it; an expiring contract sends one change.
func TestOneAccessTimeline(t *testing.T) {
	feeds := map[string]func(emulator.Notification) bool{
		"sns":         func(n emulator.Notification) bool { return n.Channel != emulator.ChannelEventBridge },
		"eventbridge": func(n emulator.Notification) bool { return n.Channel == emulator.ChannelEventBridge },
		"both":        func(emulator.Notification) bool { return true },
	}
	for feed, keep := range feeds {
		t.Run("cancel/"+feed, func(t *testing.T) {
			ctx := context.Background()
			h := newHarness(t, mpsaas.ListingSubscriptions, subProduct("p", false))
			seen := 0
			deliver := func() {
				for _, n := range h.em.Notifications(seen) {
					if keep(n) {
						h.deliver(t, [][]byte{n.Body})
					}
				}
				seen = len(h.em.Notifications(0))
			}
			res, err := h.em.Subscribe(emulator.SubscribeOptions{ProductCode: "p", BuyerAccountID: h.buyer(t)})
			if err != nil {
				t.Fatal(err)
			}
			deliver()
			if _, err := h.svc.RegisterWithToken(ctx, res.Token, contact); err != nil {
				t.Fatal(err)
			}
			if _, err := h.em.Cancel(res.Subscription.AgreementID); err != nil {
				t.Fatal(err)
			}
			deliver()
			h.em.Clock.Advance(30 * time.Minute) // within the window: nothing changes
			h.em.RunDue()
			deliver()
			if _, err := h.svc.EndFinalWindows(ctx); err != nil {
				t.Fatal(err)
			}
			if got := accesses(h.changes(t)); fmt.Sprint(got) != "[granted pending-cancellation]" {
				t.Errorf("within the final window: %v", got)
			}
			h.em.Clock.Advance(31 * time.Minute) // the window has ended
			h.em.RunDue()
			deliver()
			if _, err := h.svc.EndFinalWindows(ctx); err != nil {
				t.Fatal(err)
			}
			if got := accesses(h.changes(t)); fmt.Sprint(got) != "[granted pending-cancellation revoked]" {
				t.Errorf("access changes = %v, want [granted pending-cancellation revoked]", got)
			}
		})
		t.Run("expire/"+feed, func(t *testing.T) {
			ctx := context.Background()
			h := newHarness(t, mpsaas.ListingContracts, emulator.Product{Code: "c", Type: emulator.ProductContract, Dimensions: []emulator.Dimension{{Name: "seats"}}})
			res, err := h.em.Subscribe(emulator.SubscribeOptions{ProductCode: "c", BuyerAccountID: h.buyer(t), Entitlements: map[string]int32{"seats": 5}})
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range h.em.Notifications(0) {
				if keep(n) {
					h.deliver(t, [][]byte{n.Body})
				}
			}
			if _, err := h.svc.RegisterWithToken(ctx, res.Token, contact); err != nil {
				t.Fatal(err)
			}
			seq := len(h.em.Notifications(0))
			if _, err := h.em.Expire(res.Subscription.AgreementID); err != nil {
				t.Fatal(err)
			}
			for _, n := range h.em.Notifications(seq) {
				if keep(n) {
					h.deliver(t, [][]byte{n.Body})
				}
			}
			h.em.Clock.Advance(2 * time.Hour)
			if _, err := h.svc.EndFinalWindows(ctx); err != nil {
				t.Fatal(err)
			}
			if got := accesses(h.changes(t)); fmt.Sprint(got) != "[granted revoked]" {
				t.Errorf("access changes = %v, want [granted revoked]: one change at expiry", got)
			}
		})
	}
}

package mpsaas_test

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func ev(id string, kind mpsaas.EventKind, at time.Duration) mpsaas.Event {
	return mpsaas.Event{ID: id, Kind: kind, Time: t0.Add(at)}
}

func endedAs(id, status string, at time.Duration) mpsaas.Event {
	e := ev(id, mpsaas.EventAgreementEnded, at)
	e.AgreementStatus = status
	return e
}

func TestFold(t *testing.T) {
	tests := []struct {
		name   string
		events []mpsaas.Event
		want   mpsaas.Status
	}{
		{"no events", nil, mpsaas.StatusPending},
		{"subscribed", []mpsaas.Event{ev("a", mpsaas.EventSubscribeSuccess, 0)}, mpsaas.StatusActive},
		{"entitlement update alone keeps pending", []mpsaas.Event{ev("a", mpsaas.EventEntitlementUpdated, 0)}, mpsaas.StatusPending},
		{"cancelling", []mpsaas.Event{ev("a", mpsaas.EventSubscribeSuccess, 0), ev("b", mpsaas.EventUnsubscribePending, time.Minute)}, mpsaas.StatusUnsubscribePending},
		{"cancelled", []mpsaas.Event{ev("a", mpsaas.EventSubscribeSuccess, 0), ev("b", mpsaas.EventUnsubscribePending, time.Minute), ev("c", mpsaas.EventUnsubscribeSuccess, time.Hour)}, mpsaas.StatusCancelled},
		{"pending after success is still cancelled", []mpsaas.Event{ev("c", mpsaas.EventUnsubscribeSuccess, time.Hour), ev("b", mpsaas.EventUnsubscribePending, 2*time.Hour)}, mpsaas.StatusCancelled},
		{"failed payment", []mpsaas.Event{ev("a", mpsaas.EventSubscribeSuccess, 0), ev("b", mpsaas.EventSubscribeFail, time.Minute)}, mpsaas.StatusFailed},
		{"resubscribed after cancel", []mpsaas.Event{ev("a", mpsaas.EventSubscribeSuccess, 0), ev("c", mpsaas.EventUnsubscribeSuccess, time.Hour), ev("d", mpsaas.EventSubscribeSuccess, 2*time.Hour)}, mpsaas.StatusActive},
		{"same-second tie: end after start", []mpsaas.Event{ev("z", mpsaas.EventLicenseDeprovisioned, 0), ev("a", mpsaas.EventAgreementCreated, 0)}, mpsaas.StatusUnsubscribePending},
		{"EventBridge cancel: the final window, like SNS", []mpsaas.Event{ev("a", mpsaas.EventAgreementCreated, 0), endedAs("b", "CANCELLED", time.Hour), ev("c", mpsaas.EventLicenseDeprovisioned, time.Hour)}, mpsaas.StatusUnsubscribePending},
		{"EventBridge expiry ends at once", []mpsaas.Event{ev("a", mpsaas.EventAgreementCreated, 0), endedAs("b", "EXPIRED", time.Hour), ev("c", mpsaas.EventLicenseDeprovisioned, time.Hour)}, mpsaas.StatusCancelled},
		{"EventBridge termination fails", []mpsaas.Event{ev("a", mpsaas.EventAgreementCreated, 0), endedAs("b", "TERMINATED", time.Hour), ev("c", mpsaas.EventLicenseDeprovisioned, time.Hour)}, mpsaas.StatusFailed},
		{"both feeds: cancel then success", []mpsaas.Event{ev("a", mpsaas.EventSubscribeSuccess, 0), ev("b", mpsaas.EventUnsubscribePending, time.Hour), endedAs("c", "CANCELLED", time.Hour), ev("d", mpsaas.EventLicenseDeprovisioned, time.Hour), ev("e", mpsaas.EventUnsubscribeSuccess, 2*time.Hour)}, mpsaas.StatusCancelled},
		{"EventBridge lifecycle", []mpsaas.Event{ev("a", mpsaas.EventAgreementCreated, 0), ev("b", mpsaas.EventAgreementAmended, time.Hour), ev("c", mpsaas.EventAgreementEnded, 2*time.Hour)}, mpsaas.StatusUnsubscribePending},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mpsaas.Fold(tt.events).Status; got != tt.want {
				t.Errorf("Fold = %s, want %s", got, tt.want)
			}
			// Any order and any duplication folds to the same state.
			for i := 0; i < 20; i++ {
				shuffled := append([]mpsaas.Event{}, tt.events...)
				shuffled = append(shuffled, tt.events...)
				rand.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
				if got := mpsaas.Fold(shuffled).Status; got != tt.want {
					t.Fatalf("Fold(shuffled %v) = %s, want %s", shuffled, got, tt.want)
				}
			}
		})
	}
}

func TestDecideAccess(t *testing.T) {
	valid := []mpsaas.Entitlement{{Dimension: "seats", Value: int64(5), ExpirationDate: t0.Add(24 * time.Hour)}}
	expired := []mpsaas.Entitlement{{Dimension: "seats", Value: int64(5), ExpirationDate: t0.Add(-time.Hour)}}
	tests := []struct {
		name    string
		sub     mpsaas.Subscriber
		listing string
		want    mpsaas.Access
	}{
		{"unregistered gets nothing", mpsaas.Subscriber{State: mpsaas.State{Status: mpsaas.StatusActive}}, mpsaas.ListingSubscriptions, mpsaas.AccessNone},
		{"active subscription", mpsaas.Subscriber{RegisteredAt: t0, State: mpsaas.State{Status: mpsaas.StatusActive}}, mpsaas.ListingSubscriptions, mpsaas.AccessGranted},
		{"pending subscription waits", mpsaas.Subscriber{RegisteredAt: t0, State: mpsaas.State{Status: mpsaas.StatusPending}}, mpsaas.ListingSubscriptions, mpsaas.AccessNone},
		{"pending contract with entitlements", mpsaas.Subscriber{RegisteredAt: t0, State: mpsaas.State{Status: mpsaas.StatusPending}, Entitlements: valid, EntitlementsCheckedAt: t0}, mpsaas.ListingContracts, mpsaas.AccessGranted},
		{"active contract expired", mpsaas.Subscriber{RegisteredAt: t0, State: mpsaas.State{Status: mpsaas.StatusActive}, Entitlements: expired, EntitlementsCheckedAt: t0, Access: mpsaas.AccessGranted}, mpsaas.ListingContracts, mpsaas.AccessRevoked},
		{"cancelling", mpsaas.Subscriber{RegisteredAt: t0, State: mpsaas.State{Status: mpsaas.StatusUnsubscribePending}, Access: mpsaas.AccessGranted}, mpsaas.ListingSubscriptions, mpsaas.AccessPendingCancellation},
		{"cancelling within the final window", mpsaas.Subscriber{RegisteredAt: t0, State: mpsaas.State{Status: mpsaas.StatusUnsubscribePending, FinalWindowFrom: t0.Add(-59 * time.Minute)}, Access: mpsaas.AccessPendingCancellation}, mpsaas.ListingSubscriptions, mpsaas.AccessPendingCancellation},
		{"cancelling after the final window", mpsaas.Subscriber{RegisteredAt: t0, State: mpsaas.State{Status: mpsaas.StatusUnsubscribePending, FinalWindowFrom: t0.Add(-time.Hour)}, Access: mpsaas.AccessPendingCancellation}, mpsaas.ListingSubscriptions, mpsaas.AccessRevoked},
		{"cancelled after grant", mpsaas.Subscriber{RegisteredAt: t0, State: mpsaas.State{Status: mpsaas.StatusCancelled}, Access: mpsaas.AccessGranted}, mpsaas.ListingSubscriptions, mpsaas.AccessRevoked},
		{"cancelled never granted", mpsaas.Subscriber{RegisteredAt: t0, State: mpsaas.State{Status: mpsaas.StatusCancelled}}, mpsaas.ListingSubscriptions, mpsaas.AccessNone},
		{"failed after grant", mpsaas.Subscriber{RegisteredAt: t0, State: mpsaas.State{Status: mpsaas.StatusFailed}, Access: mpsaas.AccessGranted}, mpsaas.ListingSubscriptions, mpsaas.AccessRevoked},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, _ := mpsaas.DecideAccess(&tt.sub, mpsaas.AccessPolicy{Listing: tt.listing}, t0); got != tt.want {
				t.Errorf("DecideAccess = %q, want %q", got, tt.want)
			}
		})
	}
	// RevokeOnCancel: a cancelling buyer loses access at once.
	cancelling := mpsaas.Subscriber{RegisteredAt: t0, State: mpsaas.State{Status: mpsaas.StatusUnsubscribePending, FinalWindowFrom: t0}, Access: mpsaas.AccessGranted}
	if got, _ := mpsaas.DecideAccess(&cancelling, mpsaas.AccessPolicy{Listing: mpsaas.ListingSubscriptions, RevokeOnCancel: true}, t0); got != mpsaas.AccessRevoked {
		t.Errorf("RevokeOnCancel: %q, want revoked", got)
	}
	// An entitlement change under unchanged access changes the fingerprint.
	a := mpsaas.Subscriber{RegisteredAt: t0, State: mpsaas.State{Status: mpsaas.StatusActive}, Entitlements: valid}
	b := a
	b.Entitlements = []mpsaas.Entitlement{{Dimension: "seats", Value: int64(9), ExpirationDate: t0.Add(24 * time.Hour)}}
	_, fa := mpsaas.DecideAccess(&a, mpsaas.AccessPolicy{Listing: mpsaas.ListingContracts}, t0)
	_, fb := mpsaas.DecideAccess(&b, mpsaas.AccessPolicy{Listing: mpsaas.ListingContracts}, t0)
	if fa == fb {
		t.Error("fingerprint did not change with the entitlements")
	}
}

func TestLicenseID(t *testing.T) {
	for in, want := range map[string]string{
		"arn:aws:license-manager::123456789012:license:l-0123abcd": "l-0123abcd",
		"aws:license-manager:us-east-1:123456789012:l-0123abcd":    "l-0123abcd",
		"arn:aws:license-manager::123456789012:license/l-0123abcd": "l-0123abcd",
		"":                        "",
		"arn:aws:s3:::bucket-l-x": "",
	} {
		if got := mpsaas.LicenseID(in); got != want {
			t.Errorf("LicenseID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestContactValidate(t *testing.T) {
	good := mpsaas.Contact{CompanyName: "Acme", ContactPerson: "Ann", ContactPhone: "+1 (206) 555-0100", ContactEmail: "ann@acme.example"}
	if fe := good.Validate(); fe != nil {
		t.Fatalf("valid contact: %v", fe)
	}
	tests := []struct {
		field string
		set   func(*mpsaas.Contact)
	}{
		{"companyName", func(c *mpsaas.Contact) { c.CompanyName = "" }},
		{"companyName", func(c *mpsaas.Contact) { c.CompanyName = strings.Repeat("x", 201) }},
		{"contactPerson", func(c *mpsaas.Contact) { c.ContactPerson = "Ann\nLee" }},
		{"contactPhone", func(c *mpsaas.Contact) { c.ContactPhone = "call me" }},
		{"contactPhone", func(c *mpsaas.Contact) { c.ContactPhone = "" }},
		{"contactEmail", func(c *mpsaas.Contact) { c.ContactEmail = "ann" }},
		{"contactEmail", func(c *mpsaas.Contact) { c.ContactEmail = "Ann <ann@acme.example>" }},
		{"contactEmail", func(c *mpsaas.Contact) { c.ContactEmail = "ann@localhost" }},
	}
	for _, tt := range tests {
		c := good
		tt.set(&c)
		fe := c.Validate()
		if fe == nil || fe[tt.field] == "" || len(fe) != 1 {
			t.Errorf("Validate(%+v) = %v, want exactly one error on %s", c, fe, tt.field)
		}
	}
}

func FuzzContactValidate(f *testing.F) {
	f.Add("Acme", "Ann", "+1 555 0100", "ann@acme.example")
	f.Add("", "\x00", "((((", "a@b")
	f.Fuzz(func(t *testing.T, company, person, phone, email string) {
		c := mpsaas.Contact{CompanyName: company, ContactPerson: person, ContactPhone: phone, ContactEmail: email}.Normalize()
		if c.Validate() != nil {
			return
		}
		if c.CompanyName == "" || c.ContactPerson == "" || !strings.Contains(c.ContactEmail, "@") || strings.ContainsAny(c.CompanyName+c.ContactPerson, "\r\n\x00") {
			t.Fatalf("accepted invalid contact %+v", c)
		}
	})
}

func TestEntitlementHistory(t *testing.T) {
	h := func(hh, mm int) time.Time { return time.Date(2026, 11, 23, hh, mm, 0, 0, time.UTC) }
	users := func(n int64) []mpsaas.Entitlement { return []mpsaas.Entitlement{{Dimension: "users", Value: n}} }
	var hist []mpsaas.EntitlementPeriod
	hist = mpsaas.RecordEntitlements(hist, users(5), h(10, 20))  // first read: in force since the start
	hist = mpsaas.RecordEntitlements(hist, users(5), h(11, 0))   // unchanged
	hist = mpsaas.RecordEntitlements(hist, users(10), h(12, 30)) // upgrade
	hist = mpsaas.RecordEntitlements(hist, nil, h(14, 15))       // cancelled
	if len(hist) != 2 || !hist[0].From.IsZero() || !hist[0].To.Equal(h(12, 30)) || !hist[1].From.Equal(h(12, 30)) || !hist[1].To.Equal(h(14, 15)) {
		t.Fatalf("history = %+v", hist)
	}
	for _, c := range []struct {
		hour time.Time
		want int64
	}{
		{h(9, 0), 5},   // before the first read: the contract was already in force
		{h(11, 0), 5},  // before the upgrade
		{h(12, 0), 10}, // the upgrade's hour: the larger
		{h(13, 0), 10},
		{h(14, 0), 10}, // cancelled during the hour: it still covers it
		{h(15, 0), 0},  // after the cancellation
	} {
		if got := mpsaas.EntitledQuantity(hist, nil, "users", c.hour); got != c.want {
			t.Errorf("entitled at %s = %d, want %d", c.hour.Format("15h"), got, c.want)
		}
	}
	if got := mpsaas.EntitledQuantity(hist, nil, "requests", h(13, 0)); got != 0 {
		t.Errorf("another dimension: %d", got)
	}
	// Without a history (stored before it existed): the current entitlement.
	if got := mpsaas.EntitledQuantity(nil, []mpsaas.Entitlement{{Dimension: "users", Value: float64(7)}}, "users", h(13, 0)); got != 7 {
		t.Errorf("no history: %d, want 7", got)
	}
	// An expiration date ends a period even if it is still read.
	exp := []mpsaas.Entitlement{{Dimension: "users", Value: int64(3), ExpirationDate: h(16, 30)}}
	hx := mpsaas.RecordEntitlements(nil, exp, h(10, 0))
	if a, b := mpsaas.EntitledQuantity(hx, nil, "users", h(16, 0)), mpsaas.EntitledQuantity(hx, nil, "users", h(17, 0)); a != 3 || b != 0 {
		t.Errorf("around the expiration: %d, %d; want 3, 0", a, b)
	}
	// Old closed periods are forgotten; the open one stays however old.
	long := mpsaas.RecordEntitlements(hist, users(2), h(14, 15).AddDate(0, 0, 30))
	if len(long) != 1 || long[0].Value != int64(2) {
		t.Errorf("a month later: %+v, want only the current period", long)
	}
}

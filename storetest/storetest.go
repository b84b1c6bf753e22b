// Package storetest is one test suite for every implementation of the
// mpsaas store ports. Each backend's tests call Run with a constructor that
// returns a fresh, empty store.
package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
)

// Store is everything a backend implements.
type Store interface {
	mpsaas.SubscriberStore
	mpsaas.Outbox
	mpsaas.ConsoleStore
}

// Run runs the suite. newStore must return an empty store for each call.
func Run(t *testing.T, newStore func(t *testing.T) Store) {
	t.Run("SubscriberRoundTripAndVersioning", func(t *testing.T) { testSubscriber(t, newStore(t)) })
	t.Run("EventsDedupeAndCorrelation", func(t *testing.T) { testEvents(t, newStore(t)) })
	t.Run("OutboxOncePerChannel", func(t *testing.T) { testOutbox(t, newStore(t)) })
	t.Run("ConsoleListsAndRetries", func(t *testing.T) { testConsole(t, newStore(t)) })
}

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func testSubscriber(t *testing.T, st Store) {
	ctx := context.Background()
	s := &mpsaas.Subscriber{
		Key:             "CI123",
		Identity:        mpsaas.Identity{CustomerIdentifier: "CI123", CustomerAWSAccountID: "111122223333", LicenseID: "l-abc", ProductCode: "prod"},
		LicenseArn:      "arn:aws:license-manager::111122223333:license:l-abc",
		Contact:         mpsaas.Contact{CompanyName: "Acme", ContactPerson: "Ann", ContactPhone: "+1 555 0100", ContactEmail: "ann@acme.test"},
		RegisteredAt:    t0,
		State:           mpsaas.State{Status: mpsaas.StatusActive, FreeTrial: true, OfferID: "offer-1", LastEventAt: t0, FinalWindowFrom: t0.Add(-time.Hour)},
		Entitlements:    []mpsaas.Entitlement{{Dimension: "seats", Value: int64(10), ExpirationDate: t0.AddDate(1, 0, 0)}},
		EntitlementsRaw: `{"Entitlements":[]}`,
		EntitlementHistory: []mpsaas.EntitlementPeriod{
			{Entitlement: mpsaas.Entitlement{Dimension: "seats", Value: float64(5)}, To: t0},
			{Entitlement: mpsaas.Entitlement{Dimension: "seats", Value: float64(10), ExpirationDate: t0.AddDate(1, 0, 0)}, From: t0},
		},
		Access: mpsaas.AccessGranted, AccessVersion: 1, AccessFingerprint: "fp",
		LinkedAccountID: "seller-account-42", ClaimID: "claim-1",
	}
	if err := st.SaveSubscriber(ctx, s, nil, nil); err != nil {
		t.Fatalf("insert: %v", err)
	}
	if s.Version != 1 {
		t.Errorf("version after insert = %d, want 1", s.Version)
	}
	dup := &mpsaas.Subscriber{Key: "CI123", State: mpsaas.State{Status: mpsaas.StatusPending}}
	if err := st.SaveSubscriber(ctx, dup, nil, nil); mpsaas.ErrorCode(err) != mpsaas.ECONFLICT {
		t.Errorf("second insert of the same key: error code %q, want conflict", mpsaas.ErrorCode(err))
	}
	got, err := st.GetSubscriber(ctx, "CI123")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(s)
	b, _ := json.Marshal(got)
	if string(a) != string(b) || got.EntitlementsRaw != s.EntitlementsRaw || got.AccessFingerprint != "fp" || got.ClaimID != "claim-1" {
		t.Errorf("round trip:\n got %s\nwant %s", b, a)
	}
	for _, id := range []mpsaas.Identity{{CustomerIdentifier: "CI123"}, {LicenseID: "l-abc"}} {
		if f, err := st.FindSubscriber(ctx, id); err != nil || f.Key != "CI123" {
			t.Errorf("FindSubscriber(%+v) = %v, %v", id, f, err)
		}
	}
	if _, err := st.FindSubscriber(ctx, mpsaas.Identity{CustomerIdentifier: "nobody"}); mpsaas.ErrorCode(err) != mpsaas.ENOTFOUND {
		t.Errorf("FindSubscriber(unknown) error code %q, want not_found", mpsaas.ErrorCode(err))
	}
	if _, err := st.FindSubscriber(ctx, mpsaas.Identity{}); mpsaas.ErrorCode(err) != mpsaas.ENOTFOUND {
		t.Errorf("FindSubscriber(empty) error code %q, want not_found", mpsaas.ErrorCode(err))
	}
	// Lost update: two writers read version 1; the second save fails.
	w1, _ := st.GetSubscriber(ctx, "CI123")
	w2, _ := st.GetSubscriber(ctx, "CI123")
	w1.CompanyName = "Acme One"
	if err := st.SaveSubscriber(ctx, w1, nil, nil); err != nil {
		t.Fatal(err)
	}
	w2.CompanyName = "Acme Two"
	if err := st.SaveSubscriber(ctx, w2, nil, nil); mpsaas.ErrorCode(err) != mpsaas.ECONFLICT {
		t.Errorf("stale save: error code %q, want conflict", mpsaas.ErrorCode(err))
	}
	if got, _ := st.GetSubscriber(ctx, "CI123"); got.CompanyName != "Acme One" || got.Version != 2 {
		t.Errorf("after stale save: company %q version %d, want Acme One 2", got.CompanyName, got.Version)
	}
}

func testEvents(t *testing.T, st Store) {
	ctx := context.Background()
	yes := true
	evs := []mpsaas.Event{
		{ID: "sns-1", Kind: mpsaas.EventSubscribeSuccess, Source: "sns", Time: t0, Identity: mpsaas.Identity{CustomerIdentifier: "CI1", ProductCode: "p"}, FreeTrial: &yes, OfferID: "offer-1",
			Raw: `{"Type":"Notification","Message":"{\"action\":\"subscribe-success\"}"}`},
		// An agreement event before the license event that links it.
		{ID: "eb-1", Kind: mpsaas.EventAgreementCreated, Source: "eventbridge", Time: t0, Identity: mpsaas.Identity{AgreementID: "agmt-1", CustomerAWSAccountID: "1111"}, AgreementStatus: "ACTIVE"},
		{ID: "eb-2", Kind: mpsaas.EventLicenseUpdated, Source: "eventbridge", Time: t0.Add(time.Second), Identity: mpsaas.Identity{AgreementID: "agmt-1", LicenseID: "l-1", ProductCode: "p", CustomerAWSAccountID: "1111"}},
		{ID: "eb-3", Kind: mpsaas.EventAgreementEnded, Source: "eventbridge", Time: t0.Add(time.Hour), Identity: mpsaas.Identity{AgreementID: "agmt-1"}},
		{ID: "eb-other", Kind: mpsaas.EventAgreementCreated, Source: "eventbridge", Time: t0, Identity: mpsaas.Identity{AgreementID: "agmt-2"}},
	}
	for _, e := range evs {
		e.ReceivedAt = t0
		added, err := st.AddEvent(ctx, e)
		if err != nil || !added {
			t.Fatalf("AddEvent(%s) = %v, %v; want true, nil", e.ID, added, err)
		}
	}
	if added, err := st.AddEvent(ctx, evs[0]); err != nil || added {
		t.Errorf("AddEvent(duplicate) = %v, %v; want false, nil", added, err)
	}
	if got, err := st.EventsFor(ctx, mpsaas.Identity{CustomerIdentifier: "CI1"}); err != nil || len(got) != 1 || got[0].Raw != evs[0].Raw {
		t.Errorf("EventsFor(CI1) = %+v, %v; want the event with its raw message", got, err)
	}
	got, err := st.EventsFor(ctx, mpsaas.Identity{LicenseID: "l-1"})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, e := range got {
		ids[e.ID] = true
	}
	if len(got) != 3 || !ids["eb-1"] || !ids["eb-2"] || !ids["eb-3"] {
		t.Errorf("EventsFor(l-1) = %v, want eb-1, eb-2, eb-3", ids)
	}
	got, _ = st.EventsFor(ctx, mpsaas.Identity{CustomerIdentifier: "CI1"})
	if len(got) != 1 || got[0].FreeTrial == nil || !*got[0].FreeTrial || got[0].OfferID != "offer-1" || !got[0].Time.Equal(t0) {
		t.Errorf("EventsFor(CI1) = %+v, want sns-1 with free trial, offer and time", got)
	}
	s := &mpsaas.Subscriber{Key: "license:l-1", Identity: mpsaas.Identity{LicenseID: "l-1"}, State: mpsaas.State{Status: mpsaas.StatusPending}}
	if err := st.SaveSubscriber(ctx, s, nil, nil); err != nil {
		t.Fatal(err)
	}
	keys, err := st.SubscribersFor(ctx, evs[3]) // agreement-only event
	if err != nil || len(keys) != 1 || keys[0] != "license:l-1" {
		t.Errorf("SubscribersFor(agreement event) = %v, %v; want [license:l-1]", keys, err)
	}
	if keys, _ := st.SubscribersFor(ctx, evs[4]); len(keys) != 0 {
		t.Errorf("SubscribersFor(unlinked agreement) = %v, want none", keys)
	}
}

func testOutbox(t *testing.T, st Store) {
	ctx := context.Background()
	s := &mpsaas.Subscriber{Key: "K", Identity: mpsaas.Identity{CustomerIdentifier: "K"}, State: mpsaas.State{Status: mpsaas.StatusActive}, Access: mpsaas.AccessGranted, AccessVersion: 1}
	ch := mpsaas.NewAccessChange(s, t0)
	channels := []string{mpsaas.ChannelWebhook, mpsaas.ChannelNotify}
	if err := st.SaveSubscriber(ctx, s, &ch, channels); err != nil {
		t.Fatal(err)
	}
	// The same change saved again (a retry) is not queued twice.
	if err := st.SaveSubscriber(ctx, s, &ch, channels); err != nil {
		t.Fatal(err)
	}
	due, err := st.DueMessages(ctx, time.Now().Add(time.Minute), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != 2 {
		t.Fatalf("due = %d, want 2 (one per channel)", len(due))
	}
	var got mpsaas.AccessChange
	if err := json.Unmarshal(due[0].Payload, &got); err != nil || got.IdempotencyKey != "K:1" || got.Access != mpsaas.AccessGranted {
		t.Errorf("payload = %s (%v), want key K:1 granted", due[0].Payload, err)
	}
	later := time.Now().Add(time.Hour)
	if err := st.MarkFailed(ctx, due[0].ID, "boom", later); err != nil {
		t.Fatal(err)
	}
	if err := st.MarkDelivered(ctx, due[1].ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	if due, _ := st.DueMessages(ctx, time.Now().Add(time.Minute), 10); len(due) != 0 {
		t.Errorf("due after fail+deliver = %d, want 0", len(due))
	}
	due, _ = st.DueMessages(ctx, later, 10)
	if len(due) != 1 || due[0].Attempts != 1 || due[0].LastError != "boom" {
		t.Errorf("due at retry time = %+v, want the failed one with 1 attempt", due)
	}
}

// testConsole: the console's buyer list pages through every buyer once,
// searches and filters the same way on every store, and failed deliveries
// can be listed and retried.
func testConsole(t *testing.T, st Store) {
	ctx := context.Background()
	channels := []string{mpsaas.ChannelWebhook, mpsaas.ChannelNotify}
	for i := 0; i < 23; i++ {
		s := &mpsaas.Subscriber{Key: fmt.Sprintf("cust-%02d", i), Identity: mpsaas.Identity{CustomerIdentifier: fmt.Sprintf("cust-%02d", i), ProductCode: "prod-a"},
			State: mpsaas.State{Status: mpsaas.StatusActive}, Access: mpsaas.AccessGranted, AccessVersion: 1}
		if i%2 == 1 {
			s.ProductCode, s.Status = "prod-b", mpsaas.StatusCancelled
		}
		if i == 7 {
			s.CompanyName, s.ContactEmail, s.RegisteredAt = "Example Corp", "Ops@Example.com", t0
		}
		if i == 8 {
			s.FreeTrial = true
		}
		ch := mpsaas.NewAccessChange(s, t0)
		if err := st.SaveSubscriber(ctx, s, &ch, channels); err != nil {
			t.Fatal(err)
		}
	}
	// Every buyer exactly once over pages of 5.
	seen := map[string]int{}
	f := mpsaas.SubscriberFilter{Limit: 5}
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		page, err := st.ListSubscribers(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range page.Subscribers {
			seen[s.Key]++
		}
		if page.Next == "" {
			break
		}
		f.After = page.Next
	}
	if len(seen) != 23 {
		t.Errorf("paged through %d buyers, want 23", len(seen))
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s listed %d times", k, n)
		}
	}
	for _, c := range []struct {
		f    mpsaas.SubscriberFilter
		want int
	}{
		{mpsaas.SubscriberFilter{Query: "example corp"}, 1},
		{mpsaas.SubscriberFilter{Query: "ops@EXAMPLE"}, 1},
		{mpsaas.SubscriberFilter{Query: "cust-1"}, 10},
		{mpsaas.SubscriberFilter{ProductCode: "prod-b"}, 11},
		{mpsaas.SubscriberFilter{Status: mpsaas.StatusActive}, 12},
		{mpsaas.SubscriberFilter{FreeTrial: true}, 1},
		{mpsaas.SubscriberFilter{Unregistered: true}, 22},
		{mpsaas.SubscriberFilter{Query: "nobody"}, 0},
	} {
		page, err := st.ListSubscribers(ctx, c.f)
		if err != nil || len(page.Subscribers) != c.want || page.Next != "" {
			t.Errorf("%+v: %d buyers (next %q), %v; want %d", c.f, len(page.Subscribers), page.Next, err, c.want)
		}
	}

	sub, err := st.GetSubscriber(ctx, "cust-07")
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := st.DeliveriesFor(ctx, sub, channels)
	if err != nil || len(msgs) != 2 || msgs[0].SubscriberKey != "cust-07" || msgs[0].CreatedAt.IsZero() || !msgs[0].DeliveredAt.IsZero() {
		t.Fatalf("deliveries of cust-07 = %+v, %v; want 2 undelivered", msgs, err)
	}
	due, err := st.DueMessages(ctx, time.Now().Add(time.Minute), 100)
	if err != nil || len(due) != 46 {
		t.Fatalf("due = %d, %v", len(due), err)
	}
	later := time.Now().Add(time.Hour)
	var failed string
	for _, m := range due {
		if strings.HasPrefix(m.IdempotencyKey, "cust-07:") && m.Channel == mpsaas.ChannelWebhook {
			failed = m.ID
			if err := st.MarkFailed(ctx, m.ID, "receiver answered 500", later); err != nil {
				t.Fatal(err)
			}
		} else if err := st.MarkDelivered(ctx, m.ID, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	got, err := st.FailedDeliveries(ctx, 10)
	if err != nil || len(got) != 1 || got[0].ID != failed || got[0].LastError != "receiver answered 500" || got[0].Attempts != 1 {
		t.Fatalf("failed deliveries = %+v, %v", got, err)
	}
	msgs, _ = st.DeliveriesFor(ctx, sub, channels)
	delivered := 0
	for _, m := range msgs {
		if !m.DeliveredAt.IsZero() {
			delivered++
		}
	}
	if len(msgs) != 2 || delivered != 1 {
		t.Errorf("after one delivery: %+v", msgs)
	}
	// Each message keeps its attempts: when, and the channel's answer.
	for _, m := range msgs {
		want := "receiver answered 500"
		if !m.DeliveredAt.IsZero() {
			want = ""
		}
		if len(m.History) != 1 || m.History[0].Error != want || m.History[0].At.IsZero() {
			t.Errorf("history of %s = %+v, want one attempt answered %q", m.Channel, m.History, want)
		}
	}
	now := time.Now()
	if err := st.RetryDelivery(ctx, failed, now); err != nil {
		t.Fatal(err)
	}
	if due, _ := st.DueMessages(ctx, now.Add(time.Second), 10); len(due) != 1 || due[0].ID != failed {
		t.Errorf("after retry, due = %+v", due)
	}
	for _, m := range msgs {
		if !m.DeliveredAt.IsZero() {
			if err := st.RetryDelivery(ctx, m.ID, now); mpsaas.ErrorCode(err) != mpsaas.ENOTFOUND {
				t.Errorf("retrying a delivered message: %v, want ENOTFOUND", err)
			}
		}
	}
	if err := st.RetryDelivery(ctx, "nonsense", now); mpsaas.ErrorCode(err) != mpsaas.ENOTFOUND {
		t.Errorf("retrying an unknown message: %v, want ENOTFOUND", err)
	}
}

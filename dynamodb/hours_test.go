package dynamodb_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/smithy-go/middleware"

	"github.com/mpsaas/mpsaas"

	"github.com/mpsaas/mpsaas/dynamodb"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/internal/metermodel"
	"github.com/mpsaas/mpsaas/internal/testenv"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/storetest"
	"github.com/mpsaas/mpsaas/subscription"
)

// MustOpenHours returns a metering store on fresh tables of DynamoDB Local.
func MustOpenHours(t *testing.T, opts ...func(*ddb.Options)) *dynamodb.HourStore {
	t.Helper()
	return dynamodb.NewHourStore(MustOpen(t, opts...))
}

// TestModelDynamoDB runs the model-based metering test (see
// internal/metermodel) on DynamoDB: random interleavings of ingestion,
// late usage, cancellations, runs cut short by failing store calls, AWS
// faults and a clock that steps on every reading; the second seed seals
// in parts of a few items, the last runs contract listings (each hour's
// overage).
func TestModelDynamoDB(t *testing.T) {
	for seed := range 3 {
		st := MustOpenHours(t)
		if seed == 1 {
			st.SealBudget = 2 // a pass seals a few items, then sends them
		}
		metermodel.Run(t, metermodel.Config{Seed: uint64(500 + seed), Steps: 200, CheckEvery: 10, Store: st,
			SetClock: func(f func() time.Time) { st.Now = f }, StoreFaultRate: 0.1, AWSFaultRate: 0.1, Contracts: seed == 2})
	}
}

var h10 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func urow(sub, dim string, q int64, at time.Time) mpsaas.UsageRow {
	return mpsaas.UsageRow{SubscriberKey: sub, Dimension: dim, Quantity: q, Time: at}
}

// openHours returns a store whose clock reads now.
func openHours(t *testing.T, now time.Time, opts ...func(*ddb.Options)) *dynamodb.HourStore {
	st := MustOpenHours(t, opts...)
	st.Now = func() time.Time { return now }
	return st
}

// sealHours runs one sealing pass the way the metering service does,
// sending nothing: every record goes into a batch.
func sealHours(t *testing.T, st *dynamodb.HourStore, before time.Time) []mpsaas.MeterKey {
	t.Helper()
	ctx := context.Background()
	scan, err := st.PendingRange(ctx)
	if err != nil {
		t.Fatal(err)
	}
	scan.Before = before
	var recs []mpsaas.MeterRecord
	err = st.ScanPending(ctx, &scan, func(g mpsaas.UsageGroup) error {
		if n := len(recs); n > 0 && recs[n-1].SubscriberKey == g.SubscriberKey && recs[n-1].Dimension == g.Dimension && recs[n-1].Hour.Equal(g.Hour) {
			recs[n-1].Quantity += g.Quantity
			recs[n-1].UsageQuantity += g.Quantity
			return nil
		}
		recs = append(recs, mpsaas.MeterRecord{SubscriberKey: g.SubscriberKey, Dimension: g.Dimension, Hour: g.Hour, Quantity: g.Quantity, UsageQuantity: g.Quantity,
			Version: g.Version, CustomerAWSAccountID: "111122223333", LicenseArn: "arn:aws:license-manager::1:license:l-" + g.SubscriberKey, ProductCode: "p"})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	conflicts, err := st.InsertMeterRecords(ctx, recs, scan.Hi)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.SealUsage(ctx, scan, conflicts, mpsaas.Hour(st.Now())); err != nil {
		t.Fatal(err)
	}
	return conflicts
}

// ledgerOf sums the ledger by "buyer/dimension/meter hour/state".
func ledgerOf(t *testing.T, st *dynamodb.HourStore) (map[string]int64, []mpsaas.LedgerEntry) {
	t.Helper()
	var all []mpsaas.LedgerEntry
	for after := int64(0); ; {
		page, err := st.Ledger(context.Background(), mpsaas.LedgerFilter{AfterID: after, Limit: 700})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		after = page[len(page)-1].ID
	}
	out := map[string]int64{}
	for _, e := range all {
		out[fmt.Sprintf("%s/%s/%s/%s", e.SubscriberKey, e.Dimension, e.Hour.Format("15h"), e.State)] += e.Quantity
	}
	return out, all
}

func TestHourStoreIdempotencyAndLateUsage(t *testing.T) {
	ctx := context.Background()
	now := h10.Add(2*time.Hour + 30*time.Minute)
	open := mpsaas.Hour(now)
	st := openHours(t, now)
	rows := []mpsaas.UsageRow{urow("A", "users", 2, h10), urow("A", "users", 3, h10.Add(30*time.Minute)), urow("B", "users", 4, h10.Add(time.Hour))}
	r1, err := st.AddUsage(ctx, "k1", "hash1", rows, open, now)
	if err != nil || r1.Accepted != 3 || r1.Replayed || r1.FirstID == 0 {
		t.Fatalf("AddUsage = %+v, %v", r1, err)
	}
	r2, err := st.AddUsage(ctx, "k1", "hash1", rows, open, now)
	if err != nil || !r2.Replayed || r2.FirstID != r1.FirstID {
		t.Errorf("resent AddUsage = %+v, %v; want the first receipt, replayed", r2, err)
	}
	if _, err := st.AddUsage(ctx, "k1", "other", rows[:1], open, now); mpsaas.ErrorCode(err) != mpsaas.ECONFLICT {
		t.Errorf("key reused with other records: %v, want ECONFLICT", err)
	}
	if got := storetest.Summary(t, st); got != "pending:3/9" {
		t.Errorf("summary %s, want pending:3/9", got)
	}
	_, entries := ledgerOf(t, st)
	for i, e := range entries {
		if e.ID != r1.FirstID+int64(i) || e.RequestKey != "k1" {
			t.Errorf("ledger entry %d: id %d key %q, want id %d of k1", i, e.ID, e.RequestKey, r1.FirstID+int64(i))
		}
	}
	// Hours 10 and 11 close and are sealed; usage for hour 10 that comes
	// later goes to the open hour 12.
	if c := sealHours(t, st, open); len(c) != 0 {
		t.Fatalf("conflicts %v", c)
	}
	if _, err := st.AddUsage(ctx, "k2", "hash2", []mpsaas.UsageRow{urow("A", "users", 7, h10.Add(5*time.Minute)), urow("C", "users", 1, h10)}, open, now); err != nil {
		t.Fatal(err)
	}
	got, entries := ledgerOf(t, st)
	want := map[string]int64{"A/users/10h/batched": 5, "B/users/11h/batched": 4, "A/users/12h/pending": 7, "C/users/12h/pending": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ledger %v\nwant %v", got, want)
	}
	if late := entries[len(entries)-1]; !strings.Contains(late.Reason, "late usage") {
		t.Errorf("late entry %+v has no late reason", late)
	}
	if got := storetest.Summary(t, st); got != "batched:3/9 pending:2/8" {
		t.Errorf("summary %s, want batched:3/9 pending:2/8", got)
	}
	if vs, err := st.VerifyMetering(ctx, mpsaas.VerifyScope{}, 0); err != nil || len(vs) != 0 {
		t.Errorf("verify = %v, %v", vs, err)
	}
}

// failTransaction makes the nth TransactWriteItems call fail before it is sent.
type failTransaction struct {
	n, calls atomic.Int32
}

func (f *failTransaction) option(o *ddb.Options) {
	o.APIOptions = append(o.APIOptions, func(s *middleware.Stack) error {
		return s.Initialize.Add(middleware.InitializeMiddlewareFunc("failTransaction", func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			if _, ok := in.Parameters.(*ddb.TransactWriteItemsInput); ok && f.calls.Add(1) == f.n.Load() {
				return middleware.InitializeOutput{}, middleware.Metadata{}, errors.New("injected: the process died here")
			}
			return next.HandleInitialize(ctx, in)
		}), middleware.After)
	})
}

// TestHourStoreLargeRequestResumes: a request too large for one
// transaction is written in parts; a crash between parts is finished by
// the client's retry, and every record counts exactly once.
func TestHourStoreLargeRequestResumes(t *testing.T) {
	ctx := context.Background()
	now := h10.Add(90 * time.Minute)
	f := &failTransaction{}
	f.n.Store(2)
	st := openHours(t, now, f.option)
	var rows []mpsaas.UsageRow
	var total int64
	for i := range 2500 {
		rows = append(rows, urow(fmt.Sprintf("S%03d", i%200), "users", int64(i%7), h10.Add(time.Duration(i)*time.Second)))
		total += int64(i % 7)
	}
	if _, err := st.AddUsage(ctx, "big", "h", rows, mpsaas.Hour(now), now); err == nil {
		t.Fatal("the crash between parts went unnoticed")
	}
	r, err := st.AddUsage(ctx, "big", "h", rows, mpsaas.Hour(now), now)
	if err != nil || r.Accepted != 2500 || !r.Replayed {
		t.Fatalf("retried AddUsage = %+v, %v; want the receipt of 2500, replayed", r, err)
	}
	if got, want := storetest.Summary(t, st), fmt.Sprintf("pending:2500/%d", total); got != want {
		t.Errorf("summary %s, want %s", got, want)
	}
	_, entries := ledgerOf(t, st)
	if len(entries) != 2500 {
		t.Fatalf("ledger has %d entries, want 2500", len(entries))
	}
	for i, e := range entries {
		if e.ID != r.FirstID+int64(i) {
			t.Fatalf("entry %d has id %d, want %d", i, e.ID, r.FirstID+int64(i))
		}
	}
	if vs, err := st.VerifyMetering(ctx, mpsaas.VerifyScope{}, 0); err != nil || len(vs) != 0 {
		t.Errorf("verify = %v, %v", vs, err)
	}
}

// TestHourStoreReplayMovesTheWholeRecord: replaying one flagged usage
// record replays the hourly record it is in, with all its usage.
func TestHourStoreReplayMovesTheWholeRecord(t *testing.T) {
	ctx := context.Background()
	now := h10.Add(2 * time.Hour)
	open := mpsaas.Hour(now)
	st := openHours(t, now)
	r, err := st.AddUsage(ctx, "a", "a", []mpsaas.UsageRow{urow("A", "users", 4, h10), urow("A", "users", 1, h10), urow("B", "users", 2, h10)}, open, now)
	if err != nil {
		t.Fatal(err)
	}
	sealHours(t, st, open)
	due, err := st.DueBatches(ctx, now, 10)
	if err != nil || len(due) != 1 || len(due[0].Records) != 2 {
		t.Fatalf("DueBatches = %+v, %v; want one batch of two records", due, err)
	}
	var outcomes []mpsaas.RecordOutcome
	for _, rec := range due[0].Records {
		o := mpsaas.RecordOutcome{MeterRecordID: rec.ID, State: mpsaas.UsageBilled, MeteringRecordID: "mr-" + rec.SubscriberKey}
		if rec.SubscriberKey == "A" {
			o = mpsaas.RecordOutcome{MeterRecordID: rec.ID, State: mpsaas.UsageFlagged, Reason: "TimestampOutOfBoundsException"}
		}
		outcomes = append(outcomes, o)
	}
	if err := st.FinishBatches(ctx, []mpsaas.BatchOutcome{{BatchID: due[0].ID, Outcomes: outcomes}}); err != nil {
		t.Fatal(err)
	}
	if got := storetest.Summary(t, st); got != "billed:1/2 flagged:2/5" {
		t.Fatalf("summary %s", got)
	}
	n, err := st.Replay(ctx, []int64{r.FirstID}, open)
	if err != nil || n != 2 {
		t.Fatalf("Replay(first record) = %d, %v; want both records of A's hour", n, err)
	}
	if n, err := st.Replay(ctx, nil, open); err != nil || n != 0 {
		t.Errorf("Replay(all) after = %d, %v; want nothing left", n, err)
	}
	got, _ := ledgerOf(t, st)
	want := map[string]int64{"A/users/12h/pending": 5, "B/users/10h/billed": 2}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ledger %v\nwant %v", got, want)
	}
	if got := storetest.Summary(t, st); got != "billed:1/2 pending:2/5" {
		t.Errorf("summary %s, want billed:1/2 pending:2/5", got)
	}
	if vs, err := st.VerifyMetering(ctx, mpsaas.VerifyScope{}, 0); err != nil || len(vs) != 0 {
		t.Errorf("verify = %v, %v", vs, err)
	}
}

func TestHourStoreHeartbeats(t *testing.T) {
	ctx := context.Background()
	now := h10.Add(3 * time.Hour)
	st := openHours(t, now)
	recs := []mpsaas.MeterRecord{
		{SubscriberKey: "A", Dimension: "users", Hour: h10, CustomerAWSAccountID: "1", LicenseArn: "arn:aws:license-manager::1:license:l-A", ProductCode: "p"},
		{SubscriberKey: "A", Dimension: "users", Hour: h10.Add(time.Hour), CustomerAWSAccountID: "1", LicenseArn: "arn:aws:license-manager::1:license:l-A", ProductCode: "p"},
	}
	if n, err := st.AddHeartbeats(ctx, recs); err != nil || n != 2 {
		t.Fatalf("AddHeartbeats = %d, %v", n, err)
	}
	if n, err := st.AddHeartbeats(ctx, recs); err != nil || n != 0 {
		t.Errorf("AddHeartbeats again = %d, %v; want 0", n, err)
	}
	// Usage for an hour that has its zero record goes to the open hour.
	if _, err := st.AddUsage(ctx, "a", "a", []mpsaas.UsageRow{urow("A", "users", 3, h10)}, mpsaas.Hour(now), now); err != nil {
		t.Fatal(err)
	}
	if got, _ := ledgerOf(t, st); got["A/users/13h/pending"] != 3 {
		t.Errorf("usage after a zero record: %v, want it pending in 13h", got)
	}
	due, err := st.DueBatches(ctx, now, 10)
	if err != nil || len(due) != 1 || len(due[0].Records) != 2 || due[0].Records[0].Quantity != 0 {
		t.Errorf("DueBatches = %+v, %v; want the two zero records in one batch", due, err)
	}
}

// TestContractStatusOnDynamoDB (issue 14, items 2 and 3, on the serverless
// store): a buyer entitled to 5 users reports 3 in hour 12 (covered), 4
// more for hour 12 after it was sealed (2 of overage, billed in the open
// hour), then 1 more (1 billed). What AWS billed is each hour's new
// overage, and the status reports covered and billed apart, agreeing with it.
func TestContractStatusOnDynamoDB(t *testing.T) {
	ctx := context.Background()
	at := func(hh, mm int) time.Time { return time.Date(2026, 11, 23, hh, mm, 0, 0, time.UTC) }
	em, _, mp := testenv.Local(t, at(12, 30), emulator.Product{Code: "c", Type: emulator.ProductContractWithConsumption, LicenseBased: true,
		Dimensions: []emulator.Dimension{{Name: "users"}}})
	st := MustOpenHours(t)
	st.Now = em.Clock.Now
	clock := mpsaas.ClockFunc(em.Clock.Now)
	subs := &subscription.Service{Store: st, Marketplace: mp, Clock: clock, Listing: mpsaas.ListingContractsWithSubscription}
	meter := &metering.Service{Store: st, Subscribers: st, Meterer: mp, Clock: clock, Listing: mpsaas.ListingContractsWithSubscription, MaxBackoff: time.Millisecond}
	b, err := em.AddBuyer(emulator.Buyer{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := em.Subscribe(emulator.SubscribeOptions{StartedAt: at(0, 0), ProductCode: "c", BuyerAccountID: b.AccountID, Entitlements: map[string]int32{"users": 5}})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range em.Notifications(0) {
		_ = subs.HandleMessage(ctx, n.Body)
	}
	sub, err := subs.RegisterWithToken(ctx, res.Token, mpsaas.Contact{CompanyName: "Acme", ContactPerson: "Ann", ContactPhone: "+1 555 0100", ContactEmail: "ann@acme.example"})
	if err != nil {
		t.Fatal(err)
	}
	ingest := func(key string, recs ...mpsaas.Usage) {
		t.Helper()
		if _, err := meter.Ingest(ctx, mpsaas.UsageRequest{IdempotencyKey: key, Records: recs}); err != nil {
			t.Fatal(err)
		}
	}
	runAt := func(now time.Time) {
		t.Helper()
		em.Clock.Set(now)
		for range 20 {
			if _, err := meter.Run(ctx); err != nil {
				t.Fatal(err)
			}
			if more, err := meter.Outstanding(ctx); err != nil || !more {
				return
			}
			em.Clock.Advance(time.Second)
		}
		t.Fatal("metering did not finish")
	}
	u := func(q int64, tm time.Time) mpsaas.Usage {
		return mpsaas.Usage{Customer: sub.Key, Dimension: "users", Quantity: q, Time: tm}
	}
	ingest("a", u(3, at(12, 20)))
	runAt(at(13, 6)) // hour 12: covered
	ingest("b", u(4, at(12, 50)), u(1, at(13, 10)))
	runAt(at(14, 6))
	ingest("c", u(1, at(12, 55)))
	runAt(at(15, 6))
	got := map[string]int64{}
	var total int64
	for _, x := range em.Billed(b.AccountID) {
		got[x.Hour.Format("15h")] += x.Quantity
		total += x.Quantity
	}
	if want := map[string]int64{"13h": 2, "14h": 1}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("AWS billed %v, want %v (hour 12's overage of 3, billed as it grew)", got, want)
	}
	sum, err := st.MeterSummary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b, c := sum[mpsaas.UsageBilled], sum[mpsaas.UsageCovered]; b.MeterQuantity != total || c.Quantity != 3 || b.Quantity != 6 {
		t.Errorf("status = %+v; want 3 covered, 6 in billed records of which AWS billed %d", sum, total)
	}
	// The console's chart by product: the done hours' totals from the
	// hour marks (hour 12: 3 covered; 13: 4 late + 1, 2 billed; 14: 1 late,
	// 1 billed). An hour is folded by the run after its last batch ends.
	ph, err := st.ProductUsage(ctx, at(11, 0), at(15, 0))
	if err != nil || len(ph) != 2 {
		t.Errorf("usage by product before the hour 14 is folded: %+v, %v", ph, err)
	}
	if _, err := meter.Run(ctx); err != nil {
		t.Fatal(err)
	}
	ph, err = st.ProductUsage(ctx, at(11, 0), at(15, 0))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, p := range ph {
		lines = append(lines, fmt.Sprintf("%s %s usage %d billed %d", p.Hour.Format("15h"), p.ProductCode, p.Usage, p.Billed))
	}
	if want := "12h c usage 3 billed 0|13h c usage 5 billed 2|14h c usage 1 billed 1"; strings.Join(lines, "|") != want {
		t.Errorf("usage by product:\n%s\nwant\n%s", strings.Join(lines, "|"), want)
	}
	// The console's hours: done hours with their counts, newest first.
	hs, err := st.HourSummaries(ctx, at(11, 0), at(15, 0))
	if err != nil {
		t.Fatal(err)
	}
	lines = nil
	for _, h := range hs {
		lines = append(lines, fmt.Sprintf("%s done=%v covered=%d billed=%d", h.Hour.Format("15h"), h.Done, h.Counts[mpsaas.UsageCovered].Quantity, h.Counts[mpsaas.UsageBilled].MeterQuantity))
	}
	if want := "14h done=true covered=0 billed=1|13h done=true covered=0 billed=2|12h done=true covered=3 billed=0"; strings.Join(lines, "|") != want {
		t.Errorf("hour summaries:\n%s\nwant\n%s", strings.Join(lines, "|"), want)
	}
}

// TestHourStoreUsageHistory runs the stores' shared usage history test;
// on DynamoDB (a query per hour) a range of 40 days is refused.
func TestHourStoreUsageHistory(t *testing.T) {
	now := h10.Add(2*time.Hour + 30*time.Minute)
	st := openHours(t, now)
	storetest.UsageHistory(t, st)
	if _, err := st.UsageHistory(context.Background(), "A", h10.Add(-40*24*time.Hour), mpsaas.Hour(now)); mpsaas.ErrorCode(err) != mpsaas.EINVALID {
		t.Errorf("40 days: %v, want EINVALID", err)
	}
}

// TestEndingSubscribers: the sparse ending index holds exactly the buyers
// whose subscription is ending or ended, found by their last event; a
// buyer who subscribes again leaves it. The meter's flushing reads it
// instead of scanning every buyer.
func TestEndingSubscribers(t *testing.T) {
	ctx := context.Background()
	st := MustOpenHours(t)
	save := func(key string, status mpsaas.Status, last time.Time) *mpsaas.Subscriber {
		t.Helper()
		s := &mpsaas.Subscriber{Key: key, Identity: mpsaas.Identity{CustomerIdentifier: key, ProductCode: "p"}, State: mpsaas.State{Status: status, LastEventAt: last}}
		if err := st.SaveSubscriber(ctx, s, nil, nil); err != nil {
			t.Fatal(err)
		}
		return s
	}
	save("active", mpsaas.StatusActive, h10)
	save("pending-cancel", mpsaas.StatusUnsubscribePending, h10)
	save("cancelled-long-ago", mpsaas.StatusCancelled, h10.Add(-48*time.Hour))
	back := save("cancelled-then-back", mpsaas.StatusCancelled, h10)
	save("failed", mpsaas.StatusFailed, h10.Add(time.Minute))
	back.Status, back.LastEventAt = mpsaas.StatusActive, h10.Add(2*time.Minute)
	if err := st.SaveSubscriber(ctx, back, nil, nil); err != nil {
		t.Fatal(err)
	}
	got, err := st.EndingSubscribers(ctx, h10.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range got {
		keys = append(keys, s.Key)
	}
	slices.Sort(keys)
	if fmt.Sprint(keys) != "[failed pending-cancel]" {
		t.Errorf("ending subscribers = %v, want [failed pending-cancel]", keys)
	}
}

// slowMeterer is AWS as seen from a meter with a backlog: every
// BatchMeterUsage call takes step of the emulator's clock. It records the
// meter hours of each call's records.
type slowMeterer struct {
	mpsaas.Meterer
	clock *emulator.Clock
	step  time.Duration
	hours [][]time.Time
}

func (m *slowMeterer) BatchMeterUsage(ctx context.Context, product string, recs []mpsaas.MeterRecord) (mpsaas.BatchResult, error) {
	var hs []time.Time
	for _, r := range recs {
		hs = append(hs, r.Hour)
	}
	m.hours = append(m.hours, hs)
	defer m.clock.Advance(m.step)
	return m.Meterer.BatchMeterUsage(ctx, product, recs)
}

// TestBacklogIsBilledOldestHourFirst: a meter that was down for 23 hours
// starts at 55 minutes past the hour, so AWS takes the oldest hour's usage
// for 5 more minutes, and each BatchMeterUsage call takes 6 minutes. The
// store seals the backlog a part at a time (SealBudget) and each part is
// sent before the next is sealed, so every hour reaches AWS inside its
// 24-hour window: all of it is billed, in hour order. Sealing everything
// first and then sending the batches in any order would lose the oldest
// hours (TimestampOutOfBoundsException: flagged).
func TestBacklogIsBilledOldestHourFirst(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2026, 11, 24, 12, 55, 0, 0, time.UTC)
	em, _, mp := testenv.Local(t, start, emulator.Product{Code: "p", Type: emulator.ProductSubscription, LicenseBased: true,
		Dimensions: []emulator.Dimension{{Name: "users"}}})
	st := MustOpenHours(t)
	st.Now = em.Clock.Now
	st.SealBudget = 25
	const buyers, hours = 25, 23
	keys := make([]string, buyers)
	for i := range keys {
		b, err := em.AddBuyer(emulator.Buyer{})
		if err != nil {
			t.Fatal(err)
		}
		res, err := em.Subscribe(emulator.SubscribeOptions{ProductCode: "p", BuyerAccountID: b.AccountID, StartedAt: start.Add(-30 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		arn := res.Subscription.LicenseArn
		sub := &mpsaas.Subscriber{Key: mpsaas.SubscriberKey(mpsaas.Customer{LicenseArn: arn}), LicenseArn: arn, State: mpsaas.State{Status: mpsaas.StatusActive},
			Identity: mpsaas.Identity{CustomerAWSAccountID: b.AccountID, LicenseID: mpsaas.LicenseID(arn), ProductCode: "p"}}
		if err := st.SaveSubscriber(ctx, sub, nil, nil); err != nil {
			t.Fatal(err)
		}
		keys[i] = sub.Key
	}
	slow := &slowMeterer{Meterer: mp, clock: em.Clock, step: 6 * time.Minute}
	meter := &metering.Service{Store: st, Subscribers: st, Meterer: slow, Clock: mpsaas.ClockFunc(em.Clock.Now), Listing: mpsaas.ListingSubscriptions,
		MaxBackoff: time.Millisecond}
	oldest := mpsaas.Hour(start).Add(-hours * time.Hour)
	var want int64
	for h := range hours {
		var recs []mpsaas.Usage
		for i, k := range keys {
			q := int64(i + h + 1)
			want += q
			recs = append(recs, mpsaas.Usage{Customer: k, Dimension: "users", Quantity: q, Time: oldest.Add(time.Duration(h)*time.Hour + time.Duration(i)*time.Minute)})
		}
		if _, err := meter.Ingest(ctx, mpsaas.UsageRequest{IdempotencyKey: fmt.Sprintf("h%d", h), Records: recs}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := meter.Run(ctx); err != nil {
		t.Fatal(err)
	}
	var got int64
	for _, b := range em.Billed("") {
		got += b.Quantity
	}
	sum, err := st.MeterSummary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got != want || sum[mpsaas.UsageFlagged].Records != 0 || sum[mpsaas.UsageBilled].Records != buyers*hours {
		t.Errorf("AWS billed %d of %d; status %+v", got, want, sum)
	}
	var last time.Time
	for i, hs := range slow.hours {
		for _, h := range hs {
			if h.Before(last) {
				t.Fatalf("call %d sends hour %s after hour %s was sent", i, h.Format("15h"), last.Format("15h"))
			}
			last = h
		}
	}
	if len(slow.hours) != hours {
		t.Errorf("%d BatchMeterUsage calls, want %d (one per hour of 25 buyers)", len(slow.hours), hours)
	}
}

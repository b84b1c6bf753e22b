package storetest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
)

// MeterStore is a store with the metering ports too.
type MeterStore interface {
	Store
	mpsaas.MeterStore
	mpsaas.UsageHistory
}

// RunMetering runs the metering suite. newStore must return an empty store.
func RunMetering(t *testing.T, newStore func(t *testing.T) MeterStore) {
	t.Run("UsageIdempotency", func(t *testing.T) { testUsageIdempotency(t, newStore(t)) })
	t.Run("SealAndLateUsage", func(t *testing.T) { testSeal(t, newStore(t)) })
	t.Run("InterruptedSeal", func(t *testing.T) { testInterruptedSeal(t, newStore(t)) })
	t.Run("BatchesOfAtMost25", func(t *testing.T) { testBatches(t, newStore(t)) })
	t.Run("ReplayFlagged", func(t *testing.T) { testReplay(t, newStore(t)) })
	t.Run("Heartbeats", func(t *testing.T) { testHeartbeats(t, newStore(t)) })
	t.Run("VerifyFindsViolations", func(t *testing.T) { testVerify(t, newStore(t)) })
	t.Run("ConcurrentIngestion", func(t *testing.T) { testConcurrentIngestion(t, newStore(t)) })
	t.Run("LateUsageHoursAndShares", func(t *testing.T) { testLateShares(t, newStore(t)) })
	t.Run("UsageHistory", func(t *testing.T) { UsageHistory(t, newStore(t)) })
}

// testLateShares: a scan tells late usage by the hour it happened in, a
// record stores how it splits by usage hour, and MeterRecordsFor reads
// the records of a key's hours back with their shares.
func testLateShares(t *testing.T, st MeterStore) {
	ctx := context.Background()
	now := h10.Add(90 * time.Minute) // 11:30: hour 10 is closed
	open := mpsaas.Hour(now)
	if _, err := st.AddUsage(ctx, "a", "a", []mpsaas.UsageRow{row("A", "users", 3, h10.Add(5*time.Minute))}, open, now); err != nil {
		t.Fatal(err)
	}
	seal(t, st, open, open)
	if _, err := st.AddUsage(ctx, "b", "b", []mpsaas.UsageRow{row("A", "users", 4, h10.Add(20*time.Minute)), row("A", "users", 1, now)}, open, now); err != nil {
		t.Fatal(err)
	}
	later := open.Add(time.Hour)
	scan, err := st.PendingRange(ctx)
	if err != nil {
		t.Fatal(err)
	}
	scan.Before = later
	var groups []string
	if err := st.ScanPending(ctx, &scan, func(g mpsaas.UsageGroup) error {
		groups = append(groups, fmt.Sprintf("%s/%s meter %dh usage %dh: %d", g.SubscriberKey, g.Dimension, g.Hour.Hour(), g.UsageHour.Hour(), g.Quantity))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := "[A/users meter 11h usage 10h: 4 A/users meter 11h usage 11h: 1]"; fmt.Sprint(groups) != want {
		t.Errorf("groups = %v\nwant %s", groups, want)
	}
	rec := mpsaas.MeterRecord{SubscriberKey: "A", Dimension: "users", Hour: open, Quantity: 2, UsageQuantity: 5, UsageRecords: 2,
		Shares:               map[int64]mpsaas.HourShare{h10.Unix(): {Usage: 4, Billed: 2}, open.Unix(): {Usage: 1, Billed: 0}},
		CustomerAWSAccountID: "1", LicenseArn: "arn:aws:license-manager::1:license:l-A", ProductCode: "p"}
	if _, err := st.InsertMeterRecords(ctx, []mpsaas.MeterRecord{rec}, scan.Hi); err != nil {
		t.Fatal(err)
	}
	if _, err := st.SealUsage(ctx, scan, nil, later); err != nil {
		t.Fatal(err)
	}
	got, err := st.MeterRecordsFor(ctx, "A", "users", h10, open)
	if err != nil {
		t.Fatal(err)
	}
	var desc []string
	for _, r := range got {
		desc = append(desc, fmt.Sprintf("%dh q%d u%d %v", r.Hour.Hour(), r.Quantity, r.UsageQuantity, r.SharesOf()))
	}
	want := fmt.Sprintf("[10h q3 u3 map[%d:{3 3}] 11h q2 u5 map[%d:{4 2} %d:{1 0}]]", h10.Unix(), h10.Unix(), open.Unix())
	if fmt.Sprint(desc) != want {
		t.Errorf("MeterRecordsFor = %v\nwant %s", desc, want)
	}
	for _, e := range ledger(t, st) {
		if e.Quantity == 4 && !strings.Contains(e.Reason, "late usage") {
			t.Errorf("late entry without a reason: %+v", e)
		}
	}
	verify(t, st, mpsaas.VerifyScope{})
}

// testConcurrentIngestion sends many requests at once, as the usage API
// does under load: distinct keys, the same key twice with the same records
// (one stored, one replayed) and a key reused for other records (refused).
// Every request is answered, nothing is stored twice, and a refused request
// leaves no row behind.
func testConcurrentIngestion(t *testing.T, st MeterStore) {
	ctx := context.Background()
	now := h10.Add(10 * time.Minute)
	const n = 40
	type answer struct {
		i   int
		rec mpsaas.UsageReceipt
		err error
	}
	answers := make(chan answer, 3*n)
	var wg sync.WaitGroup
	for i := range n {
		key := fmt.Sprintf("k%d", i%(n/2)) // every key twice
		hash := key
		q := int64(i%(n/2) + 1)
		if i >= n/2 && i%4 == 0 {
			hash, q = key+"-other", 1000 // the same key for other records
		}
		wg.Go(func() {
			rec, err := st.AddUsage(ctx, key, hash, []mpsaas.UsageRow{row("A", "users", q, h10), row("B", "users", q, h10)}, mpsaas.Hour(now), now)
			answers <- answer{i, rec, err}
		})
	}
	wg.Wait()
	close(answers)
	stored, replayed, conflicts := map[string]int{}, 0, 0
	for a := range answers {
		switch {
		case mpsaas.ErrorCode(a.err) == mpsaas.ECONFLICT:
			conflicts++
		case a.err != nil:
			t.Errorf("request %d: %v", a.i, a.err)
		case a.rec.Replayed:
			replayed++
		default:
			stored[a.rec.IdempotencyKey]++
		}
	}
	if len(stored) != n/2 {
		t.Errorf("%d keys stored, want %d (each once): %v", len(stored), n/2, stored)
	}
	for k, c := range stored {
		if c != 1 {
			t.Errorf("key %s stored %d times", k, c)
		}
	}
	if replayed+conflicts != n/2 {
		t.Errorf("replayed %d + refused %d, want %d", replayed, conflicts, n/2)
	}
	// Whichever of a key's two requests came first was stored: the total is
	// the sum of what the stored requests carried, two rows each.
	entries := ledger(t, st)
	if len(entries) != n {
		t.Fatalf("%d usage rows, want %d", len(entries), n)
	}
	perKey := map[string]int64{}
	for _, e := range entries {
		perKey[e.RequestKey] += e.Quantity
	}
	for k, q := range perKey {
		var i int
		fmt.Sscanf(k, "k%d", &i)
		if want := 2 * int64(i+1); q != want && q != 2000 {
			t.Errorf("key %s: quantity %d, want %d (or 2000 for its other records)", k, q, want)
		}
	}
}

// testVerify breaks the invariant on purpose through the store's own
// methods: usage sealed without a record, and a record whose usage
// quantity is not the sum of its usage. Verify must report both, by key.
func testVerify(t *testing.T, st MeterStore) {
	ctx := context.Background()
	now := h10.Add(2 * time.Hour)
	open := mpsaas.Hour(now)
	if _, err := st.AddUsage(ctx, "a", "a", []mpsaas.UsageRow{row("A", "users", 2, h10), row("B", "users", 3, h10), row("B", "users", 4, h10)}, open, now); err != nil {
		t.Fatal(err)
	}
	scan, err := st.PendingRange(ctx)
	if err != nil {
		t.Fatal(err)
	}
	scan.Before = open
	recs := scanRecords(t, st, &scan)
	if len(recs) != 2 || recs[0].SubscriberKey != "A" {
		t.Fatalf("records = %+v", recs)
	}
	// A's record is lost; B's says 6 where its usage sums to 7.
	recs[1].UsageQuantity = 6
	if _, err := st.InsertMeterRecords(ctx, recs[1:], scan.Hi); err != nil {
		t.Fatal(err)
	}
	if _, err := st.SealUsage(ctx, scan, nil, open); err != nil {
		t.Fatal(err)
	}
	for _, sc := range []mpsaas.VerifyScope{{}, {UsageFrom: scan.Lo, UsageTo: scan.Hi, RecordsAfter: scan.Records}} {
		vs, err := st.VerifyMetering(ctx, sc, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, v := range vs {
			got[v.Kind] = fmt.Sprintf("%s/%s/%d/%d", v.SubscriberKey, v.Dimension, v.Want, v.Got)
		}
		want := map[string]string{mpsaas.ViolationSealedWithoutRecord: "A/users/0/2", mpsaas.ViolationSumMismatch: "B/users/6/7"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("scope %+v: violations %v\nwant %v", sc, vs, want)
		}
	}
	// A later scope sees neither.
	if vs, err := st.VerifyMetering(ctx, mpsaas.VerifyScope{UsageFrom: scan.Hi + 1, RecordsAfter: scan.Records + 10}, 0); err != nil || len(vs) != 0 {
		t.Errorf("verify after the broken range = %v, %v; want nothing", vs, err)
	}
}

var h10 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func row(sub, dim string, q int64, at time.Time) mpsaas.UsageRow {
	return mpsaas.UsageRow{SubscriberKey: sub, Dimension: dim, Quantity: q, Time: at}
}

func testUsageIdempotency(t *testing.T, st MeterStore) {
	ctx := context.Background()
	rows := []mpsaas.UsageRow{row("A", "users", 2, h10), row("B", "users", 3, h10.Add(time.Minute))}
	r1, err := st.AddUsage(ctx, "k1", "hash1", rows, h10.Add(2*time.Hour), h10.Add(2*time.Hour))
	if err != nil || r1.Accepted != 2 || r1.Replayed || r1.FirstID == 0 {
		t.Fatalf("AddUsage = %+v, %v", r1, err)
	}
	r2, err := st.AddUsage(ctx, "k1", "hash1", rows, h10.Add(2*time.Hour), h10.Add(3*time.Hour))
	if err != nil || !r2.Replayed || r2.FirstID != r1.FirstID || r2.Accepted != 2 {
		t.Errorf("replayed AddUsage = %+v, %v; want the first receipt, replayed", r2, err)
	}
	if _, err := st.AddUsage(ctx, "k1", "other", rows[:1], h10, h10); mpsaas.ErrorCode(err) != mpsaas.ECONFLICT {
		t.Errorf("key reused with another hash: %v, want ECONFLICT", err)
	}
	sum, err := st.MeterSummary(ctx)
	if err != nil || sum[mpsaas.UsagePending].Records != 2 || sum[mpsaas.UsagePending].Quantity != 5 {
		t.Errorf("summary = %v, %v; want 2 pending records of quantity 5", sum, err)
	}
}

// seal runs one sealing pass the way the metering service does.
func seal(t *testing.T, st MeterStore, before, openHour time.Time) {
	t.Helper()
	ctx := context.Background()
	scan, err := st.PendingRange(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if scan.Hi == 0 {
		return
	}
	scan.Before = before
	recs := scanRecords(t, st, &scan)
	conflicts, err := st.InsertMeterRecords(ctx, recs, scan.Hi)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.SealUsage(ctx, scan, conflicts, openHour); err != nil {
		t.Fatal(err)
	}
	verify(t, st, mpsaas.VerifyScope{UsageFrom: scan.Lo, UsageTo: scan.Hi, RecordsAfter: scan.Records})
}

// scanRecords sums the pending usage of scan into meter records.
func scanRecords(t *testing.T, st MeterStore, scan *mpsaas.PendingScan) []mpsaas.MeterRecord {
	t.Helper()
	var recs []mpsaas.MeterRecord
	err := st.ScanPending(context.Background(), scan, func(g mpsaas.UsageGroup) error {
		if n := len(recs); n > 0 && recs[n-1].SubscriberKey == g.SubscriberKey && recs[n-1].Dimension == g.Dimension && recs[n-1].Hour.Equal(g.Hour) {
			recs[n-1].Quantity += g.Quantity
			recs[n-1].UsageQuantity += g.Quantity
			recs[n-1].UsageRecords += int64(g.Records)
			recs[n-1].UsageIDs = append(recs[n-1].UsageIDs, g.IDs...)
			return nil
		}
		recs = append(recs, mpsaas.MeterRecord{SubscriberKey: g.SubscriberKey, Dimension: g.Dimension, Hour: g.Hour, Quantity: g.Quantity, UsageQuantity: g.Quantity, UsageRecords: int64(g.Records),
			UsageIDs: slices.Clone(g.IDs), Version: g.Version,
			CustomerAWSAccountID: "111122223333", LicenseArn: "arn:aws:license-manager::1:license:l-" + g.SubscriberKey, ProductCode: "p"})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// verify fails the test on any violation of the metering invariant, in
// scope and over the whole store.
func verify(t *testing.T, st MeterStore, scope mpsaas.VerifyScope) {
	t.Helper()
	for _, sc := range []mpsaas.VerifyScope{scope, {}} {
		vs, err := st.VerifyMetering(context.Background(), sc, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			t.Errorf("metering invariant (scope %+v): %s", sc, v)
		}
	}
}

func quantities(t *testing.T, st MeterStore) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, e := range ledger(t, st) {
		out[fmt.Sprintf("%s/%s/%s/%s", e.SubscriberKey, e.Dimension, e.Hour.Format("15h"), e.State)] += e.Quantity
	}
	return out
}

func ledger(t *testing.T, st MeterStore) []mpsaas.LedgerEntry {
	t.Helper()
	l, err := st.Ledger(context.Background(), mpsaas.LedgerFilter{Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func testSeal(t *testing.T, st MeterStore) {
	ctx := context.Background()
	now := h10.Add(2*time.Hour + 30*time.Minute) // 12:30: hours 10 and 11 are closed
	open := mpsaas.Hour(now)
	if _, err := st.AddUsage(ctx, "a", "a", []mpsaas.UsageRow{
		row("A", "users", 2, h10), row("A", "users", 3, h10.Add(30*time.Minute)),
		row("B", "users", 4, h10.Add(time.Hour)), row("A", "users", 9, now),
	}, open, now); err != nil {
		t.Fatal(err)
	}
	seal(t, st, open, open)
	want := map[string]int64{"A/users/10h/sealed": 5, "B/users/11h/sealed": 4, "A/users/12h/pending": 9}
	if got := quantities(t, st); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after seal: %v\nwant %v", got, want)
	}
	// Late usage for the sealed hour 10 goes to the open hour.
	if _, err := st.AddUsage(ctx, "b", "b", []mpsaas.UsageRow{row("A", "users", 1, h10.Add(10*time.Minute))}, open, now); err != nil {
		t.Fatal(err)
	}
	want["A/users/12h/pending"] = 10
	if got := quantities(t, st); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after late usage: %v\nwant %v", got, want)
	}
	ok, err := st.Outstanding(ctx, open)
	if err != nil || !ok {
		t.Errorf("Outstanding = %v, %v; want true (sealed records wait for a batch)", ok, err)
	}
}

// testInterruptedSeal: records stored, usage not yet marked (a crash), new
// usage arrives; the next pass must neither lose nor double-count it.
func testInterruptedSeal(t *testing.T, st MeterStore) {
	ctx := context.Background()
	now := h10.Add(90 * time.Minute)
	open := mpsaas.Hour(now)
	if _, err := st.AddUsage(ctx, "a", "a", []mpsaas.UsageRow{row("A", "users", 2, h10), row("A", "users", 3, h10)}, open, now); err != nil {
		t.Fatal(err)
	}
	scan, err := st.PendingRange(ctx)
	if err != nil {
		t.Fatal(err)
	}
	scan.Before = open
	var ids []int64 // the usage the scan summed, when the store lists it in records
	if err := st.ScanPending(ctx, &scan, func(g mpsaas.UsageGroup) error { ids = append(ids, g.IDs...); return nil }); err != nil {
		t.Fatal(err)
	}
	rec := mpsaas.MeterRecord{SubscriberKey: "A", Dimension: "users", Hour: h10, Quantity: 5, UsageQuantity: 5, UsageRecords: 2, UsageIDs: ids,
		CustomerAWSAccountID: "1", LicenseArn: "arn:aws:license-manager::1:license:l-A", ProductCode: "p"}
	if c, err := st.InsertMeterRecords(ctx, []mpsaas.MeterRecord{rec}, scan.Hi); err != nil || len(c) != 0 {
		t.Fatalf("InsertMeterRecords = %v, %v", c, err)
	}
	// Crash here: SealUsage never ran. The record includes the pending usage,
	// which the status still counts once, as pending.
	verify(t, st, mpsaas.VerifyScope{})
	summary(t, st, "pending:2/5")
	// Usage for hour 10 that arrives now finds the record and goes to the open hour.
	if _, err := st.AddUsage(ctx, "b", "b", []mpsaas.UsageRow{row("A", "users", 7, h10)}, open, now); err != nil {
		t.Fatal(err)
	}
	seal(t, st, open, open)
	want := map[string]int64{"A/users/10h/sealed": 5, "A/users/11h/pending": 7}
	if got := quantities(t, st); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after the interrupted seal: %v\nwant %v", got, want)
	}
	summary(t, st, "pending:1/7 sealed:2/5")
}

// summary checks the usage records and quantity per state of MeterSummary,
// written "state:records/quantity" in state order.
func summary(t *testing.T, st MeterStore, want string) {
	t.Helper()
	if g := Summary(t, st); g != want {
		t.Errorf("MeterSummary = %s, want %s", g, want)
	}
}

// Summary writes a store's MeterSummary as "state:records/quantity" in
// state order, leaving out empty states.
func Summary(t testing.TB, st mpsaas.MeterStore) string {
	t.Helper()
	sum, err := st.MeterSummary(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for s, c := range sum {
		if c.Records != 0 || c.Quantity != 0 {
			got = append(got, fmt.Sprintf("%s:%d/%d", s, c.Records, c.Quantity))
		}
	}
	sort.Strings(got)
	return strings.Join(got, " ")
}

func testBatches(t *testing.T, st MeterStore) {
	ctx := context.Background()
	now := h10.Add(2 * time.Hour)
	var rows []mpsaas.UsageRow
	for i := 0; i < 60; i++ {
		rows = append(rows, row(fmt.Sprintf("S%02d", i), "users", int64(i), h10))
	}
	if _, err := st.AddUsage(ctx, "a", "a", rows, mpsaas.Hour(now), now); err != nil {
		t.Fatal(err)
	}
	seal(t, st, mpsaas.Hour(now), mpsaas.Hour(now))
	n, err := st.CreateBatches(ctx, now)
	if err != nil || n != 3 {
		t.Fatalf("CreateBatches = %d, %v; want 3 batches for 60 records", n, err)
	}
	batches, err := st.DueBatches(ctx, now, 10)
	if err != nil || len(batches) != 3 {
		t.Fatalf("DueBatches = %d, %v", len(batches), err)
	}
	sizes := []int{len(batches[0].Records), len(batches[1].Records), len(batches[2].Records)}
	if fmt.Sprint(sizes) != "[25 25 10]" {
		t.Errorf("batch sizes = %v, want [25 25 10]", sizes)
	}
	// First batch billed; second half-processed and retried later; third split.
	var outcomes []mpsaas.RecordOutcome
	for _, r := range batches[0].Records {
		outcomes = append(outcomes, mpsaas.RecordOutcome{MeterRecordID: r.ID, State: mpsaas.UsageBilled, MeteringRecordID: fmt.Sprint("mr-", r.ID),
			Response: `{"Status":"Success"}`})
	}
	half := []mpsaas.RecordOutcome{{MeterRecordID: batches[1].Records[0].ID, State: mpsaas.UsageRejected, Reason: "CustomerNotSubscribed"}}
	if err := st.FinishBatches(ctx, []mpsaas.BatchOutcome{
		{BatchID: batches[0].ID, Outcomes: outcomes},
		{BatchID: batches[1].ID, Outcomes: half, Retry: now.Add(time.Minute), LastError: "24 records unprocessed"},
	}); err != nil {
		t.Fatal(err)
	}
	if err := st.SplitBatch(ctx, batches[2].ID, now); err != nil {
		t.Fatal(err)
	}
	due, err := st.DueBatches(ctx, now, 100)
	if err != nil || len(due) != 10 {
		t.Fatalf("due after split = %d, %v; want 10 single-record batches", len(due), err)
	}
	later, _ := st.DueBatches(ctx, now.Add(2*time.Minute), 100)
	var retried *mpsaas.MeterBatch
	for i := range later {
		if later[i].ID == batches[1].ID {
			retried = &later[i]
		}
	}
	if retried == nil || len(retried.Records) != 24 || retried.Attempts != 1 {
		t.Errorf("retried batch = %+v, want 24 unfinished records after 1 attempt", retried)
	}
	sum, _ := st.MeterSummary(ctx)
	if sum[mpsaas.UsageBilled].Records != 25 || sum[mpsaas.UsageRejected].Records != 1 || sum[mpsaas.UsageBatched].Records != 34 {
		t.Errorf("summary = %v, want 25 billed, 1 rejected, 34 batched", sum)
	}
	for _, e := range ledger(t, st) {
		if e.State == mpsaas.UsageBilled && e.MeteringRecordID == "" {
			t.Errorf("billed entry without MeteringRecordId: %+v", e)
		}
	}
}

func testReplay(t *testing.T, st MeterStore) {
	ctx := context.Background()
	now := h10.Add(2 * time.Hour)
	open := mpsaas.Hour(now)
	if _, err := st.AddUsage(ctx, "a", "a", []mpsaas.UsageRow{row("A", "users", 4, h10), row("A", "users", 1, h10)}, open, now); err != nil {
		t.Fatal(err)
	}
	seal(t, st, open, open)
	if _, err := st.CreateBatches(ctx, now); err != nil {
		t.Fatal(err)
	}
	b, _ := st.DueBatches(ctx, now, 1)
	if err := st.FinishBatches(ctx, []mpsaas.BatchOutcome{{BatchID: b[0].ID, Outcomes: []mpsaas.RecordOutcome{{MeterRecordID: b[0].Records[0].ID, State: mpsaas.UsageFlagged, Reason: "TimestampOutOfBoundsException"}}}}); err != nil {
		t.Fatal(err)
	}
	if got := quantities(t, st); got["A/users/10h/flagged"] != 5 {
		t.Fatalf("before replay: %v", got)
	}
	summary(t, st, "flagged:2/5")
	// One record first, then the rest.
	first := ledger(t, st)[0]
	if n, err := st.Replay(ctx, []int64{first.ID}, open); err != nil || n != 1 {
		t.Fatalf("Replay(%d) = %d, %v; want 1 record", first.ID, n, err)
	}
	summary(t, st, "flagged:1/1 pending:1/4")
	verify(t, st, mpsaas.VerifyScope{})
	n, err := st.Replay(ctx, nil, open)
	if err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v; want the other record", n, err)
	}
	summary(t, st, "pending:2/5")
	want := map[string]int64{"A/users/12h/pending": 5}
	if got := quantities(t, st); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after replay: %v, want %v", got, want)
	}
	verify(t, st, mpsaas.VerifyScope{})
}

func testHeartbeats(t *testing.T, st MeterStore) {
	ctx := context.Background()
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
	// Usage for an hour that already has a zero record goes to a later hour.
	now := h10.Add(3 * time.Hour)
	if _, err := st.AddUsage(ctx, "a", "a", []mpsaas.UsageRow{row("A", "users", 3, h10)}, mpsaas.Hour(now), now); err != nil {
		t.Fatal(err)
	}
	if got := quantities(t, st); got["A/users/13h/pending"] != 3 {
		t.Errorf("usage after heartbeat: %v, want it pending in 13h", got)
	}
	verify(t, st, mpsaas.VerifyScope{})
}

// UsageHistory tests a buyer's usage by hour and dimension (the console's
// chart): sealed hours from their records, the open hour from pending
// usage, late usage where it moved to, only the buyer's and only the hours
// asked for. A store whose meter records go straight into batches
// (DynamoDB's hour model) shows "batched" where SQLite's shows "sealed".
// The store's clock must read 12:30 of h10's day.
func UsageHistory(t *testing.T, st MeterStore) {
	ctx := context.Background()
	now := h10.Add(2*time.Hour + 30*time.Minute) // 12:30
	open := mpsaas.Hour(now)
	if _, err := st.AddUsage(ctx, "a", "a", []mpsaas.UsageRow{
		row("A", "users", 2, h10), row("A", "users", 3, h10.Add(30*time.Minute)), row("A", "gb", 7, h10),
		row("B", "users", 4, h10), row("A", "users", 9, now), row("A", "users", 1, h10.Add(-time.Hour)),
	}, open, now); err != nil {
		t.Fatal(err)
	}
	seal(t, st, open, open)
	// Late usage of the sealed hour 10 moves to the open hour 12.
	if _, err := st.AddUsage(ctx, "b", "b", []mpsaas.UsageRow{row("A", "gb", 5, h10.Add(10*time.Minute))}, open, now); err != nil {
		t.Fatal(err)
	}
	got, err := st.UsageHistory(ctx, "A", h10, open)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, u := range got {
		state := u.State
		if state == mpsaas.UsageBatched {
			state = mpsaas.UsageSealed
		}
		lines = append(lines, fmt.Sprintf("%02dh %s usage %d %s", u.Hour.Hour(), u.Dimension, u.Usage, state))
	}
	want := []string{"10h gb usage 7 sealed", "10h users usage 5 sealed", "12h gb usage 5 pending", "12h users usage 9 pending"}
	if !slices.Equal(lines, want) {
		t.Errorf("usage history:\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

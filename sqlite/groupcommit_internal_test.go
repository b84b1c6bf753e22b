package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
)

// TestGroupCommitIsolatesRequests stores one group in which a key comes
// twice with the same records (stored, then replayed), once with other
// records (refused, with nothing of it stored) and a request follows the
// refused one (stored): one request's failure must not touch the others.
func TestGroupCommitIsolatesRequests(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "g.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Date(2026, 11, 23, 10, 30, 0, 0, time.UTC)
	rows := func(q ...int64) []mpsaas.UsageRow {
		var out []mpsaas.UsageRow
		for _, x := range q {
			out = append(out, mpsaas.UsageRow{SubscriberKey: "A", Dimension: "users", Quantity: x, Time: now})
		}
		return out
	}
	w := func(key, hash string, r []mpsaas.UsageRow) *usageWrite {
		return &usageWrite{key: key, hash: hash, rows: r, openHour: mpsaas.Hour(now), now: now, done: make(chan usageWriteResult, 1)}
	}
	group := []*usageWrite{w("k1", "h1", rows(1, 2)), w("k1", "h1", rows(1, 2)), w("k1", "h2", rows(100, 200, 300)), w("k2", "h3", rows(4))}
	db.writeUsageGroup(group)
	var got []usageWriteResult
	for _, g := range group {
		got = append(got, <-g.done)
	}
	if r := got[0]; r.err != nil || r.rec.Replayed || r.rec.Accepted != 2 {
		t.Errorf("first k1 = %+v", r)
	}
	if r := got[1]; r.err != nil || !r.rec.Replayed || r.rec.FirstID != got[0].rec.FirstID {
		t.Errorf("second k1 = %+v, want the first receipt replayed", r)
	}
	if r := got[2]; mpsaas.ErrorCode(r.err) != mpsaas.ECONFLICT {
		t.Errorf("k1 with other records = %+v, want ECONFLICT", r)
	}
	if r := got[3]; r.err != nil || r.rec.Accepted != 1 || r.rec.FirstID != got[0].rec.FirstID+2 {
		t.Errorf("k2 = %+v, want stored right after k1's rows", r)
	}
	sum, err := db.MeterSummary(ctx)
	if err != nil || sum[mpsaas.UsagePending].Records != 3 || sum[mpsaas.UsagePending].Quantity != 7 {
		t.Errorf("summary = %v, %v; want 3 pending rows of quantity 7", sum, err)
	}
}

// TestCloseWaitsForTheWriter closes the database while requests are being
// written: each is either stored and acknowledged, or refused; none is
// acknowledged and lost.
func TestCloseWaitsForTheWriter(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "c.db")
	db, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 23, 10, 30, 0, 0, time.UTC)
	acked := make(chan int64, 200)
	done := make(chan struct{})
	for i := range 200 {
		go func() {
			defer func() { done <- struct{}{} }()
			r := []mpsaas.UsageRow{{SubscriberKey: "A", Dimension: "users", Quantity: 1, Time: now}}
			if _, err := db.AddUsage(ctx, string(rune('a'+i%26))+time.Duration(i).String(), "h", r, mpsaas.Hour(now), now); err == nil {
				acked <- 1
			} else if mpsaas.ErrorCode(err) != mpsaas.EUNAVAILABLE {
				t.Errorf("AddUsage: %v", err)
			}
		}()
	}
	time.Sleep(time.Millisecond)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for range 200 {
		<-done
	}
	close(acked)
	var n int64
	for x := range acked {
		n += x
	}
	db, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sum, err := db.MeterSummary(ctx)
	if err != nil || sum[mpsaas.UsagePending].Records != n {
		t.Errorf("after reopen %v, %v; want the %d acknowledged rows", sum, err, n)
	}
}

package sqlite_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/sqlite"
	"github.com/mpsaas/mpsaas/storetest"
)

// MustOpen opens a fresh database in a temp dir and closes it after the test.
func MustOpen(tb testing.TB) *sqlite.DB {
	tb.Helper()
	db, err := sqlite.Open(context.Background(), filepath.Join(tb.TempDir(), "mpsaas.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store { return MustOpen(t) })
}

func TestMemory(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		db, err := sqlite.Open(context.Background(), ":memory:")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	})
}

func TestQueue(t *testing.T) {
	ctx := context.Background()
	db := MustOpen(t)
	for _, b := range []string{"a", "b", "c"} {
		if err := db.Enqueue(ctx, []byte(b)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := db.Receive(ctx, 2, time.Minute)
	if err != nil || len(got) != 2 || string(got[0].Body) != "a" || got[0].Attempts != 1 {
		t.Fatalf("Receive = %+v, %v; want a, b on first attempt", got, err)
	}
	// Hidden messages are not received again until their visibility ends.
	rest, _ := db.Receive(ctx, 10, time.Minute)
	if len(rest) != 1 || string(rest[0].Body) != "c" {
		t.Fatalf("second Receive = %+v, want only c", rest)
	}
	if err := db.Delete(ctx, got[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := db.DeadLetter(ctx, got[1].ID, "malformed"); err != nil {
		t.Fatal(err)
	}
	db.Now = func() time.Time { return time.Now().Add(2 * time.Minute) }
	again, _ := db.Receive(ctx, 10, time.Minute)
	if len(again) != 1 || string(again[0].Body) != "c" || again[0].Attempts != 2 {
		t.Errorf("after visibility timeout = %+v, want c again on attempt 2", again)
	}
	dead, err := db.DeadNotifications(ctx, 10)
	if err != nil || len(dead) != 1 || dead[0].Body != "b" || dead[0].Reason != "malformed" {
		t.Errorf("DeadNotifications = %+v, %v", dead, err)
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "x.db")
	db, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Enqueue(ctx, []byte("kept")); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	got, _ := db.Receive(ctx, 1, time.Minute)
	if len(got) != 1 || string(got[0].Body) != "kept" {
		t.Errorf("after reopen = %+v, want the enqueued message", got)
	}
}

func TestMeterStore(t *testing.T) {
	storetest.RunMetering(t, func(t *testing.T) storetest.MeterStore { return MustOpen(t) })
}

// TestCheckpointTruncatesTheWAL: after a burst of usage the WAL holds
// megabytes; a checkpoint empties it.
func TestCheckpointTruncatesTheWAL(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "wal.db")
	db, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Date(2026, 11, 23, 10, 30, 0, 0, time.UTC)
	rows := make([]mpsaas.UsageRow, 5000)
	for i := range rows {
		rows[i] = mpsaas.UsageRow{SubscriberKey: "A", Dimension: "users", Quantity: 1, Time: now}
	}
	for i := range 10 {
		if _, err := db.AddUsage(ctx, fmt.Sprint("k", i), "h", rows, mpsaas.Hour(now), now); err != nil {
			t.Fatal(err)
		}
	}
	before, err := os.Stat(path + "-wal")
	if err != nil || before.Size() < 1<<20 {
		t.Fatalf("WAL after the burst: %v, %v; want over 1 MB", before, err)
	}
	if busy, err := db.Checkpoint(ctx); err != nil || busy {
		t.Fatalf("Checkpoint = busy %v, %v", busy, err)
	}
	after, err := os.Stat(path + "-wal")
	if err != nil || after.Size() != 0 {
		t.Errorf("WAL after the checkpoint: %d bytes, %v; want 0", after.Size(), err)
	}
}

// TestMeteringLock: the lock of one handle (as of another process) keeps
// another handle of the same file waiting; the epoch counts every holder.
func TestMeteringLock(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "lock.db")
	a, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	unlockA, e1, err := a.LockMetering(ctx)
	if err != nil || e1 != 1 {
		t.Fatalf("first lock: epoch %d, %v", e1, err)
	}
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	if _, _, err := b.LockMetering(short); err == nil || !strings.Contains(err.Error(), "another process is metering") {
		t.Fatalf("second lock while held: %v, want a wait that ends with ctx", err)
	}
	got := make(chan int64)
	go func() {
		unlock, e, err := b.LockMetering(ctx)
		if err != nil {
			t.Error(err)
		}
		unlock()
		got <- e
	}()
	time.Sleep(50 * time.Millisecond)
	unlockA()
	if e := <-got; e != 2 {
		t.Errorf("epoch of the second holder = %d, want 2", e)
	}
	if _, e3, err := a.LockMetering(ctx); err != nil || e3 != 3 {
		t.Errorf("third lock: epoch %d, %v", e3, err)
	}
}

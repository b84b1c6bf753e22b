package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
)

// TestTotalsMigration upgrades a database written before the running
// totals existed (migrations 0001-0003 only, meter records without
// usage_quantity) and checks the status the totals give equals the one the
// ledger gives, and keeps doing so as metering goes on.
func TestTotalsMigration(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := raw.ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(`CREATE TABLE migrations (name TEXT PRIMARY KEY)`)
	for _, name := range []string{"migration/0001_init.sql", "migration/0002_metering.sql", "migration/0003_usage_quantity.sql"} {
		b, err := migrationFS.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		exec(string(b))
		exec(`INSERT INTO migrations (name) VALUES (?)`, name)
	}
	h := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC).Unix()
	exec(`INSERT INTO usage_requests (key, hash, accepted, first_id, received_at) VALUES ('r', 'h', 6, 1, 1)`)
	// A billed record of 2 rows (stored before usage_quantity), a batched
	// one of 1 row, a heartbeat, and 3 pending rows.
	for i, u := range []struct {
		sub, state string
		q, hour    int64
	}{{"A", "sealed", 2, h}, {"A", "sealed", 3, h}, {"B", "sealed", 4, h}, {"A", "pending", 5, h + 3600}, {"B", "pending", 6, h + 3600}, {"C", "pending", 7, h + 3600}} {
		exec(`INSERT INTO usage (request_id, subscriber_key, dimension, quantity, usage_time, meter_hour, state, received_at) VALUES (1, ?, 'users', ?, ?, ?, ?, 1)`,
			u.sub, u.q, u.hour*1e9+int64(i), u.hour, u.state)
	}
	exec(`INSERT INTO meter_records (subscriber_key, dimension, hour, quantity, usage_quantity, state, metering_record_id, created_at, updated_at) VALUES ('A', 'users', ?, 5, NULL, 'billed', 'mr-1', 1, 1)`, h)
	exec(`INSERT INTO meter_batches (id, product_code, next_attempt_at, created_at) VALUES (1, '', 1, 1)`)
	exec(`INSERT INTO meter_records (id, subscriber_key, dimension, hour, quantity, usage_quantity, state, batch_id, created_at, updated_at) VALUES (2, 'B', 'users', ?, 4, 4, 'batched', 1, 1, 1)`, h)
	exec(`INSERT INTO meter_records (subscriber_key, dimension, hour, quantity, usage_quantity, state, created_at, updated_at) VALUES ('C', 'users', ?, 0, 0, 'billed', 1, 1)`, h)
	exec(`UPDATE meter_records SET metering_record_id = 'mr-3' WHERE subscriber_key = 'C'`)
	raw.Close()

	db, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	check := func(when, want string) {
		t.Helper()
		sum, err := db.MeterSummary(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := fmt.Sprint(sum)
		if got != want {
			t.Errorf("%s: status %s\nwant %s", when, got, want)
		}
		if vs, err := db.VerifyMetering(ctx, mpsaas.VerifyScope{}, 0); err != nil || len(vs) != 0 {
			t.Errorf("%s: verify = %v, %v", when, vs, err)
		}
	}
	check("after the upgrade", "map[batched:{1 4 1 4} billed:{2 5 2 5} pending:{3 18 0 0}]")
	// Usage keeps flowing: new rows, a seal of the open hour, the batch billed.
	now := time.Unix(h, 0).UTC().Add(3 * time.Hour)
	if _, err := db.AddUsage(ctx, "r2", "h2", []mpsaas.UsageRow{{SubscriberKey: "A", Dimension: "users", Quantity: 10, Time: now}}, mpsaas.Hour(now), now); err != nil {
		t.Fatal(err)
	}
	check("after new usage", "map[batched:{1 4 1 4} billed:{2 5 2 5} pending:{4 28 0 0}]")
	if err := db.FinishBatches(ctx, []mpsaas.BatchOutcome{{BatchID: 1, Outcomes: []mpsaas.RecordOutcome{{MeterRecordID: 2, State: mpsaas.UsageBilled, MeteringRecordID: "mr-2"}}}}); err != nil {
		t.Fatal(err)
	}
	check("after the batch is billed", "map[billed:{3 9 3 9} pending:{4 28 0 0}]")
}

package metering_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas/internal/metermodel"
	"github.com/mpsaas/mpsaas/sqlite"
)

// TestModelSQLite runs the model-based metering test on SQLite: random
// interleavings of ingestion, late usage, cancellations, runs, crashes at
// store calls, AWS faults and a clock that steps on every reading.
func TestModelSQLite(t *testing.T) {
	seeds := 6
	if testing.Short() {
		seeds = 2
	}
	// MPSAAS_MODEL_SEEDS=n runs n seeds (e.g. 200 to hunt for a rare case).
	if n, err := strconv.Atoi(os.Getenv("MPSAAS_MODEL_SEEDS")); err == nil && n > 0 {
		seeds = n
	}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			db, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "model.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			metermodel.Run(t, metermodel.Config{Seed: uint64(seed), Steps: 300, Store: db, SetClock: func(f func() time.Time) { db.Now = f },
				StoreFaultRate: 0.1, AWSFaultRate: 0.1})
		})
	}
}

// TestModelSQLiteContracts runs the model on contract-with-consumption
// listings: what AWS bills must be each usage hour's overage over its
// entitlement, however late the usage arrived and across cancellations.
func TestModelSQLiteContracts(t *testing.T) {
	seeds := 4
	if n, err := strconv.Atoi(os.Getenv("MPSAAS_MODEL_SEEDS")); err == nil && n > 0 {
		seeds = n
	}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			db, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "model.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			// Each notification path in turn: both, SNS alone, EventBridge alone.
			metermodel.Run(t, metermodel.Config{Seed: uint64(1000 + seed), Steps: 300, Store: db, SetClock: func(f func() time.Time) { db.Now = f },
				StoreFaultRate: 0.1, AWSFaultRate: 0.1, Contracts: true, Feed: []string{"", "sns", "eventbridge"}[seed%3]})
		})
	}
}

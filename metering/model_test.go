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
	runModelSQLite(t, seeds, func(seed int, cfg *metermodel.Config) { cfg.Seed = uint64(seed) })
}

// TestModelSQLiteContracts runs the model on contract-with-consumption
// listings: what AWS bills must be each usage hour's overage over its
// entitlement, however late the usage arrived and across cancellations.
func TestModelSQLiteContracts(t *testing.T) {
	runModelSQLite(t, 4, func(seed int, cfg *metermodel.Config) {
		// Each notification path in turn: both, SNS alone, EventBridge alone.
		cfg.Seed, cfg.Contracts, cfg.Feed = uint64(1000+seed), true, []string{"", "sns", "eventbridge"}[seed%3]
	})
}

// runModelSQLite runs seeds model runs (MPSAAS_MODEL_SEEDS=n runs n, e.g.
// 200 to hunt for a rare case), each on a fresh database, with configure
// setting what differs.
func runModelSQLite(t *testing.T, seeds int, configure func(seed int, cfg *metermodel.Config)) {
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
			cfg := metermodel.Config{Steps: 300, Store: db, SetClock: func(f func() time.Time) { db.Now = f }, StoreFaultRate: 0.1, AWSFaultRate: 0.1}
			configure(seed, &cfg)
			metermodel.Run(t, cfg)
		})
	}
}

package dynamodb_test

import (
	"testing"
	"time"

	"github.com/mpsaas/mpsaas/internal/metermodel"
)

// TestModelDynamoDB runs the model-based metering test (see
// internal/metermodel) on the DynamoDB store: random interleavings of
// ingestion, late usage, cancellations, runs cut short by failing store
// calls, AWS faults and a clock that steps on every reading.
func TestModelDynamoDB(t *testing.T) {
	for seed := range 3 {
		st := MustOpen(t)
		// The last seed runs contract listings (each hour's overage).
		metermodel.Run(t, metermodel.Config{Seed: uint64(100 + seed), Steps: 200, CheckEvery: 10, Store: st,
			SetClock: func(f func() time.Time) { st.Now = f }, StoreFaultRate: 0.1, AWSFaultRate: 0.1, Contracts: seed == 2})
	}
}

// TestModelDynamoDBIndexLag runs the model with index queries that miss
// recently written items (issue 8, item 3): usage a seal pass did not see
// must never be taken as included in the hour's record; it is billed, late
// if its hour was already sent.
func TestModelDynamoDBIndexLag(t *testing.T) {
	for seed := range 2 {
		lag := newIndexLag(uint64(seed), 0.2)
		st := MustOpen(t, lag.option)
		metermodel.Run(t, metermodel.Config{Seed: uint64(300 + seed), Steps: 200, CheckEvery: 10, Store: st,
			SetClock: func(f func() time.Time) { st.Now = f }, StoreFaultRate: 0.05, AWSFaultRate: 0.05, Contracts: seed == 1,
			Settle: lag.stop})
		t.Logf("seed %d: %d index items hidden", seed, lag.Hidden)
	}
}

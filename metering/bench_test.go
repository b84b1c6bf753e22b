package metering_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/sqlite"
)

// seedSubscribers stores n license-based subscribers directly.
func seedSubscribers(tb testing.TB, db *sqlite.DB, n int) []string {
	tb.Helper()
	keys := make([]string, n)
	for i := range n {
		lid := fmt.Sprintf("l-%032d", i)
		s := &mpsaas.Subscriber{
			Key:        "license:" + lid,
			Identity:   mpsaas.Identity{CustomerAWSAccountID: fmt.Sprintf("%012d", i+1), LicenseID: lid, ProductCode: "bench"},
			LicenseArn: "arn:aws:license-manager::" + fmt.Sprintf("%012d", i+1) + ":license:" + lid,
			State:      mpsaas.State{Status: mpsaas.StatusActive},
		}
		if err := db.SaveSubscriber(context.Background(), s, nil, nil); err != nil {
			tb.Fatal(err)
		}
		keys[i] = s.Key
	}
	return keys
}

// BenchmarkIngest measures batched usage ingestion into SQLite: requests of
// 10,000 records for 1,000 buyers and 3 dimensions.
func BenchmarkIngest(b *testing.B) {
	ctx := context.Background()
	db, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "bench.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	keys := seedSubscribers(b, db, 1000)
	svc := &metering.Service{Store: db, Subscribers: db}
	dims := []string{"users", "requests", "storage"}
	now := time.Now().UTC()
	const per = 10000
	reqs := make([][]mpsaas.Usage, 0, 16)
	for r := 0; r < 16; r++ {
		recs := make([]mpsaas.Usage, per)
		for i := range recs {
			recs[i] = mpsaas.Usage{Customer: keys[(r*per+i)%len(keys)], Dimension: dims[i%3], Quantity: int64(i % 50), Time: now.Add(-time.Duration(i%3600) * time.Second)}
		}
		reqs = append(reqs, recs)
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := svc.Ingest(ctx, mpsaas.UsageRequest{IdempotencyKey: fmt.Sprintf("bench-%d", i), Records: reqs[i%len(reqs)]}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*per)/time.Since(start).Seconds(), "records/s")
}

package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BenchmarkMeter1M is `mpsaas bench` as a Go benchmark: it ingests 1,000,000
// usage records of 100,000 buyers x 3 dimensions into SQLite and meters them
// with `mpsaas meter run` against the emulator. Run it with
//
//	go test ./cmd/mpsaas -run '^$' -bench Meter1M -benchtime 1x
//
// (-short: 100,000 records of 10,000 buyers).
func BenchmarkMeter1M(b *testing.B) {
	buyers, records := 100000, 1000000
	if testing.Short() {
		buyers, records = 10000, 100000
	}
	dir := b.TempDir()
	bin := filepath.Join(dir, "mpsaas")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	var progress io.Writer = io.Discard
	if testing.Verbose() {
		progress = os.Stderr
	}
	for i := 0; i < b.N; i++ {
		work := filepath.Join(dir, "run")
		if err := os.RemoveAll(work); err != nil {
			b.Fatal(err)
		}
		if err := os.MkdirAll(work, 0o755); err != nil {
			b.Fatal(err)
		}
		res, err := bench(context.Background(), bin, work, buyers, records, progress)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(res.IngestPerSecond, "ingest-records/s")
		b.ReportMetric(res.MeterDuration.Seconds(), "meter-s")
		b.ReportMetric(float64(res.MeterCalls), "BatchMeterUsage-calls")
		b.ReportMetric(float64(res.MeterMaxRSSBytes)/(1<<20), "meter-peak-RSS-MB")
		b.Logf("\n%s", res)
	}
}

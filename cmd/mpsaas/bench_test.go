package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas/internal/testenv"
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

// TestBenchHTTP runs `mpsaas bench http` small: a real serve child, clients
// over HTTP, status and idle measurement. Slow (builds the binary): runs
// when MPSAAS_SLOW_TESTS=1.
func TestBenchHTTP(t *testing.T) {
	if os.Getenv("MPSAAS_SLOW_TESTS") != "1" {
		t.Skip("set MPSAAS_SLOW_TESTS=1 to run the HTTP benchmark test")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "mpsaas")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	o := HTTPBenchOptions{Buyers: 7, Preload: 500, Clients: 3, RequestRecords: 4, Duration: time.Second, StatusRequests: 3, Idle: time.Second, MeterInterval: time.Second}
	res, err := benchHTTP(context.Background(), bin, dir, o, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", res)
	if res.Failed != 0 || res.Requests == 0 || res.Records != 4*res.Requests || res.StatusRows != int64(500+res.Records) {
		t.Errorf("result %+v", res)
	}
	if res.P99 <= 0 || res.StatusP99 <= 0 || res.ServeMaxRSSBytes <= 0 {
		t.Errorf("missing measurements: %+v", res)
	}
	// Idle, serve has checkpointed and truncated its WAL.
	if res.WALBytes != 0 {
		t.Errorf("WAL after idle: %d bytes, want 0", res.WALBytes)
	}
	// The CLI validates its flags.
	var stderr strings.Builder
	if err := run(context.Background(), []string{"bench", "http", "--request-records", "0"}, os.Getenv, io.Discard, &stderr); err == nil || !strings.Contains(err.Error(), "--request-records") {
		t.Errorf("bench http --request-records 0: %v", err)
	}
}

// TestBenchDynamoDB runs `mpsaas bench dynamodb` small, through its CLI,
// against DynamoDB Local: ingestion, meter invocations, units, hot keys,
// and billed == ingested (it fails otherwise).
func TestBenchDynamoDB(t *testing.T) {
	endpoint := testenv.DynamoDB(t)
	var out, stderr strings.Builder
	if err := run(context.Background(), []string{"bench", "dynamodb", "--endpoint", endpoint, "--buyers", "30", "--hours", "2", "--timeout", "60s"},
		os.Getenv, &out, &stderr); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out.String(), stderr.String())
	}
	t.Logf("\n%s", out.String())
	for _, want := range []string{"= 180 records", "finished", "BatchMeterUsage calls 8 (minimum 8)", "WRU", "hot keys", "BenchMeterHours", "DynamoDB requests: "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	for _, args := range [][]string{{"--buyers", "0"}, {"--hours", "24"}, {"--dimensions", "4"}, {"--timeout", "1s"}} {
		if err := run(context.Background(), append([]string{"bench", "dynamodb", "--endpoint", endpoint}, args...), os.Getenv, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("bench dynamodb %v: %v, want an error naming the flag", args, err)
		}
	}
}

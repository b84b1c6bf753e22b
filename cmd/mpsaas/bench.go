package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/sqlite"
)

// BenchResult is what `mpsaas bench` measures.
type BenchResult struct {
	Buyers, Dimensions, Records int
	// Ingestion into SQLite through metering.Service.Ingest, 10,000 records a request.
	IngestDuration   time.Duration
	IngestPerSecond  float64
	MeterDuration    time.Duration // wall time of `mpsaas meter run`
	MeterCalls       int           // BatchMeterUsage calls made
	MinimumCalls     int           // one per 25 aggregated records
	MeterRecords     int           // aggregated (buyer, dimension, hour) records billed
	MeterMaxRSSBytes int64         // peak RSS of the `mpsaas meter run` process
	BilledQuantity   int64
	IngestedQuantity int64
}

func (r BenchResult) String() string {
	return fmt.Sprintf(`ingestion:  %d records in %s = %.0f records/s (SQLite, 10,000-record requests)
metering:   %d records for %d buyers x %d dimensions -> %d hourly records in %s
            BatchMeterUsage calls %d (minimum %d), peak RSS of "mpsaas meter run" %.0f MB
billed:     quantity %d of %d ingested`,
		r.Records, r.IngestDuration.Round(time.Millisecond), r.IngestPerSecond,
		r.Records, r.Buyers, r.Dimensions, r.MeterRecords, r.MeterDuration.Round(time.Millisecond),
		r.MeterCalls, r.MinimumCalls, float64(r.MeterMaxRSSBytes)/(1<<20),
		r.BilledQuantity, r.IngestedQuantity)
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mpsaas bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	buyers := fs.Int("buyers", 100000, "number of buyers")
	records := fs.Int("records", 1000000, "usage records to ingest and meter")
	dir := fs.String("dir", "", "work directory (default: a temporary one, removed afterwards)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: mpsaas bench [flags]\n\nMeasures usage ingestion into SQLite and one metering run (\"mpsaas meter run\"\nin a child process) of the usage of many buyers x 3 dimensions against the\nbuilt-in emulator, then checks that exactly the ingested quantity was billed.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *buyers < 1 || *records < *buyers {
		return errors.New("--buyers must be at least 1 and --records at least --buyers")
	}
	self, cleanup, err := benchSetup(dir)
	if err != nil {
		return err
	}
	defer cleanup()
	res, err := bench(ctx, self, *dir, *buyers, *records, stdout)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, res)
	return nil
}

// bench runs the benchmark with the mpsaas binary at bin.
func bench(ctx context.Context, bin, dir string, buyers, records int, progress io.Writer) (BenchResult, error) {
	res := BenchResult{Buyers: buyers, Dimensions: 3, Records: records}
	dims := []string{"users", "requests", "storage"}
	cfg := emulator.DefaultConfig()
	cfg.NotificationLog = 1
	if os.Getenv("MPSAAS_BENCH_EMULATOR_LOG") == "1" {
		cfg.Logger = slog.New(slog.NewTextHandler(progress, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	em := emulator.New(cfg)
	if _, err := em.AddProduct(emulator.Product{Code: "bench", Type: emulator.ProductSubscription, LicenseBased: true,
		Dimensions: []emulator.Dimension{{Name: dims[0]}, {Name: dims[1]}, {Name: dims[2]}}}); err != nil {
		return res, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	srv := &http.Server{Handler: em.Handler()}
	go srv.Serve(ln)
	defer srv.Close()
	url := "http://" + ln.Addr().String()

	dbPath := filepath.Join(dir, "bench.db")
	db, err := sqlite.Open(ctx, dbPath)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(progress, "setting up %d buyers...\n", buyers)
	keys := make([]string, buyers)
	for i := range buyers {
		acct := fmt.Sprintf("%012d", 100000000000+i)
		if _, err := em.AddBuyer(emulator.Buyer{AccountID: acct}); err != nil {
			return res, err
		}
		sr, err := em.Subscribe(emulator.SubscribeOptions{StartedAt: em.Clock.Now().Add(-24 * time.Hour), ProductCode: "bench", BuyerAccountID: acct})
		if err != nil {
			return res, err
		}
		sub := &mpsaas.Subscriber{
			Key:        mpsaas.SubscriberKey(mpsaas.Customer{LicenseArn: sr.Subscription.LicenseArn}),
			Identity:   mpsaas.Identity{CustomerAWSAccountID: acct, LicenseID: mpsaas.LicenseID(sr.Subscription.LicenseArn), ProductCode: "bench"},
			LicenseArn: sr.Subscription.LicenseArn,
			State:      mpsaas.State{Status: mpsaas.StatusActive},
		}
		if err := db.SaveSubscriber(ctx, sub, nil, nil); err != nil {
			return res, err
		}
		keys[i] = sub.Key
	}

	// Every buyer uses every dimension in one closed hour (two hours ago, so
	// it is sealed however close to the top of the hour the run starts).
	hour := mpsaas.Hour(time.Now()).Add(-2 * time.Hour)
	svc := &metering.Service{Store: db, Subscribers: db}
	const per = 10000
	recs := make([]mpsaas.Usage, 0, per)
	fmt.Fprintf(progress, "ingesting %d usage records...\n", records)
	start := time.Now()
	for i := range records {
		q := int64(i%9 + 1)
		res.IngestedQuantity += q
		recs = append(recs, mpsaas.Usage{Customer: keys[i%buyers], Dimension: dims[(i/buyers)%3], Quantity: q, Time: hour.Add(time.Duration(i%3600) * time.Second)})
		if len(recs) == per || i == records-1 {
			if _, err := svc.Ingest(ctx, mpsaas.UsageRequest{IdempotencyKey: fmt.Sprintf("bench-%d", i), Records: recs}); err != nil {
				return res, err
			}
			recs = recs[:0]
		}
	}
	res.IngestDuration = time.Since(start)
	res.IngestPerSecond = float64(records) / res.IngestDuration.Seconds()
	db.Close()

	fmt.Fprintf(progress, "metering (mpsaas meter run)...\n")
	cmd := exec.CommandContext(ctx, bin, "meter", "run", "--db", dbPath, "--metering-endpoint", url, "--entitlement-endpoint", url,
		"--listing", "subscriptions", "--log-level", "warn")
	// The child reports its own peak RSS (VmHWM): the rusage of a child
	// started with vfork also counts the parent's pages, which here include
	// the emulator's.
	var stderrBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = progress, io.MultiWriter(progress, &stderrBuf)
	cmd.Env = append(os.Environ(), "MPSAAS_MEMSTATS=1")
	start = time.Now()
	if err := cmd.Run(); err != nil {
		return res, fmt.Errorf("meter run: %w", err)
	}
	res.MeterDuration = time.Since(start)
	if m := regexp.MustCompile(`VmHWM: (\d+) kB`).FindStringSubmatch(stderrBuf.String()); m != nil {
		kb, _ := strconv.ParseInt(m[1], 10, 64)
		res.MeterMaxRSSBytes = kb * 1024
	}
	res.MeterCalls = em.Calls()["BatchMeterUsage"]
	billed := em.Billed("")
	res.MeterRecords = len(billed)
	res.MinimumCalls = (len(billed) + mpsaas.MaxBatchRecords - 1) / mpsaas.MaxBatchRecords
	for _, b := range billed {
		res.BilledQuantity += b.Quantity
	}
	if res.BilledQuantity != res.IngestedQuantity {
		return res, fmt.Errorf("billed quantity %d != ingested %d", res.BilledQuantity, res.IngestedQuantity)
	}
	return res, nil
}

// benchSetup finds this binary and, when *dir is empty, makes a temporary
// work directory that cleanup removes.
func benchSetup(dir *string) (self string, cleanup func(), err error) {
	cleanup = func() {}
	if self, err = os.Executable(); err != nil {
		return "", cleanup, err
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "mpsaas-bench-")
		if err != nil {
			return "", cleanup, err
		}
		*dir, cleanup = d, func() { os.RemoveAll(d) }
	}
	return self, cleanup, nil
}

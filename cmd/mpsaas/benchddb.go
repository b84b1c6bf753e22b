package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"runtime/metrics"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/dynamodb"
	"github.com/mpsaas/mpsaas/internal/config"
)

// DynamoDBBenchOptions configures `mpsaas bench dynamodb`.
type DynamoDBBenchOptions struct {
	Endpoint    string        // DynamoDB (Local) endpoint
	Buyers      int           // buyers, each using every dimension in every hour
	Dimensions  int           // dimensions per buyer (at most 3)
	Hours       int           // closed hours of usage (23: a meter that was down for a day)
	Timeout     time.Duration // the meter function's time limit per invocation
	Concurrency int           // ingestion requests in flight
	Invocations int           // meter invocations before giving up
}

// DynamoDBBenchResult is what it measures.
type DynamoDBBenchResult struct {
	DynamoDBBenchOptions
	Records         int // usage records ingested (25 a request)
	Pairs           int // (buyer, dimension, hour) records AWS billed
	IngestDuration  time.Duration
	IngestPerSecond float64
	IngestWRU       float64 // per record
	IngestRRU       float64 // per record
	Invocations     int     // meter invocations until nothing was left
	Finished        bool    // metering finished within Options.Invocations
	LongestRun      time.Duration
	TimedOut        int     // invocations cut off at the time limit
	PeakHeapBytes   uint64  // largest heap growth of one invocation
	Calls           int     // BatchMeterUsage calls
	MinimumCalls    int     // ceil(pairs / 25)
	MeterWRU        float64 // per billed pair
	MeterRRU        float64 // per billed pair
	// MeterRequests counts the meter's DynamoDB requests by operation.
	MeterRequests  map[string]int64
	BilledQuantity int64
	IngestedQty    int64
	// HotKeys: per table or index, the busiest partition key's share of
	// the writes over the whole run, and its writes per second at a
	// sustained 5,000 ingested records per second.
	HotKeys dynamodb.Capacity
}

func (r DynamoDBBenchResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "buyers x dimensions x hours: %d x %d x %d = %d records (25 a request, %d in flight)\n", r.Buyers, r.Dimensions, r.Hours, r.Records, r.Concurrency)
	fmt.Fprintf(&b, "ingestion:   %.0f records/s (%s); %.2f WRU and %.2f RRU per record\n", r.IngestPerSecond, r.IngestDuration.Round(time.Millisecond), r.IngestWRU, r.IngestRRU)
	status := "finished"
	if !r.Finished {
		status = "NOT finished"
	}
	fmt.Fprintf(&b, "meter:       %d invocations (%s; %d cut off at the %s limit), longest %s, peak heap growth %.0f MB\n",
		r.Invocations, status, r.TimedOut, r.Timeout, r.LongestRun.Round(time.Millisecond), float64(r.PeakHeapBytes)/(1<<20))
	fmt.Fprintf(&b, "             BatchMeterUsage calls %d (minimum %d); %.2f WRU and %.2f RRU per billed pair (%d pairs)\n", r.Calls, r.MinimumCalls, r.MeterWRU, r.MeterRRU, r.Pairs)
	ops := make([]string, 0, len(r.MeterRequests))
	for op := range r.MeterRequests {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	fmt.Fprintf(&b, "             DynamoDB requests:")
	for _, op := range ops {
		fmt.Fprintf(&b, " %s %d", op, r.MeterRequests[op])
	}
	fmt.Fprintf(&b, "\nbilled:      quantity %d of %d ingested\n", r.BilledQuantity, r.IngestedQty)
	fmt.Fprintf(&b, "hot keys (busiest partition key per table or index; writes/s at 5,000 records/s):\n")
	names := make([]string, 0, len(r.HotKeys.HotKeys))
	for t := range r.HotKeys.HotKeys {
		names = append(names, t)
	}
	sort.Strings(names)
	for _, t := range names {
		h := r.HotKeys.HotKeys[t]
		short := t
		if i := strings.IndexByte(t, '-'); i > 0 {
			short = t[:i] + t[strings.IndexByte(t+"/", '/'):]
		}
		fmt.Fprintf(&b, "  %-40s %6.1f%% of %d writes, key %.30q: %.0f writes/s\n", short, 100*float64(h.Writes)/float64(max(h.Total, 1)), h.Total, h.Key,
			5000*float64(h.Writes)/float64(max(r.Records, 1)))
	}
	return b.String()
}

func runBenchDynamoDB(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mpsaas bench dynamodb", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o DynamoDBBenchOptions
	fs.StringVar(&o.Endpoint, "endpoint", "http://127.0.0.1:8000", "DynamoDB endpoint `URL` (DynamoDB Local: java -jar DynamoDBLocal.jar -inMemory -sharedDb)")
	fs.IntVar(&o.Buyers, "buyers", 1000, "number of buyers")
	fs.IntVar(&o.Dimensions, "dimensions", 3, "dimensions each buyer uses (1 to 3)")
	fs.IntVar(&o.Hours, "hours", 1, "closed hours of usage per buyer and dimension (23: the meter was down for a day)")
	fs.DurationVar(&o.Timeout, "timeout", 300*time.Second, "time limit of one meter invocation (the meter function's timeout)")
	fs.IntVar(&o.Concurrency, "concurrency", 16, "ingestion requests in flight")
	fs.IntVar(&o.Invocations, "invocations", 20, "meter invocations before giving up")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: mpsaas bench dynamodb [flags]\n\nMeasures the serverless runtime's metering on DynamoDB (DynamoDB Local): usage\ningested in requests of 25 records through the usage service, then meter\ninvocations as the meter function runs them (its time limit, one at a time)\nagainst the built-in emulator until everything is billed. It reports records/s,\ninvocations, peak heap, BatchMeterUsage calls, read and write units (from the\nConsumedCapacity DynamoDB returns) and the busiest partition key of every table\nand index, and checks that exactly the ingested quantity was billed.\n\nFlags:\n")
		config.PrintFlags(fs)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case o.Buyers < 1:
		return usageError{errors.New("bench dynamodb: --buyers must be at least 1")}
	case o.Dimensions < 1 || o.Dimensions > 3:
		return usageError{errors.New("bench dynamodb: --dimensions must be 1 to 3")}
	case o.Hours < 1 || o.Hours > 23:
		return usageError{errors.New("bench dynamodb: --hours must be 1 to 23 (BatchMeterUsage takes records up to 24 hours old)")}
	case o.Timeout < 10*time.Second:
		return usageError{errors.New("bench dynamodb: --timeout must be at least 10s")}
	case o.Concurrency < 1 || o.Concurrency > 256:
		return usageError{errors.New("bench dynamodb: --concurrency must be 1 to 256")}
	case o.Invocations < 1:
		return usageError{errors.New("bench dynamodb: --invocations must be at least 1")}
	}
	res, err := benchDynamoDB(ctx, o, stderr)
	fmt.Fprint(stdout, res)
	return err
}

// benchDynamoDB runs the benchmark; progress goes to progress.
func benchDynamoDB(ctx context.Context, o DynamoDBBenchOptions, progress io.Writer) (DynamoDBBenchResult, error) {
	res := DynamoDBBenchResult{DynamoDBBenchOptions: o}
	dims := []string{"users", "requests", "storage"}[:o.Dimensions]

	// The emulator, with one license-based product, in a process of its
	// own (see runBenchEmulator).
	em, err := startBenchEmulator(ctx, dims, o.Concurrency)
	if err != nil {
		return res, err
	}
	defer em.Close()
	emURL := em.URL

	// Fresh tables, and a client that counts what every call costs.
	static := credentials.NewStaticCredentialsProvider("bench", "bench", "")
	plain := ddb.New(ddb.Options{Region: "us-east-1", BaseEndpoint: aws.String(o.Endpoint), Credentials: static})
	capacity := dynamodb.NewCapacityMeter(plain)
	client := ddb.New(ddb.Options{Region: "us-east-1", BaseEndpoint: aws.String(o.Endpoint), Credentials: static}, capacity.Option)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	suffix := hex.EncodeToString(b)
	tables := dynamodb.Tables{Subscribers: "BenchSubscribers-" + suffix, Events: "BenchEvents-" + suffix, Outbox: "BenchOutbox-" + suffix,
		MeterHours: "BenchMeterHours-" + suffix}
	base := dynamodb.New(client, tables)
	base.Now = em.Now
	store := dynamodb.NewHourStore(base)
	setup := dynamodb.New(plain, tables) // table creation and buyers are not measured
	if err := setup.CreateTables(ctx); err != nil {
		return res, fmt.Errorf("create tables at %s: %w", o.Endpoint, err)
	}
	defer func() {
		for _, t := range []string{tables.Subscribers, tables.Events, tables.Outbox, tables.MeterHours} {
			_, _ = plain.DeleteTable(context.WithoutCancel(ctx), &ddb.DeleteTableInput{TableName: aws.String(t)})
		}
	}()

	// The meter function's services, built the way the Lambda builds them.
	var cfg config.Config
	cfg.LoadEnv(config.Lambda, func(k string) string {
		return map[string]string{"MPSAAS_FUNCTION": config.RoleMeter, "MPSAAS_LISTING": mpsaas.ListingSubscriptions}[k]
	})
	if err := cfg.Validate(config.Lambda); err != nil {
		return res, err
	}
	cfg.MeteringEndpoint, cfg.EntitlementEndpoint = emURL, emURL
	logger := slog.New(slog.NewTextHandler(progress, &slog.HandlerOptions{Level: slog.LevelWarn}))
	svc := cfg.Build(config.Deps{Runtime: config.Lambda, Store: store, AWS: aws.Config{Region: "us-east-1", Credentials: static}, Logger: logger,
		Clock: mpsaas.ClockFunc(em.Now)})

	fmt.Fprintf(progress, "setting up %d buyers...\n", o.Buyers)
	keys := make([]string, o.Buyers)
	if err := parallel(ctx, o.Buyers, o.Concurrency, func(i int) error {
		acct := fmt.Sprintf("%012d", 100000000000+i)
		sr, err := em.subscribe(ctx, acct, em.Now().Add(-24*time.Hour))
		if err != nil {
			return err
		}
		sub := &mpsaas.Subscriber{
			Key:        mpsaas.SubscriberKey(mpsaas.Customer{LicenseArn: sr.Subscription.LicenseArn}),
			Identity:   mpsaas.Identity{CustomerAWSAccountID: acct, LicenseID: mpsaas.LicenseID(sr.Subscription.LicenseArn), ProductCode: "bench"},
			LicenseArn: sr.Subscription.LicenseArn,
			State:      mpsaas.State{Status: mpsaas.StatusActive},
		}
		keys[i] = sub.Key
		return setup.SaveSubscriber(ctx, sub, nil, nil)
	}); err != nil {
		return res, fmt.Errorf("set up buyers: %w", err)
	}

	// Usage: every buyer, every dimension, every hour; the hours are closed
	// (the newest just now), requests of 25 records.
	res.Records = o.Buyers * len(dims) * o.Hours
	requests := (res.Records + 24) / 25
	last := mpsaas.Hour(em.Now()).Add(-time.Hour)
	record := func(i int) mpsaas.Usage {
		buyer, rest := i%o.Buyers, i/o.Buyers
		dim, hour := rest%len(dims), rest/len(dims)
		return mpsaas.Usage{Customer: keys[buyer], Dimension: dims[dim], Quantity: int64(i%9 + 1),
			Time: last.Add(-time.Duration(hour) * time.Hour).Add(time.Duration(i%3600) * time.Second)}
	}
	for i := range res.Records {
		res.IngestedQty += int64(i%9 + 1)
	}
	fmt.Fprintf(progress, "ingesting %d usage records in %d requests...\n", res.Records, requests)
	before := capacity.Snapshot()
	start := time.Now()
	var done atomic.Int64
	if err := parallel(ctx, requests, o.Concurrency, func(r int) error {
		recs := make([]mpsaas.Usage, 0, 25)
		for i := r * 25; i < min((r+1)*25, res.Records); i++ {
			recs = append(recs, record(i))
		}
		if _, err := svc.Metering.Ingest(ctx, mpsaas.UsageRequest{IdempotencyKey: fmt.Sprintf("bench-%d", r), Records: recs}); err != nil {
			return err
		}
		if n := done.Add(1); n%2000 == 0 {
			fmt.Fprintf(progress, "  %d of %d requests\n", n, requests)
		}
		return nil
	}); err != nil {
		return res, fmt.Errorf("ingest: %w", err)
	}
	res.IngestDuration = time.Since(start)
	res.IngestPerSecond = float64(res.Records) / res.IngestDuration.Seconds()
	ingest := capacity.Snapshot().Sub(before)
	res.IngestWRU, res.IngestRRU = ingest.WriteUnits/float64(res.Records), ingest.ReadUnits/float64(res.Records)

	// Meter invocations, one at a time, each with the function's limit,
	// on a clock that runs from 10 minutes past the hour.
	if err := em.resume(ctx); err != nil {
		return res, err
	}
	before = capacity.Snapshot()
	for res.Invocations < o.Invocations {
		res.Invocations++
		fmt.Fprintf(progress, "meter invocation %d (time limit %s)...\n", res.Invocations, o.Timeout)
		runtime.GC()
		base := heapBytes()
		var peak atomic.Uint64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			t := time.NewTicker(10 * time.Millisecond)
			defer t.Stop()
			for {
				if h := heapBytes(); h > peak.Load() {
					peak.Store(h)
				}
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		})
		ictx, cancel := context.WithTimeout(ctx, o.Timeout)
		start := time.Now()
		err := svc.Metering.RunWhileTime(ictx, 10*time.Second, nil)
		took := time.Since(start)
		timedOut := ictx.Err() != nil
		cancel()
		close(stop)
		wg.Wait()
		res.LongestRun = max(res.LongestRun, took)
		if p := peak.Load(); p > base {
			res.PeakHeapBytes = max(res.PeakHeapBytes, p-base)
		}
		switch {
		case timedOut:
			res.TimedOut++
			fmt.Fprintf(progress, "meter invocation %d: cut off at %s (%v)\n", res.Invocations, o.Timeout, err)
		case err != nil:
			return res, fmt.Errorf("meter invocation %d: %w", res.Invocations, err)
		default:
			fmt.Fprintf(progress, "meter invocation %d: %s\n", res.Invocations, took.Round(time.Millisecond))
		}
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		more, err := svc.Metering.Outstanding(ctx)
		if err != nil {
			return res, err
		}
		if !more && !timedOut {
			res.Finished = true
			break
		}
	}
	meter := capacity.Snapshot().Sub(before)
	res.HotKeys = capacity.Snapshot()
	if res.Calls, res.Pairs, res.BilledQuantity, err = em.billed(ctx); err != nil {
		return res, err
	}
	res.MinimumCalls = (res.Pairs + mpsaas.MaxBatchRecords - 1) / mpsaas.MaxBatchRecords
	res.MeterRequests = meter.Requests
	res.MeterWRU, res.MeterRRU = meter.WriteUnits/float64(max(res.Pairs, 1)), meter.ReadUnits/float64(max(res.Pairs, 1))
	switch {
	case !res.Finished:
		return res, fmt.Errorf("metering did not finish in %d invocations", res.Invocations)
	case res.BilledQuantity != res.IngestedQty:
		return res, fmt.Errorf("billed quantity %d != ingested %d", res.BilledQuantity, res.IngestedQty)
	}
	return res, nil
}

// heapBytes is the live heap (objects) now.
func heapBytes() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// parallel runs fn(0..n-1) with at most conc at once; the first error stops it.
func parallel(ctx context.Context, n, conc int, fn func(int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

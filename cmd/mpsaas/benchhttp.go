package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/sqlite"
)

// HTTPBenchOptions configures `mpsaas bench http`.
type HTTPBenchOptions struct {
	Buyers         int           // buyers the usage is spread over
	Preload        int           // usage records stored before serve starts
	Clients        int           // concurrent HTTP clients
	RequestRecords int           // records per POST /v1/usage
	Duration       time.Duration // how long the clients send
	StatusRequests int           // GET /v1/meter/status requests timed
	Idle           time.Duration // how long serve is watched idle
	MeterInterval  time.Duration // serve's MPSAAS_METER_INTERVAL
}

// HTTPBenchResult is what `mpsaas bench http` measures on a running
// `mpsaas serve` (a child process with the embedded emulator).
type HTTPBenchResult struct {
	HTTPBenchOptions
	Requests, Records int
	Failed            int // requests not answered 202
	PerSecond         float64
	P50, P99, Max     time.Duration
	StatusRows        int64 // usage rows when status was timed
	StatusP50         time.Duration
	StatusP99         time.Duration
	IdleCPU           float64 // share of one core serve used while idle
	WALBytes          int64   // size of the SQLite WAL after the idle period
	ServeMaxRSSBytes  int64
}

func (r HTTPBenchResult) String() string {
	return fmt.Sprintf(`ingestion:  %d clients x %d-record requests for %s: %d records in %d requests = %.0f records/s
            latency p50 %s, p99 %s, max %s; failed requests %d
status:     GET /v1/meter/status at %d usage rows: p50 %s, p99 %s (%d requests)
idle:       serve used %.1f%% of a core over %s (meter interval %s); WAL %.1f MB; peak RSS %.0f MB`,
		r.Clients, r.RequestRecords, r.Duration, r.Records, r.Requests, r.PerSecond,
		ms(r.P50), ms(r.P99), ms(r.Max), r.Failed,
		r.StatusRows, ms(r.StatusP50), ms(r.StatusP99), r.StatusRequests,
		100*r.IdleCPU, r.Idle, r.MeterInterval, float64(r.WALBytes)/(1<<20), float64(r.ServeMaxRSSBytes)/(1<<20))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func runBenchHTTP(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mpsaas bench http", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := HTTPBenchOptions{}
	fs.IntVar(&o.Buyers, "buyers", 1000, "buyers the usage is spread over")
	fs.IntVar(&o.Preload, "preload", 0, "usage records stored (pending, in the current hour) before serve starts, e.g. 1000000 to time the status at scale")
	fs.IntVar(&o.Clients, "clients", 16, "concurrent HTTP clients")
	fs.IntVar(&o.RequestRecords, "request-records", 25, "usage records per POST /v1/usage request (1 to 10000)")
	fs.DurationVar(&o.Duration, "duration", 20*time.Second, "how long the clients send usage")
	fs.IntVar(&o.StatusRequests, "status-requests", 100, "GET /v1/meter/status requests to time")
	fs.DurationVar(&o.Idle, "idle", 30*time.Second, "how long serve is watched while idle (CPU use, WAL size)")
	fs.DurationVar(&o.MeterInterval, "meter-interval", 5*time.Second, "serve's metering interval (MPSAAS_METER_INTERVAL) during the benchmark")
	dir := fs.String("dir", "", "work directory (default: a temporary one, removed afterwards)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: mpsaas bench http [flags]

Starts "mpsaas serve" (embedded emulator, a fresh SQLite database) as a child
process and measures, through its HTTP API:
  - usage ingestion: N clients POST /v1/usage with a chosen number of records
    per request, as fast as they are answered (records/s, latency percentiles);
  - GET /v1/meter/status latency at the number of usage rows stored;
  - serve's CPU use while idle, and the size of its SQLite WAL.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case o.Buyers < 1:
		return errors.New("--buyers must be at least 1")
	case o.Clients < 1 || o.Clients > 1024:
		return errors.New("--clients must be from 1 to 1024")
	case o.RequestRecords < 1 || o.RequestRecords > metering.MaxRecordsPerRequest:
		return fmt.Errorf("--request-records must be from 1 to %d", metering.MaxRecordsPerRequest)
	case o.Preload < 0 || o.StatusRequests < 0 || o.Duration < 0 || o.Idle < 0:
		return errors.New("--preload, --status-requests, --duration and --idle cannot be negative")
	case o.MeterInterval < time.Second:
		return errors.New("--meter-interval must be at least 1s")
	}
	self, cleanup, err := benchSetup(dir)
	if err != nil {
		return err
	}
	defer cleanup()
	res, err := benchHTTP(ctx, self, *dir, o, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, res)
	return nil
}

// benchUsageBody is the JSON of POST /v1/usage.
type benchUsageBody struct {
	IdempotencyKey string         `json:"idempotencyKey"`
	Records        []mpsaas.Usage `json:"records"`
}

const benchAPIKey = "bench-usage-api-key-0123456789"

// benchHTTP runs the HTTP benchmark with the mpsaas binary at bin.
func benchHTTP(ctx context.Context, bin, dir string, o HTTPBenchOptions, progress io.Writer) (HTTPBenchResult, error) {
	res := HTTPBenchResult{HTTPBenchOptions: o}
	dbPath := filepath.Join(dir, "bench.db")
	db, err := sqlite.Open(ctx, dbPath)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(progress, "setting up %d buyers...\n", o.Buyers)
	keys := make([]string, o.Buyers)
	for i := range o.Buyers {
		acct := fmt.Sprintf("%012d", 200000000000+i)
		arn := "arn:aws:license-manager::123456789012:license:l-bench" + strconv.Itoa(i)
		sub := &mpsaas.Subscriber{
			Key:        mpsaas.SubscriberKey(mpsaas.Customer{LicenseArn: arn}),
			Identity:   mpsaas.Identity{CustomerAWSAccountID: acct, LicenseID: mpsaas.LicenseID(arn), ProductCode: "bench"},
			LicenseArn: arn,
			State:      mpsaas.State{Status: mpsaas.StatusActive},
		}
		if err := db.SaveSubscriber(ctx, sub, nil, nil); err != nil {
			db.Close()
			return res, err
		}
		keys[i] = sub.Key
	}
	dims := []string{"users", "requests"}
	// Usage is timed in the current hour, so serve's meter loop has pending
	// usage to look at but nothing to send while it is measured.
	usageTime := func() time.Time { return time.Now().UTC().Truncate(time.Second) }
	if o.Preload > 0 {
		fmt.Fprintf(progress, "preloading %d usage records...\n", o.Preload)
		svc := &metering.Service{Store: db, Subscribers: db}
		const per = 10000
		recs := make([]mpsaas.Usage, 0, per)
		for i := range o.Preload {
			recs = append(recs, mpsaas.Usage{Customer: keys[i%o.Buyers], Dimension: dims[i%2], Quantity: 1, Time: usageTime()})
			if len(recs) == per || i == o.Preload-1 {
				if _, err := svc.Ingest(ctx, mpsaas.UsageRequest{IdempotencyKey: fmt.Sprintf("preload-%d", i), Records: recs}); err != nil {
					db.Close()
					return res, err
				}
				recs = recs[:0]
			}
		}
	}
	if err := db.Close(); err != nil {
		return res, err
	}

	addr, err := freeAddr()
	if err != nil {
		return res, err
	}
	emAddr, err := freeAddr()
	if err != nil {
		return res, err
	}
	cmd := exec.CommandContext(ctx, bin, "serve")
	cmd.Env = append(os.Environ(), "MPSAAS_DB="+dbPath, "MPSAAS_ADDR="+addr, "MPSAAS_EMULATOR_ADDR="+emAddr, "MPSAAS_EMULATOR=on",
		"MPSAAS_USAGE_API_KEYS="+benchAPIKey, "MPSAAS_LOG_LEVEL=warn", "MPSAAS_METER_INTERVAL="+o.MeterInterval.String(), "MPSAAS_MEMSTATS=1")
	var serveErr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &lockedWriter{w: &serveErr}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 20 * time.Second
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start serve: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			<-exited
		}
	}()
	base := "http://" + addr
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: o.Clients + 1, MaxConnsPerHost: o.Clients + 1}}
	if err := waitReady(ctx, client, base, exited); err != nil {
		return res, fmt.Errorf("%w\n%s", err, serveErr.String())
	}

	// Ingestion: every client sends distinct requests as fast as answered.
	fmt.Fprintf(progress, "ingesting: %d clients x %d records a request for %s...\n", o.Clients, o.RequestRecords, o.Duration)
	var seq atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var failed atomic.Int64
	var firstErr error
	deadline := time.Now().Add(o.Duration)
	start := time.Now()
	var wg sync.WaitGroup
	for c := range o.Clients {
		wg.Go(func() {
			var mine []time.Duration
			body := make([]mpsaas.Usage, o.RequestRecords)
			for time.Now().Before(deadline) && ctx.Err() == nil {
				n := seq.Add(1)
				for i := range body {
					k := int(n)*o.RequestRecords + i
					body[i] = mpsaas.Usage{Customer: keys[k%o.Buyers], Dimension: dims[k%2], Quantity: 1, Time: usageTime()}
				}
				b, _ := json.Marshal(benchUsageBody{IdempotencyKey: fmt.Sprintf("bench-%d-%d", c, n), Records: body})
				t0 := time.Now()
				status, err := benchPost(ctx, client, base+"/v1/usage", b)
				d := time.Since(t0)
				if err != nil || status != http.StatusAccepted {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("POST /v1/usage: status %d: %v", status, err)
					}
					mu.Unlock()
					continue
				}
				mine = append(mine, d)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	res.Requests, res.Failed = len(lat), int(failed.Load())
	res.Records = res.Requests * o.RequestRecords
	res.PerSecond = float64(res.Records) / elapsed.Seconds()
	res.P50, res.P99, res.Max = percentile(lat, 50), percentile(lat, 99), percentile(lat, 100)
	if res.Failed > 0 {
		fmt.Fprintf(progress, "%d requests failed; the first: %v\n", res.Failed, firstErr)
	}

	// Status latency, one request at a time.
	res.StatusRows = int64(o.Preload + res.Records)
	fmt.Fprintf(progress, "timing GET /v1/meter/status at %d usage rows...\n", res.StatusRows)
	var slat []time.Duration
	for range o.StatusRequests {
		t0 := time.Now()
		status, err := benchGet(ctx, client, base+"/v1/meter/status")
		if err != nil || status != http.StatusOK {
			return res, fmt.Errorf("GET /v1/meter/status: status %d: %v", status, err)
		}
		slat = append(slat, time.Since(t0))
	}
	res.StatusP50, res.StatusP99 = percentile(slat, 50), percentile(slat, 99)

	// Idle: nothing is sent; serve's own CPU time is read from /proc.
	if o.Idle > 0 {
		fmt.Fprintf(progress, "watching serve idle for %s...\n", o.Idle)
		// Let the first meter pass after the load finish before measuring.
		time.Sleep(o.MeterInterval + time.Second)
		cpu0, err := processCPU(cmd.Process.Pid)
		if err != nil {
			return res, err
		}
		t0 := time.Now()
		select {
		case <-time.After(o.Idle):
		case <-ctx.Done():
			return res, ctx.Err()
		}
		cpu1, err := processCPU(cmd.Process.Pid)
		if err != nil {
			return res, err
		}
		res.IdleCPU = (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds()
	}
	if fi, err := os.Stat(dbPath + "-wal"); err == nil {
		res.WALBytes = fi.Size()
	}
	if rss, err := processHWM(cmd.Process.Pid); err == nil {
		res.ServeMaxRSSBytes = rss
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := <-exited; err != nil {
		return res, fmt.Errorf("serve: %w\n%s", err, serveErr.String())
	}
	exited <- nil // for the deferred check
	return res, nil
}

// lockedWriter serializes writes of the child's output.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func waitReady(ctx context.Context, client *http.Client, base string, exited <-chan error) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("serve exited before it was ready: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if status, err := benchGet(ctx, client, base+"/v1/meter/status"); err == nil && status == http.StatusOK {
			return nil
		}
	}
	return errors.New("serve did not answer within 60s")
}

func benchPost(ctx context.Context, client *http.Client, url string, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+benchAPIKey)
	req.Header.Set("Content-Type", "application/json")
	return benchDo(client, req)
}

func benchGet(ctx context.Context, client *http.Client, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+benchAPIKey)
	return benchDo(client, req)
}

func benchDo(client *http.Client, req *http.Request) (int, error) {
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

// percentile returns the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}

// processCPU is the user + system CPU time of a process (Linux /proc).
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of serve (needs Linux /proc): %w", err)
	}
	// Fields after the command name (which may hold spaces) start at ")".
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks, nil
}

// processHWM is the peak resident set size of a process (Linux /proc).
func processHWM(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmHWM")
}

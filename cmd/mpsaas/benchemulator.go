package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
)

// The DynamoDB bench runs the emulator in a child process, so the heap it
// measures is the meter's alone: the emulator keeps every record it billed
// (hundreds of MB at 100,000 buyers), which AWS holds, not the Lambda.

// benchEmulatorEnv, set to the product's dimensions, makes the mpsaas
// binary (or the test binary, see TestMain) the bench's emulator process.
const benchEmulatorEnv = "MPSAAS_BENCH_EMULATOR_DIMENSIONS"

// runBenchEmulator is the child: an emulator with the bench's product and a
// clock 10 minutes past the hour; it prints its URL and serves until its
// standard input closes (the bench ended or died).
func runBenchEmulator(dimsText string, stdout io.Writer) error {
	ecfg := emulator.DefaultConfig()
	ecfg.NotificationLog = 1
	em := emulator.New(ecfg)
	// One clock for the emulator and the meter, starting 10 minutes past
	// an hour: the newest hour of usage has just closed and the oldest
	// (23 hours back at most) has 50 minutes left in AWS's 24-hour window,
	// as for a meter that was down for a day. The clock stands still
	// (usage that arrived during the day, however long the bench takes to
	// ingest it) until the bench resumes it to meter.
	em.Clock.Set(mpsaas.Hour(time.Now()).Add(10 * time.Minute))
	var edims []emulator.Dimension
	for _, d := range strings.Split(dimsText, ",") {
		edims = append(edims, emulator.Dimension{Name: d})
	}
	if _, err := em.AddProduct(emulator.Product{Code: "bench", Type: emulator.ProductSubscription, LicenseBased: true, Dimensions: edims}); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: em.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	fmt.Fprintf(stdout, "http://%s\n", ln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return srv.Close()
}

// benchEmulator is the parent's handle on the child.
type benchEmulator struct {
	URL    string
	cmd    *exec.Cmd
	stdin  io.Closer
	client *http.Client
	// clock follows the emulator's: it stands still until resume, then
	// runs at real speed.
	clock *emulator.Clock
}

func startBenchEmulator(ctx context.Context, dims []string, conc int) (*benchEmulator, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), benchEmulatorEnv+"="+strings.Join(dims, ","))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the emulator process: %w", err)
	}
	e := &benchEmulator{cmd: cmd, stdin: stdin,
		client: &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: conc + 4}}}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("the emulator process did not start: %w", err)
	}
	e.URL = strings.TrimSpace(line)
	var clock struct {
		Now time.Time `json:"now"`
	}
	if err := e.call(ctx, http.MethodGet, "/emulator/api/clock", nil, &clock); err != nil {
		e.Close()
		return nil, err
	}
	e.clock = emulator.NewClock()
	e.clock.Set(clock.Now)
	return e, nil
}

// Now is the emulator's time.
func (e *benchEmulator) Now() time.Time { return e.clock.Now() }

// resume starts the emulator's clock, which stood still while usage was
// ingested: from now on it runs at real speed.
func (e *benchEmulator) resume(ctx context.Context) error {
	var clock struct {
		Now time.Time `json:"now"`
	}
	if err := e.call(ctx, http.MethodPost, "/emulator/api/clock", emulator.ClockChange{Resume: true}, &clock); err != nil {
		return fmt.Errorf("resume the emulator's clock: %w", err)
	}
	e.clock.Set(clock.Now)
	e.clock.Resume()
	return nil
}

func (e *benchEmulator) Close() {
	_ = e.stdin.Close()
	done := make(chan struct{})
	go func() { _ = e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = e.cmd.Process.Kill()
		<-done
	}
}

func (e *benchEmulator) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.URL+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		return fmt.Errorf("emulator %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("emulator %s: %s: %s", path, resp.Status, b)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("emulator %s: %w", path, err)
	}
	return nil
}

// subscribe adds a buyer account and subscribes it to the bench product.
func (e *benchEmulator) subscribe(ctx context.Context, acct string, started time.Time) (emulator.SubscribeResult, error) {
	var res emulator.SubscribeResult
	if err := e.call(ctx, http.MethodPost, "/emulator/api/buyers", emulator.Buyer{AccountID: acct}, nil); err != nil {
		return res, err
	}
	err := e.call(ctx, http.MethodPost, "/emulator/api/subscriptions",
		emulator.SubscribeOptions{StartedAt: started, ProductCode: "bench", BuyerAccountID: acct}, &res)
	return res, err
}

// billed returns the BatchMeterUsage calls and the quantities billed.
func (e *benchEmulator) billed(ctx context.Context) (calls int, pairs int, quantity int64, err error) {
	var byOp map[string]int
	if err := e.call(ctx, http.MethodGet, "/emulator/api/calls", nil, &byOp); err != nil {
		return 0, 0, 0, err
	}
	var recs []struct {
		Quantity int64 `json:"quantity"`
	}
	if err := e.call(ctx, http.MethodGet, "/emulator/api/billed", nil, &recs); err != nil {
		return 0, 0, 0, err
	}
	for _, r := range recs {
		quantity += r.Quantity
	}
	if len(recs) == 0 && byOp["BatchMeterUsage"] > 0 {
		return 0, 0, 0, errors.New("the emulator billed nothing")
	}
	return byOp["BatchMeterUsage"], len(recs), quantity, nil
}

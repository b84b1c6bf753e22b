package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/marketplace"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/sqlite"
	"github.com/mpsaas/mpsaas/subscription"
)

// TestMeteringSurvivesKillsAndFaults meters 10,000+ usage records of 100+
// buyers with `mpsaas meter run` in a child process that is killed with
// SIGKILL at random moments, against an emulator that throttles, fails
// (before and after processing), delays and leaves records unprocessed on
// well over 10% of calls. The emulator must then have billed exactly the
// ingested total per (buyer, dimension, hour), each key once.
//
// Slow (about a minute): runs when MPSAAS_SLOW_TESTS=1 (CI sets it).
func TestMeteringSurvivesKillsAndFaults(t *testing.T) {
	if os.Getenv("MPSAAS_SLOW_TESTS") != "1" {
		t.Skip("set MPSAAS_SLOW_TESTS=1 to run the crash and fault test")
	}
	const buyers, records, minKills = 100, 12000, 5
	ctx := context.Background()
	dir := t.TempDir()
	bin := filepath.Join(dir, "mpsaas")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	em := emulator.New(emulator.DefaultConfig())
	srv := httptest.NewServer(em.Handler())
	defer srv.Close()
	dims := []emulator.Dimension{{Name: "users"}, {Name: "requests"}, {Name: "storage"}}
	for _, p := range []emulator.Product{
		{Code: "crash-legacy", Type: emulator.ProductSubscription, Dimensions: dims},
		{Code: "crash-license", Type: emulator.ProductSubscription, LicenseBased: true, Dimensions: dims},
	} {
		if _, err := em.AddProduct(p); err != nil {
			t.Fatal(err)
		}
	}
	dbPath := filepath.Join(dir, "crash.db")
	db, err := sqlite.Open(ctx, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("A", "B", "")}
	mp := marketplace.New(cfg, marketplace.Options{MeteringEndpoint: srv.URL, EntitlementEndpoint: srv.URL})
	subs := &subscription.Service{Store: db, Marketplace: mp, Listing: mpsaas.ListingSubscriptions}
	keys := make([]string, buyers)
	account := map[string]string{}
	for i := range buyers {
		b, err := em.AddBuyer(emulator.Buyer{})
		if err != nil {
			t.Fatal(err)
		}
		res, err := em.Subscribe(emulator.SubscribeOptions{StartedAt: em.Clock.Now().Add(-24 * time.Hour), ProductCode: []string{"crash-legacy", "crash-license"}[i%2], BuyerAccountID: b.AccountID})
		if err != nil {
			t.Fatal(err)
		}
		sub, err := subs.RegisterWithToken(ctx, res.Token, mpsaas.Contact{CompanyName: "C", ContactPerson: "P", ContactPhone: "+1 555 0100", ContactEmail: "p@c.example"})
		if err != nil {
			t.Fatal(err)
		}
		keys[i], account[sub.Key] = sub.Key, b.AccountID
	}
	for _, n := range em.Notifications(0) {
		if err := subs.HandleMessage(ctx, n.Body); err != nil {
			t.Fatal(err)
		}
	}

	// Usage spread over five closed hours (2 to 6 hours ago, safely sealed).
	ingest := &metering.Service{Store: db, Subscribers: db}
	want := map[string]int64{}
	var total int64
	rng := rand.New(rand.NewPCG(7, 11))
	now := time.Now().UTC()
	var batch []mpsaas.Usage
	for i := range records {
		k := keys[rng.IntN(buyers)]
		d := dims[rng.IntN(len(dims))].Name
		ts := mpsaas.Hour(now).Add(-time.Duration(2+rng.IntN(5)) * time.Hour).Add(time.Duration(rng.IntN(3600)) * time.Second)
		q := int64(rng.IntN(100))
		batch = append(batch, mpsaas.Usage{Customer: k, Dimension: d, Quantity: q, Time: ts})
		want[fmt.Sprintf("%s/%s/%d", account[k], d, mpsaas.Hour(ts).Unix())] += q
		total += q
		if len(batch) == 1000 || i == records-1 {
			if _, err := ingest.Ingest(ctx, mpsaas.UsageRequest{IdempotencyKey: fmt.Sprintf("load-%d", i), Records: batch}); err != nil {
				t.Fatal(err)
			}
			batch = nil
		}
	}
	db.Close()

	// Faults on well over 10% of calls.
	em.Faults.Seed(99)
	for _, f := range []emulator.Fault{
		{Operation: "BatchMeterUsage", Error: "ThrottlingException", Rate: 0.10},
		{Operation: "BatchMeterUsage", Error: "InternalServiceErrorException", Rate: 0.05, AfterProcessing: true},
		{Operation: "BatchMeterUsage", Error: "ServiceUnavailable", Rate: 0.05},
		{Operation: "BatchMeterUsage", Latency: emulator.Duration(30 * time.Millisecond), Rate: 0.2},
		{Operation: "BatchMeterUsage", UnprocessedRate: 0.05},
	} {
		if err := em.Faults.Add(f); err != nil {
			t.Fatal(err)
		}
	}

	run := func(killAfter time.Duration) (killed bool, out string) {
		cmd := exec.Command(bin, "meter", "run", "--db", dbPath, "--metering-endpoint", srv.URL, "--entitlement-endpoint", srv.URL,
			"--listing", "subscriptions", "--meter-concurrency", "4", "--log-level", "error")
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if killAfter > 0 {
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("meter run failed: %v\n%s", err, buf.String())
				}
				return false, buf.String()
			case <-time.After(killAfter):
				_ = cmd.Process.Signal(syscall.SIGKILL)
				err := <-done
				var ee *exec.ExitError
				if errors.As(err, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signaled() {
					return true, buf.String()
				}
				if err != nil {
					t.Fatalf("meter run failed: %v\n%s", err, buf.String())
				}
				return false, buf.String()
			}
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("meter run failed: %v\n%s", err, buf.String())
			}
		case <-time.After(5 * time.Minute):
			_ = cmd.Process.Kill()
			t.Fatalf("meter run did not finish\n%s", buf.String())
		}
		return false, buf.String()
	}
	kills, finished := 0, false
	for attempt := 0; kills < minKills && attempt < 100; attempt++ {
		killed, _ := run(time.Duration(80+rng.IntN(500)) * time.Millisecond)
		if killed {
			kills++
		} else {
			finished = true
			break // metering completed before the kill: nothing left to interrupt
		}
	}
	if kills < minKills {
		t.Fatalf("only %d kills landed while metering was running (finished early: %v)", kills, finished)
	}
	_, out := run(0)
	t.Logf("final run:\n%s", out)

	// Compare what AWS (the emulator) billed with what was ingested.
	got := map[string]int64{}
	var billedTotal int64
	resent := 0
	for _, b := range em.Billed("") {
		k := fmt.Sprintf("%s/%s/%d", b.BuyerAccountID, b.Dimension, b.Hour.Unix())
		if _, dup := got[k]; dup {
			t.Errorf("%s billed twice (modes product and license)", k)
		}
		got[k] = b.Quantity
		billedTotal += b.Quantity
		if b.Calls > 1 {
			resent++
		}
	}
	missing, wrong := 0, 0
	for k, q := range want {
		g, ok := got[k]
		switch {
		case !ok:
			missing++
		case g != q:
			wrong++
			t.Errorf("%s: billed %d, ingested %d", k, g, q)
		}
	}
	extra := len(got) - (len(want) - missing)
	if missing > 0 || extra > 0 {
		t.Errorf("keys: %d ingested, %d billed, %d missing, %d unexpected", len(want), len(got), missing, extra)
	}
	db, err = sqlite.Open(ctx, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sum, err := db.MeterSummary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	calls := em.Calls()["BatchMeterUsage"]
	minCalls := (len(want) + mpsaas.MaxBatchRecords - 1) / mpsaas.MaxBatchRecords
	report := fmt.Sprintf("usage records %d (quantity %d) for %d buyers; keys ingested %d, billed %d, missing %d, wrong %d, billed twice 0; "+
		"quantity billed %d; SIGKILLs %d; BatchMeterUsage calls %d (minimum %d); keys resent and deduplicated by AWS %d; ledger %v",
		records, total, buyers, len(want), len(got), missing, wrong, billedTotal, kills, calls, minCalls, resent, sum)
	t.Log(report)
	fmt.Println("crash and fault test:", report)
	if billedTotal != total {
		t.Errorf("billed quantity %d, ingested %d", billedTotal, total)
	}
	if sum[mpsaas.UsageBilled].Records != records {
		t.Errorf("ledger billed records = %d, want %d (%v)", sum[mpsaas.UsageBilled].Records, records, sum)
	}
	if !strings.Contains(out, "pass") {
		t.Errorf("final run printed no progress: %s", out)
	}
	// The invariant holds over the whole database after all the kills.
	verify, err := exec.Command(bin, "meter", "verify", "--db", dbPath, "--limit", "0").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(verify), "ok:") {
		t.Errorf("meter verify: %v\n%s", err, verify)
	}
	fmt.Println("crash and fault test: mpsaas meter verify:", strings.TrimSpace(string(verify)))
}

package dynamodb

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/mpsaas/mpsaas/internal/testenv"
)

// TestMeteringLease (issue 8): two meter runs never overlap. A second run
// waits for the first, takes over when it ends, and takes over an expired
// lease of a run that was cut off; every taking counts in the epoch. The
// heartbeat mark survives in the lease item.
func TestMeteringLease(t *testing.T) {
	endpoint := testenv.DynamoDB(t)
	ctx := context.Background()
	client := ddb.New(ddb.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), Credentials: credentials.NewStaticCredentialsProvider("l", "l", "")})
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	tables := Tables{Subscribers: "LeaseSubs" + suffix, Events: "LeaseEvents" + suffix, Outbox: "LeaseOutbox" + suffix, Usage: "LeaseUsage" + suffix,
		UsageRequests: "LeaseReq" + suffix, MeterRecords: "LeaseMeter" + suffix, MeterBatches: "LeaseBatches" + suffix}
	a, b := New(client, tables), New(client, tables)
	if err := a.CreateTables(ctx); err != nil {
		t.Fatal(err)
	}
	unlockA, e1, err := a.LockMetering(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, _, err := b.LockMetering(short); err == nil || !strings.Contains(err.Error(), "another run is metering") {
		t.Fatalf("second run while the first holds the lease: %v", err)
	}
	got := make(chan int64)
	go func() {
		unlock, e, err := b.LockMetering(ctx)
		if err != nil {
			t.Error(err)
		}
		unlock()
		got <- e
	}()
	time.Sleep(200 * time.Millisecond)
	unlockA()
	select {
	case e2 := <-got:
		if e2 != e1+1 {
			t.Errorf("epochs %d then %d", e1, e2)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting run never got the lease")
	}
	// A run cut off at its deadline never unlocks: its lease expires.
	old := leaseSlack
	leaseSlack = 0
	defer func() { leaseSlack = old }()
	dead, cancelDead := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelDead()
	if _, _, err := a.LockMetering(dead); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	unlockB, e3, err := b.LockMetering(ctx)
	if err != nil || e3 != e1+3 {
		t.Fatalf("after an expired lease: epoch %d, %v", e3, err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("waited %s for an expired lease", waited)
	}
	unlockB()

	if m, err := a.HeartbeatMark(ctx); err != nil || !m.IsZero() {
		t.Fatalf("mark before any pass: %v, %v", m, err)
	}
	end := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	if err := a.SetHeartbeatMark(ctx, end); err != nil {
		t.Fatal(err)
	}
	if m, err := b.HeartbeatMark(ctx); err != nil || !m.Equal(end) {
		t.Errorf("mark = %v, %v; want %v", m, err, end)
	}
}

package dynamodb

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/mpsaas/mpsaas"
)

// TestMeteringLease (issue 8): two meter runs never overlap. A second run
// waits for the first, takes over when it ends, and takes over an expired
// lease of a run that was cut off; every taking counts in the epoch. The
// heartbeat mark survives in the lease item.
func TestMeteringLease(t *testing.T) {
	ctx := context.Background()
	a := newLocalStore(t, "Lease")
	b := New(a.client, a.tables) // another process on the same tables
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

// TestRetention: with a retention, finished items get a time to live on
// the attribute the tables expire by; without one, none.
func TestRetention(t *testing.T) {
	ctx := context.Background()
	st := newLocalStore(t, "TTL")
	client, tables := st.client, st.tables
	for _, tb := range []string{tables.Outbox, tables.MeterHours} {
		out, err := client.DescribeTimeToLive(ctx, &ddb.DescribeTimeToLiveInput{TableName: aws.String(tb)})
		if err != nil || out.TimeToLiveDescription == nil || aws.ToString(out.TimeToLiveDescription.AttributeName) != TTLAttribute {
			t.Errorf("table %s: time to live %+v, %v", tb, out, err)
		}
	}
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	st.Now = func() time.Time { return now }
	hs := NewHourStore(st)
	row := []mpsaas.UsageRow{{SubscriberKey: "A", Dimension: "users", Quantity: 1, Time: now}}
	if _, err := hs.AddUsage(ctx, "kept", "h", row, mpsaas.Hour(now), now); err != nil {
		t.Fatal(err)
	}
	st.Retention = 30 * 24 * time.Hour
	if _, err := hs.AddUsage(ctx, "expires", "h", row, mpsaas.Hour(now), now); err != nil {
		t.Fatal(err)
	}
	expires := now.Add(30 * 24 * time.Hour).Unix()
	for key, want := range map[string]int64{"kept": 0, "expires": expires} {
		out, err := client.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(tables.MeterHours), Key: hkey("r#"+key, "r")})
		if err != nil || getN(out.Item, TTLAttribute) != want {
			t.Errorf("request %s: ttl %d, %v; want %d", key, getN(out.Item, TTLAttribute), err, want)
		}
	}
	// A finished batch expires; the usage and its meter record are kept.
	rec := mpsaas.MeterRecord{SubscriberKey: "A", Dimension: "users", Hour: mpsaas.Hour(now).Add(-time.Hour), CustomerAWSAccountID: "1", LicenseArn: "arn:aws:license-manager::1:license:l-A", ProductCode: "p"}
	if _, err := hs.AddHeartbeats(ctx, []mpsaas.MeterRecord{rec}); err != nil {
		t.Fatal(err)
	}
	batches, err := hs.DueBatches(ctx, now, 10)
	if err != nil || len(batches) != 1 {
		t.Fatalf("due batches = %v, %v", batches, err)
	}
	if err := hs.FinishBatches(ctx, []mpsaas.BatchOutcome{{BatchID: batches[0].ID, Outcomes: []mpsaas.RecordOutcome{{MeterRecordID: batches[0].Records[0].ID, State: mpsaas.UsageBilled, MeteringRecordID: "m"}}}}); err != nil {
		t.Fatal(err)
	}
	id := batches[0].ID
	for name, c := range map[string]struct {
		key  map[string]types.AttributeValue
		want int64
	}{"batch": {hkey(batchPK(id), batchSK(id)), expires}, "meter record": {itemKey{"A", "users", rec.Hour.Unix()}.key(), 0}} {
		out, err := client.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(tables.MeterHours), Key: c.key})
		if err != nil || out.Item == nil || getN(out.Item, TTLAttribute) != c.want {
			t.Errorf("%s: ttl %d, %v; want %d", name, getN(out.Item, TTLAttribute), err, c.want)
		}
	}
	// A delivered access change expires; one still pending does not.
	sub := &mpsaas.Subscriber{Key: "TTL1", Identity: mpsaas.Identity{CustomerIdentifier: "TTL1"}, State: mpsaas.State{Status: mpsaas.StatusActive}, Access: mpsaas.AccessGranted, AccessVersion: 1}
	change := mpsaas.NewAccessChange(sub, now)
	if err := st.SaveSubscriber(ctx, sub, &change, []string{mpsaas.ChannelWebhook, mpsaas.ChannelSNS}); err != nil {
		t.Fatal(err)
	}
	due, err := st.DueMessages(ctx, now.Add(time.Minute), 10)
	if err != nil || len(due) != 2 {
		t.Fatalf("due = %v, %v", due, err)
	}
	if err := st.MarkDelivered(ctx, due[0].ID, now); err != nil {
		t.Fatal(err)
	}
	for i, want := range []int64{now.Add(30 * 24 * time.Hour).Unix(), 0} {
		out, err := client.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(tables.Outbox), Key: map[string]types.AttributeValue{"id": sv(due[i].ID)}})
		if err != nil || getN(out.Item, TTLAttribute) != want {
			t.Errorf("outbox message %d: ttl %d, %v; want %d", i, getN(out.Item, TTLAttribute), err, want)
		}
	}
}

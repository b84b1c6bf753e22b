package dynamodb

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/internal/testenv"
)

// TestOutboxSurvivesACrashBeforeTheCopy: a change written into the
// subscriber item but never copied (the process died) is delivered anyway.
func TestOutboxSurvivesACrashBeforeTheCopy(t *testing.T) {
	ctx := context.Background()
	st := newLocalStore(t, "Crash")
	client, subs := st.client, st.tables.Subscribers
	sub := &mpsaas.Subscriber{Key: "CRASH1", Identity: mpsaas.Identity{CustomerIdentifier: "CRASH1"}, State: mpsaas.State{Status: mpsaas.StatusActive}}
	if err := st.SaveSubscriber(ctx, sub, nil, nil); err != nil {
		t.Fatal(err)
	}
	// What SaveSubscriber writes before it copies: the entry in the item.
	entry, _ := json.Marshal(outboxEntry{Channel: mpsaas.ChannelWebhook, IdempotencyKey: "CRASH1:1", Payload: `{"access":"granted"}`})
	_, err := client.UpdateItem(ctx, &ddb.UpdateItemInput{
		TableName: aws.String(subs), Key: map[string]types.AttributeValue{"customerIdentifier": sv("CRASH1")},
		UpdateExpression:          aws.String("SET pendingOutbox = :l, outboxPending = :one, outboxSeq = :n"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":l": &types.AttributeValueMemberL{Value: []types.AttributeValue{sv(string(entry))}}, ":one": sv("1"), ":n": nv(1)},
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // twice: the copy happens once
		due, err := st.DueMessages(ctx, st.Now().Add(1e9), 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(due) != 1 || due[0].IdempotencyKey != "CRASH1:1" {
			t.Fatalf("due = %+v, want the change left in the item", due)
		}
	}
	got, err := st.GetSubscriber(ctx, "CRASH1")
	if err != nil || got.Status != mpsaas.StatusActive {
		t.Errorf("subscriber after the sweep = %+v, %v", got, err)
	}
}

// TestUsageRequestResumesAfterACrash: a request recorded as "writing" with
// only some rows written holds back sealing, and the client's retry writes
// the rest without touching rows already there.
func TestUsageRequestResumesAfterACrash(t *testing.T) {
	ctx := context.Background()
	st := newLocalStore(t, "Resume")
	client := st.client
	hour := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	now := hour.Add(2 * time.Hour)
	st.Now = func() time.Time { return now }
	rows := []mpsaas.UsageRow{{SubscriberKey: "A", Dimension: "users", Quantity: 2, Time: hour}, {SubscriberKey: "A", Dimension: "users", Quantity: 3, Time: hour}}
	// An earlier request that completed.
	if _, err := st.AddUsage(ctx, "done", "h0", rows[:1], now.Truncate(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	// The crash: request recorded, first row written, then nothing.
	first, err := st.allocate(ctx, counterUsage, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.PutItem(ctx, &ddb.PutItemInput{TableName: aws.String(st.tables.UsageRequests), Item: map[string]types.AttributeValue{
		"key": sv("request:k"), "hash": sv("h"), "accepted": nv(2), "firstId": nv(first), "receivedAt": nv(timeN(now)), "writing": sv("1")}}); err != nil {
		t.Fatal(err)
	}
	if err := st.writeUsagePartial(ctx, "k", first, rows[:1], now); err != nil {
		t.Fatal(err)
	}
	scan, err := st.PendingRange(ctx)
	if err != nil || scan.Hi >= first {
		t.Fatalf("PendingRange = %+v, %v; want hi below the request being written (%d)", scan, err, first)
	}
	rec, err := st.AddUsage(ctx, "k", "h", rows, now.Truncate(time.Hour), now)
	if err != nil || rec.FirstID != first || rec.Accepted != 2 {
		t.Fatalf("retry = %+v, %v", rec, err)
	}
	scan, _ = st.PendingRange(ctx)
	entries, err := st.Ledger(ctx, mpsaas.LedgerFilter{})
	if err != nil || len(entries) != 3 || scan.Hi != first+1 {
		t.Errorf("after the retry: %d entries (%v), hi %d; want 3 entries and hi %d", len(entries), err, scan.Hi, first+1)
	}
}

// writeUsagePartial writes rows as a crashed AddUsage would have, without
// finishing the request.
func (s *Store) writeUsagePartial(ctx context.Context, key string, first int64, rows []mpsaas.UsageRow, now time.Time) error {
	for i, r := range rows {
		if _, err := s.client.PutItem(ctx, &ddb.PutItemInput{TableName: aws.String(s.tables.Usage), Item: map[string]types.AttributeValue{
			"id": nv(first + int64(i)), "subscriberKey": sv(r.SubscriberKey), "dimension": sv(r.Dimension), "quantity": nv(r.Quantity),
			"usageTime": nv(timeN(r.Time)), "meterHour": nv(mpsaas.Hour(r.Time).Unix()), "state": sv(mpsaas.UsagePending), "pending": sv("1"),
			"requestKey": sv(key), "receivedAt": nv(timeN(now))}}); err != nil {
			return err
		}
	}
	return nil
}

func TestBackoffIsJitteredGrowingAndCapped(t *testing.T) {
	for n := 1; n <= 12; n++ {
		ceiling := min(50*time.Millisecond<<min(n-1, 6), 2*time.Second)
		for range 50 {
			if d := backoff(n); d < ceiling/2 || d > ceiling {
				t.Fatalf("backoff(%d) = %s, want within [%s, %s]", n, d, ceiling/2, ceiling)
			}
		}
	}
	if backoff(20) > 2*time.Second {
		t.Error("backoff is not capped")
	}
}

// newLocalStore returns a store on fresh tables (named prefix + role +
// a unique suffix) in the DynamoDB-compatible server the tests use.
func newLocalStore(t *testing.T, prefix string) *Store {
	t.Helper()
	endpoint := testenv.DynamoDB(t)
	client := ddb.New(ddb.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), Credentials: credentials.NewStaticCredentialsProvider("l", "l", "")})
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	st := New(client, Tables{Subscribers: prefix + "Subs" + suffix, Events: prefix + "Events" + suffix, Outbox: prefix + "Outbox" + suffix,
		Usage: prefix + "Usage" + suffix, UsageRequests: prefix + "Req" + suffix, MeterRecords: prefix + "Meter" + suffix, MeterBatches: prefix + "Batches" + suffix})
	if err := st.CreateTables(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st
}

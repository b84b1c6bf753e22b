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
		MeterHours: prefix + "Meter" + suffix})
	if err := st.CreateTables(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st
}

package dynamodb_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/mpsaas/mpsaas/dynamodb"
	"github.com/mpsaas/mpsaas/internal/metermodel"
	"github.com/mpsaas/mpsaas/internal/testenv"
)

// MustOpenHours returns an hour-model store on fresh tables of DynamoDB
// Local.
func MustOpenHours(t *testing.T, opts ...func(*ddb.Options)) *dynamodb.HourStore {
	t.Helper()
	endpoint := testenv.DynamoDB(t)
	client := ddb.New(ddb.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider("local", "local", ""),
	}, opts...)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	suffix := hex.EncodeToString(b)
	st := dynamodb.New(client, dynamodb.Tables{Subscribers: "Subscribers-" + suffix, Events: "Events-" + suffix, Outbox: "Outbox-" + suffix,
		MeterHours: "MeterHours-" + suffix})
	if err := st.CreateTables(context.Background()); err != nil {
		t.Fatal(err)
	}
	return dynamodb.NewHourStore(st)
}

// TestModelDynamoDBHours runs the model-based metering test (see
// internal/metermodel) on the hour model: random interleavings of
// ingestion, late usage, cancellations, runs cut short by failing store
// calls, AWS faults and a clock that steps on every reading.
func TestModelDynamoDBHours(t *testing.T) {
	for seed := range 3 {
		st := MustOpenHours(t)
		metermodel.Run(t, metermodel.Config{Seed: uint64(500 + seed), Steps: 200, CheckEvery: 10, Store: st,
			SetClock: func(f func() time.Time) { st.Now = f }, StoreFaultRate: 0.1, AWSFaultRate: 0.1, Contracts: seed == 2})
	}
}

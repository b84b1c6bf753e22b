package dynamodb_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"github.com/mpsaas/mpsaas/internal/testenv"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/mpsaas/mpsaas/dynamodb"
	"github.com/mpsaas/mpsaas/storetest"
)

// MustOpen returns a store on fresh tables in the DynamoDB-compatible server
// at MPSAAS_DYNAMODB_ENDPOINT (DynamoDB Local in CI). Without it the test is
// skipped, unless MPSAAS_REQUIRE_DYNAMODB=1.
func MustOpen(t *testing.T, opts ...func(*ddb.Options)) *dynamodb.Store {
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
	return st
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store { return MustOpen(t) })
}

package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/dynamodb"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/internal/testenv"
	"github.com/mpsaas/mpsaas/subscription"
)

// TestSampleMeteringTableThroughLambda: an application that still writes
// usage into the sample stack's metering table keeps working.
func TestSampleMeteringTableThroughLambda(t *testing.T) {
	endpoint := testenv.DynamoDB(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "local")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "local")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CA_BUNDLE", "")
	ctx := context.Background()
	em := emulator.New(emulator.DefaultConfig())
	emSrv := httptest.NewServer(em.Handler())
	defer emSrv.Close()
	if _, err := em.AddProduct(emulator.Product{Code: "sample-prod", Type: emulator.ProductSubscription, Dimensions: []emulator.Dimension{{Name: "users"}, {Name: "admin_users"}}}); err != nil {
		t.Fatal(err)
	}
	suffix := fmt.Sprint(time.Now().UnixNano())
	tables := dynamodb.Tables{Subscribers: "SSubs" + suffix, Events: "SEvents" + suffix, Outbox: "SOutbox" + suffix,
		Usage: "SUsage" + suffix, UsageRequests: "SUsageReq" + suffix, MeterRecords: "SMeter" + suffix, MeterBatches: "SBatches" + suffix}
	client := ddb.New(ddb.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), Credentials: credentials.NewStaticCredentialsProvider("l", "l", "")})
	store := dynamodb.New(client, tables)
	if err := store.CreateTables(ctx); err != nil {
		t.Fatal(err)
	}
	sample := &dynamodb.SampleMeteringTable{Client: client, Table: "AWSMarketplaceMeteringRecords" + suffix}
	if err := sample.Create(ctx); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"MPSAAS_FUNCTION": "meter", "MPSAAS_LISTING": "subscriptions",
		"MPSAAS_SUBSCRIBERS_TABLE": tables.Subscribers, "MPSAAS_EVENTS_TABLE": tables.Events, "MPSAAS_OUTBOX_TABLE": tables.Outbox,
		"MPSAAS_USAGE_TABLE": tables.Usage, "MPSAAS_USAGE_REQUESTS_TABLE": tables.UsageRequests,
		"MPSAAS_METER_RECORDS_TABLE": tables.MeterRecords, "MPSAAS_METER_BATCHES_TABLE": tables.MeterBatches,
		"MPSAAS_SAMPLE_METERING_TABLE": sample.Table,
		"MPSAAS_DYNAMODB_ENDPOINT":     endpoint, "MPSAAS_METERING_ENDPOINT": emSrv.URL, "MPSAAS_ENTITLEMENT_ENDPOINT": emSrv.URL,
	}
	app, err := build(ctx, func(k string) string { return env[k] }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := em.AddBuyer(emulator.Buyer{AccountID: "123456789012"}); err != nil {
		t.Fatal(err)
	}
	res, err := em.Subscribe(emulator.SubscribeOptions{ProductCode: "sample-prod", BuyerAccountID: "123456789012"})
	if err != nil {
		t.Fatal(err)
	}
	subs := &subscription.Service{Store: store, Marketplace: app.svc.Marketplace, Listing: mpsaas.ListingSubscriptions}
	if _, err := subs.RegisterWithToken(ctx, res.Token, mpsaas.Contact{CompanyName: "C", ContactPerson: "P", ContactPhone: "+1 555 0100", ContactEmail: "p@c.example"}); err != nil {
		t.Fatal(err)
	}
	ci := res.Subscription.CustomerIdentifier
	ts := mpsaas.Hour(time.Now()).Add(-2 * time.Hour).Unix()
	// What the sample's SaaS application writes (DynamoDB JSON).
	for _, item := range []map[string]types.AttributeValue{
		{"customerIdentifier": &types.AttributeValueMemberS{Value: ci}, "create_timestamp": &types.AttributeValueMemberN{Value: fmt.Sprint(ts)},
			"dimension_usage": &types.AttributeValueMemberL{Value: []types.AttributeValue{
				&types.AttributeValueMemberM{Value: map[string]types.AttributeValue{"dimension": &types.AttributeValueMemberS{Value: "users"}, "value": &types.AttributeValueMemberN{Value: "3"}}},
				&types.AttributeValueMemberM{Value: map[string]types.AttributeValue{"dimension": &types.AttributeValueMemberS{Value: "admin_users"}, "value": &types.AttributeValueMemberN{Value: "1"}}},
			}},
			"metering_pending": &types.AttributeValueMemberS{Value: "true"}},
		{"customerIdentifier": &types.AttributeValueMemberS{Value: "UNKNOWN"}, "create_timestamp": &types.AttributeValueMemberN{Value: fmt.Sprint(ts)},
			"dimension_usage": &types.AttributeValueMemberL{Value: []types.AttributeValue{
				&types.AttributeValueMemberM{Value: map[string]types.AttributeValue{"dimension": &types.AttributeValueMemberS{Value: "users"}, "value": &types.AttributeValueMemberN{Value: "9"}}},
			}},
			"metering_pending": &types.AttributeValueMemberS{Value: "true"}},
	} {
		if _, err := client.PutItem(ctx, &ddb.PutItemInput{TableName: aws.String(sample.Table), Item: item}); err != nil {
			t.Fatal(err)
		}
	}
	handler := app.handler().(func(context.Context, events.EventBridgeEvent) error)
	for i := 0; i < 2; i++ { // a second run imports nothing again
		if err := handler(ctx, events.EventBridgeEvent{DetailType: "Scheduled Event"}); err != nil {
			t.Fatal(err)
		}
	}
	billed := map[string]int64{}
	for _, b := range em.Billed("123456789012") {
		billed[b.Dimension] += b.Quantity
	}
	if billed["users"] != 3 || billed["admin_users"] != 1 || len(billed) != 2 {
		t.Errorf("billed = %v, want users 3, admin_users 1", billed)
	}
	for _, tt := range []struct {
		customer string
		failed   bool
	}{{ci, false}, {"UNKNOWN", true}} {
		out, err := client.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(sample.Table), Key: map[string]types.AttributeValue{
			"customerIdentifier": &types.AttributeValueMemberS{Value: tt.customer}, "create_timestamp": &types.AttributeValueMemberN{Value: fmt.Sprint(ts)}}})
		if err != nil {
			t.Fatal(err)
		}
		_, pending := out.Item["metering_pending"]
		failed, _ := out.Item["metering_failed"].(*types.AttributeValueMemberBOOL)
		resp, _ := out.Item["metering_response"].(*types.AttributeValueMemberS)
		if pending || failed == nil || failed.Value != tt.failed || resp == nil || resp.Value == "" {
			t.Errorf("sample item %s = %v; want metering_pending removed, metering_failed %v and a response", tt.customer, out.Item, tt.failed)
		}
	}
}

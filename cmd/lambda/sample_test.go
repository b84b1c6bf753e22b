package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/dynamodb"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/subscription"
)

// TestSampleMeteringTableThroughLambda: an application that still writes
// usage into the sample stack's metering table keeps working.
func TestSampleMeteringTableThroughLambda(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, emulator.Product{Code: "sample-prod", Type: emulator.ProductSubscription, Dimensions: []emulator.Dimension{{Name: "users"}, {Name: "admin_users"}}})
	em, store, client := f.em, f.store, f.client
	sample := &dynamodb.SampleMeteringTable{Client: client, Table: "AWSMarketplaceMeteringRecords" + f.suffix}
	if err := sample.Create(ctx); err != nil {
		t.Fatal(err)
	}
	f.env["MPSAAS_SAMPLE_METERING_TABLE"] = sample.Table
	app := f.build(t, "meter")
	if _, err := em.AddBuyer(emulator.Buyer{AccountID: "123456789012"}); err != nil {
		t.Fatal(err)
	}
	res, err := em.Subscribe(emulator.SubscribeOptions{StartedAt: em.Clock.Now().Add(-24 * time.Hour), ProductCode: "sample-prod", BuyerAccountID: "123456789012"})
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

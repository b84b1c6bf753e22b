package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awssns "github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/internal/testenv"
	mpsaassqs "github.com/mpsaas/mpsaas/sqs"
)

// TestServeConsumesSQSAndPublishesToSNS: Marketplace SNS messages reach
// serve through a real SQS-compatible queue (goaws), and access changes go
// out on an SNS topic as well as the webhook.
func TestServeConsumesSQSAndPublishesToSNS(t *testing.T) {
	endpoint := testenv.SQS(t)
	ctx := context.Background()
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("local", "local", ""), BaseEndpoint: aws.String(endpoint)}
	sq, sn := awssqs.NewFromConfig(cfg, mpsaassqs.QueryProtocol), awssns.NewFromConfig(cfg)
	suffix := fmt.Sprint(time.Now().UnixNano())
	mkQueue := func(name string) (string, string) {
		out, err := sq.CreateQueue(ctx, &awssqs.CreateQueueInput{QueueName: aws.String(name + suffix)})
		if err != nil {
			t.Fatal(err)
		}
		attrs, err := sq.GetQueueAttributes(ctx, &awssqs.GetQueueAttributesInput{QueueUrl: out.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.QueueUrl), attrs.Attributes["QueueArn"]
	}
	mkTopic := func(name, queueArn string) string {
		tp, err := sn.CreateTopic(ctx, &awssns.CreateTopicInput{Name: aws.String(name + suffix)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sn.Subscribe(ctx, &awssns.SubscribeInput{TopicArn: tp.TopicArn, Protocol: aws.String("sqs"), Endpoint: aws.String(queueArn)}); err != nil {
			t.Fatal(err)
		}
		return aws.ToString(tp.TopicArn)
	}
	inURL, inARN := mkQueue("mpsaas-in-")
	mpTopic := mkTopic("aws-mp-subscription-notification-", inARN)
	outURL, outARN := mkQueue("mpsaas-access-")
	accessTopic := mkTopic("mpsaas-access-changes-", outARN)

	app := startApp(t, mpsaas.ListingSubscriptions,
		"MPSAAS_SQS_QUEUE_URL", inURL, "MPSAAS_SQS_ENDPOINT", endpoint,
		"MPSAAS_ACCESS_TOPIC_ARN", accessTopic, "MPSAAS_SNS_ENDPOINT", endpoint)
	// Only the SQS path may deliver notifications in this test.
	seq := len(app.em.Notifications(0))
	res, err := app.em.Subscribe(emulator.SubscribeOptions{StartedAt: app.em.Clock.Now().Add(-24 * time.Hour), ProductCode: demoLegacyProduct, BuyerAccountID: "123456789012"})
	if err != nil {
		t.Fatal(err)
	}
	// Register first: the subscription is pending until subscribe-success arrives through SQS.
	body := fmt.Sprintf(`{"regToken":%q,"companyName":"Acme","contactPerson":"Ann","contactPhone":"+1 555 0100","contactEmail":"ann@acme.example"}`, res.Token)
	resp, err := http.Post(app.URL()+"/subscriber", "application/json", strings.NewReader(body))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("register: %v %v", resp, err)
	}
	resp.Body.Close()
	time.Sleep(200 * time.Millisecond)
	app.sink.mu.Lock()
	early := len(app.sink.changes)
	app.sink.mu.Unlock()
	if early != 0 {
		t.Fatalf("access changed before any notification came through SQS: %d changes", early)
	}
	for _, n := range app.em.Notifications(seq) {
		if n.Channel != emulator.ChannelSubscriptionSNS {
			continue
		}
		var env struct{ Message string }
		if err := json.Unmarshal(n.Body, &env); err != nil {
			t.Fatal(err)
		}
		// AWS Marketplace publishes the inner message to its topic.
		if _, err := sn.Publish(ctx, &awssns.PublishInput{TopicArn: aws.String(mpTopic), Message: aws.String(env.Message)}); err != nil {
			t.Fatal(err)
		}
	}
	granted := app.sink.waitFor(t, demoLegacyProduct, mpsaas.AccessGranted)
	out, err := sq.ReceiveMessage(ctx, &awssqs.ReceiveMessageInput{QueueUrl: aws.String(outURL), MaxNumberOfMessages: 1, WaitTimeSeconds: 5})
	if err != nil || len(out.Messages) != 1 {
		t.Fatalf("access topic delivered %+v, %v", out, err)
	}
	var env struct{ Message string }
	_ = json.Unmarshal([]byte(aws.ToString(out.Messages[0].Body)), &env)
	var c mpsaas.AccessChange
	if err := json.Unmarshal([]byte(env.Message), &c); err != nil || c.IdempotencyKey != granted.IdempotencyKey || c.Access != mpsaas.AccessGranted {
		t.Errorf("SNS access change = %+v (%v), webhook %+v", c, err, granted)
	}
}

package sqs_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awssns "github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/internal/testenv"
	"github.com/mpsaas/mpsaas/sns"
	"github.com/mpsaas/mpsaas/sqs"
	"github.com/mpsaas/mpsaas/subscription"
)

// clients returns SQS and SNS clients for the server at MPSAAS_SQS_ENDPOINT
// (goaws in CI); without it the tests are skipped unless MPSAAS_REQUIRE_SQS=1.
func clients(t *testing.T) (*awssqs.Client, *awssns.Client) {
	t.Helper()
	endpoint := testenv.SQS(t)
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("local", "local", ""), BaseEndpoint: aws.String(endpoint)}
	// goaws speaks SQS's Query protocol; current SDKs default to JSON.
	return awssqs.NewFromConfig(cfg, sqs.QueryProtocol), awssns.NewFromConfig(cfg)
}

func name(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func queue(t *testing.T, c *awssqs.Client, n string, visibility int) (url, arn string) {
	t.Helper()
	ctx := context.Background()
	out, err := c.CreateQueue(ctx, &awssqs.CreateQueueInput{QueueName: aws.String(n), Attributes: map[string]string{"VisibilityTimeout": strconv.Itoa(visibility)}})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := c.GetQueueAttributes(ctx, &awssqs.GetQueueAttributesInput{QueueUrl: out.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(out.QueueUrl), attrs.Attributes["QueueArn"]
}

type handler struct {
	mu     sync.Mutex
	bodies []string
	fail   int // fail this many valid messages first
}

func (h *handler) HandleMessage(_ context.Context, b []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.bodies = append(h.bodies, string(b))
	if _, err := subscription.ParseMessage(b, time.Now()); err != nil {
		return err
	}
	if h.fail > 0 {
		h.fail--
		return errors.New("transient")
	}
	return nil
}

func TestPollerWithSNSEnvelopes(t *testing.T) {
	sq, sn := clients(t)
	ctx := context.Background()
	qURL, qARN := queue(t, sq, name("mpsaas-subscriptions"), 1)
	topic, err := sn.CreateTopic(ctx, &awssns.CreateTopicInput{Name: aws.String(name("aws-mp-subscription-notification-prod"))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Subscribe(ctx, &awssns.SubscribeInput{TopicArn: topic.TopicArn, Protocol: aws.String("sqs"), Endpoint: aws.String(qARN)}); err != nil {
		t.Fatal(err)
	}
	// AWS Marketplace publishes; SQS receives the SNS envelope.
	msg := `{"action":"subscribe-success","customer-identifier":"C1","product-code":"prod","isFreeTrialTermPresent":"true"}`
	if _, err := sn.Publish(ctx, &awssns.PublishInput{TopicArn: topic.TopicArn, Message: aws.String(msg)}); err != nil {
		t.Fatal(err)
	}
	// And one message nobody can parse.
	if _, err := sq.SendMessage(ctx, &awssqs.SendMessageInput{QueueUrl: aws.String(qURL), MessageBody: aws.String("garbage")}); err != nil {
		t.Fatal(err)
	}
	h := &handler{fail: 1}
	p := &sqs.Poller{Client: sq, QueueURL: qURL, Handler: h, WaitTime: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := p.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		h.mu.Lock()
		valid := 0
		for _, b := range h.bodies {
			if _, err := subscription.ParseMessage([]byte(b), time.Now()); err == nil {
				valid++
			}
		}
		h.mu.Unlock()
		if valid >= 2 { // failed once, then handled
			break
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var events []mpsaas.Event
	garbage := 0
	for _, b := range h.bodies {
		evs, err := subscription.ParseMessage([]byte(b), time.Now())
		if err != nil {
			garbage++
			continue
		}
		events = append(events, evs...)
	}
	if len(events) < 2 || events[0].Kind != mpsaas.EventSubscribeSuccess || events[0].CustomerIdentifier != "C1" || events[0].ID != events[1].ID {
		t.Fatalf("events = %+v; want the same subscribe-success twice (failed, then redelivered)", events)
	}
	if garbage == 0 {
		t.Error("the malformed message never reached the handler")
	}
	// Handled messages are deleted: after one more visibility period the
	// queue holds at most the malformed one (on its way to a dead-letter queue).
	time.Sleep(1500 * time.Millisecond)
	out, err := sq.ReceiveMessage(ctx, &awssqs.ReceiveMessageInput{QueueUrl: aws.String(qURL), MaxNumberOfMessages: 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range out.Messages {
		if aws.ToString(m.Body) != "garbage" {
			t.Errorf("a handled message is still in the queue: %s", aws.ToString(m.Body))
		}
	}
}

func TestSNSSenderPublishesAccessChanges(t *testing.T) {
	sq, sn := clients(t)
	ctx := context.Background()
	qURL, qARN := queue(t, sq, name("access-out"), 30)
	topic, err := sn.CreateTopic(ctx, &awssns.CreateTopicInput{Name: aws.String(name("mpsaas-access-changes"))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Subscribe(ctx, &awssns.SubscribeInput{TopicArn: topic.TopicArn, Protocol: aws.String("sqs"), Endpoint: aws.String(qARN)}); err != nil {
		t.Fatal(err)
	}
	change := mpsaas.AccessChange{IdempotencyKey: "K:3", Access: mpsaas.AccessRevoked, Version: 3, Subscriber: mpsaas.SubscriberDTO{Key: "K"}}
	payload, _ := json.Marshal(change)
	s := &sns.Sender{Client: sn, TopicArn: aws.ToString(topic.TopicArn)}
	if err := s.Send(ctx, mpsaas.OutboxMessage{IdempotencyKey: "K:3", Payload: payload}); err != nil {
		t.Fatal(err)
	}
	out, err := sq.ReceiveMessage(ctx, &awssqs.ReceiveMessageInput{QueueUrl: aws.String(qURL), MaxNumberOfMessages: 1, WaitTimeSeconds: 2})
	if err != nil || len(out.Messages) != 1 {
		t.Fatalf("receive = %+v, %v", out, err)
	}
	var env struct {
		Message string `json:"Message"`
	}
	if err := json.Unmarshal([]byte(aws.ToString(out.Messages[0].Body)), &env); err != nil {
		t.Fatal(err)
	}
	var got mpsaas.AccessChange
	if err := json.Unmarshal([]byte(env.Message), &got); err != nil || got.IdempotencyKey != "K:3" || got.Access != mpsaas.AccessRevoked {
		t.Errorf("published change = %+v (%v) from %s", got, err, aws.ToString(out.Messages[0].Body))
	}
}

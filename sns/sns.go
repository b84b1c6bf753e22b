// Package sns publishes access changes to an Amazon SNS topic, the
// notification channel of the serverless deployment (email subscriptions,
// or the seller's own consumers).
package sns

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssns "github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sns/types"

	"github.com/mpsaas/mpsaas"
)

// Sender publishes outbox messages to TopicArn. Each message carries its
// idempotency key as a message attribute so consumers can drop repeats.
type Sender struct {
	Client   *awssns.Client
	TopicArn string
}

// Send publishes one access change.
func (s *Sender) Send(ctx context.Context, m mpsaas.OutboxMessage) error {
	var c mpsaas.AccessChange
	if err := json.Unmarshal(m.Payload, &c); err != nil {
		return fmt.Errorf("decode access change %s: %w", m.IdempotencyKey, err)
	}
	subject := fmt.Sprintf("mpsaas: access %s for %s", c.Access, c.Subscriber.Key)
	if len(subject) > 100 {
		subject = subject[:100]
	}
	_, err := s.Client.Publish(ctx, &awssns.PublishInput{
		TopicArn: aws.String(s.TopicArn),
		Message:  aws.String(string(m.Payload)),
		Subject:  aws.String(subject),
		MessageAttributes: map[string]types.MessageAttributeValue{
			"idempotencyKey": {DataType: aws.String("String"), StringValue: aws.String(m.IdempotencyKey)},
			"access":         {DataType: aws.String("String"), StringValue: aws.String(string(c.Access))},
		},
	})
	if err != nil {
		return fmt.Errorf("publish access change %s: %w", m.IdempotencyKey, err)
	}
	return nil
}

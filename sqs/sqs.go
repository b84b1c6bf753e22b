// Package sqs consumes a queue of AWS Marketplace notifications (the SNS
// topics subscribed to an SQS queue, or an EventBridge rule targeting it)
// for `mpsaas serve`: long-poll, hand each body to the subscription
// workflow, delete it only when handled.
package sqs

import (
	"context"
	"log/slog"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	sqsschemas "github.com/aws/aws-sdk-go-v2/service/sqs/schemas"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/smithy-go/transport/http/protocol/awsquery"

	"github.com/mpsaas/mpsaas"
)

// MessageHandler handles one notification body; an EINVALID error means it
// can never succeed.
type MessageHandler interface {
	HandleMessage(ctx context.Context, body []byte) error
}

// QueryProtocol makes an SQS client speak the Query protocol instead of
// JSON, for SQS-compatible servers that only know Query (such as goaws):
//
//	sqs.NewFromConfig(cfg, mpsaassqs.QueryProtocol)
func QueryProtocol(o *awssqs.Options) {
	o.Protocol = awsquery.New(sqsschemas.AmazonSQS)
}

// Poller consumes QueueURL. A failed message comes back after the queue's
// visibility timeout and, after its redrive policy's maxReceiveCount, goes
// to the dead-letter queue. A malformed one is made visible again at once
// so it reaches the dead-letter queue without waiting.
type Poller struct {
	Client   *awssqs.Client
	QueueURL string
	Handler  MessageHandler
	Logger   *slog.Logger
	// WaitTime is the long-poll wait (default 20s, the SQS maximum).
	WaitTime time.Duration
}

// Run polls until ctx is done.
func (p *Poller) Run(ctx context.Context) {
	for ctx.Err() == nil {
		if _, err := p.RunOnce(ctx); err != nil && ctx.Err() == nil {
			p.log().Error("SQS receive failed", "queue", p.QueueURL, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
		}
	}
}

func (p *Poller) log() *slog.Logger {
	if p.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Logger
}

// RunOnce receives and handles one batch; it returns how many messages it received.
func (p *Poller) RunOnce(ctx context.Context) (int, error) {
	wait := p.WaitTime
	if wait == 0 {
		wait = 20 * time.Second
	}
	out, err := p.Client.ReceiveMessage(ctx, &awssqs.ReceiveMessageInput{
		QueueUrl: aws.String(p.QueueURL), MaxNumberOfMessages: 10, WaitTimeSeconds: int32(wait / time.Second),
		MessageSystemAttributeNames: []types.MessageSystemAttributeName{types.MessageSystemAttributeNameApproximateReceiveCount},
	})
	if err != nil {
		return 0, err
	}
	var done []types.DeleteMessageBatchRequestEntry
	for _, m := range out.Messages {
		err := p.Handler.HandleMessage(ctx, []byte(aws.ToString(m.Body)))
		switch {
		case err == nil:
			done = append(done, types.DeleteMessageBatchRequestEntry{Id: m.MessageId, ReceiptHandle: m.ReceiptHandle})
		case mpsaas.ErrorCode(err) == mpsaas.EINVALID:
			p.log().Warn("malformed message; sending it on to the dead-letter queue", "messageId", aws.ToString(m.MessageId), "err", err)
			if _, verr := p.Client.ChangeMessageVisibility(ctx, &awssqs.ChangeMessageVisibilityInput{
				QueueUrl: aws.String(p.QueueURL), ReceiptHandle: m.ReceiptHandle, VisibilityTimeout: 0,
			}); verr != nil {
				p.log().Error("change visibility failed", "messageId", aws.ToString(m.MessageId), "err", verr)
			}
		default:
			p.log().Warn("message failed; it will come back", "messageId", aws.ToString(m.MessageId), "receives", m.Attributes[string(types.MessageSystemAttributeNameApproximateReceiveCount)], "err", err)
		}
	}
	if len(done) > 0 {
		res, err := p.Client.DeleteMessageBatch(ctx, &awssqs.DeleteMessageBatchInput{QueueUrl: aws.String(p.QueueURL), Entries: done})
		if err != nil {
			return len(out.Messages), err
		}
		for _, f := range res.Failed {
			// Handled but not deleted: it comes back and is handled again,
			// which the workflow tolerates (events are stored once by id).
			p.log().Warn("delete failed", "id", aws.ToString(f.Id), "code", aws.ToString(f.Code))
		}
	}
	return len(out.Messages), nil
}

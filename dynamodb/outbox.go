package dynamodb

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/mpsaas/mpsaas"
)

// DueMessages returns undelivered messages whose next attempt is due, from
// the sparse index of pending entries.
func (s *Store) DueMessages(ctx context.Context, now time.Time, limit int) ([]mpsaas.OutboxMessage, error) {
	if err := s.flushAllOutboxes(ctx); err != nil {
		return nil, err
	}
	out, err := s.client.Query(ctx, &ddb.QueryInput{
		TableName: aws.String(s.tables.Outbox), IndexName: aws.String(indexDue),
		KeyConditionExpression: aws.String("pending = :p AND nextAttemptAt <= :now"),
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":p": sv("1"), ":now": nv(timeN(now)),
		},
		Limit: aws.Int32(int32(limit)),
	})
	if err != nil {
		return nil, fmt.Errorf("due outbox messages: %w", err)
	}
	msgs := make([]mpsaas.OutboxMessage, 0, len(out.Items))
	for _, it := range out.Items {
		msgs = append(msgs, mpsaas.OutboxMessage{
			ID: getS(it, "id"), Channel: getS(it, "channel"), IdempotencyKey: getS(it, "idempotencyKey"),
			Payload: []byte(getS(it, "payload")), Attempts: int(getN(it, "attempts")),
			NextAttemptAt: fromN(getN(it, "nextAttemptAt")), LastError: getS(it, "lastError"),
		})
	}
	return msgs, nil
}

// MarkDelivered records a delivery: the entry leaves the pending index.
func (s *Store) MarkDelivered(ctx context.Context, id string, at time.Time) error {
	names, vals := map[string]string{}, map[string]types.AttributeValue{":at": nv(timeN(at)), ":one": nv(1)}
	in := &ddb.UpdateItemInput{
		TableName: aws.String(s.tables.Outbox), Key: map[string]types.AttributeValue{"id": sv(id)},
		UpdateExpression:          aws.String("SET deliveredAt = :at, attempts = attempts + :one" + s.setTTL(at, names, vals) + " REMOVE pending, lastError"),
		ConditionExpression:       aws.String("attribute_exists(id)"),
		ExpressionAttributeValues: vals,
	}
	if len(names) > 0 {
		in.ExpressionAttributeNames = names
	}
	_, err := s.client.UpdateItem(ctx, in)
	if err != nil {
		return fmt.Errorf("mark outbox %s delivered: %w", id, err)
	}
	return nil
}

// MarkFailed records a failed attempt and the next one.
func (s *Store) MarkFailed(ctx context.Context, id string, errMsg string, next time.Time) error {
	_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{
		TableName: aws.String(s.tables.Outbox), Key: map[string]types.AttributeValue{"id": sv(id)},
		UpdateExpression:          aws.String("SET attempts = attempts + :one, lastError = :e, nextAttemptAt = :next"),
		ConditionExpression:       aws.String("attribute_exists(pending)"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":one": nv(1), ":e": sv(errMsg), ":next": nv(timeN(next))},
	})
	if err != nil && !isConditionFailed(err) {
		return fmt.Errorf("mark outbox %s failed: %w", id, err)
	}
	return nil
}

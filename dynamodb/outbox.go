package dynamodb

import (
	"context"
	"fmt"
	"strconv"
	"strings"
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
		msgs = append(msgs, outboxMessageFrom(it))
	}
	return msgs, nil
}

// outboxMessageFrom reads an outbox item.
func outboxMessageFrom(it map[string]types.AttributeValue) mpsaas.OutboxMessage {
	m := mpsaas.OutboxMessage{
		ID: getS(it, "id"), Channel: getS(it, "channel"), IdempotencyKey: getS(it, "idempotencyKey"),
		Payload: []byte(getS(it, "payload")), Attempts: int(getN(it, "attempts")),
		NextAttemptAt: fromN(getN(it, "nextAttemptAt")), LastError: getS(it, "lastError"),
		SubscriberKey: getS(it, "subscriberKey"), CreatedAt: fromN(getN(it, "createdAt")), History: historyFrom(it),
	}
	if d := getN(it, "deliveredAt"); d != 0 {
		m.DeliveredAt = fromN(d)
	}
	return m
}

// MarkDelivered records a delivery: the entry leaves the pending index.
func (s *Store) MarkDelivered(ctx context.Context, id string, at time.Time) error {
	names, vals := map[string]string{}, map[string]types.AttributeValue{":at": nv(timeN(at)), ":one": nv(1), ":h": attemptItem(at, ""), ":empty": emptyList}
	in := &ddb.UpdateItemInput{
		TableName: aws.String(s.tables.Outbox), Key: map[string]types.AttributeValue{"id": sv(id)},
		UpdateExpression:          aws.String("SET deliveredAt = :at, attempts = attempts + :one, history = list_append(if_not_exists(history, :empty), :h)" + s.setTTL(at, names, vals) + " REMOVE pending, lastError"),
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
		UpdateExpression:    aws.String("SET attempts = attempts + :one, lastError = :e, nextAttemptAt = :next, history = list_append(if_not_exists(history, :empty), :h)"),
		ConditionExpression: aws.String("attribute_exists(pending)"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":one": nv(1), ":e": sv(errMsg), ":next": nv(timeN(next)),
			":h": attemptItem(s.Now(), errMsg), ":empty": emptyList},
	})
	if err != nil && !isConditionFailed(err) {
		return fmt.Errorf("mark outbox %s failed: %w", id, err)
	}
	return nil
}

// emptyList starts a history.
var emptyList = &types.AttributeValueMemberL{Value: []types.AttributeValue{}}

// attemptItem is one delivery attempt, appended to an outbox item's
// history (list of "<unix nano>|<error>"; one a retry, at most about 24 a
// day with the 1-hour backoff cap, and the item expires after delivery).
func attemptItem(at time.Time, errMsg string) types.AttributeValue {
	if len(errMsg) > 500 {
		errMsg = errMsg[:500]
	}
	return &types.AttributeValueMemberL{Value: []types.AttributeValue{sv(fmt.Sprintf("%d|%s", at.UnixNano(), errMsg))}}
}

// historyFrom reads an outbox item's history.
func historyFrom(it map[string]types.AttributeValue) []mpsaas.DeliveryAttempt {
	l, _ := it["history"].(*types.AttributeValueMemberL)
	if l == nil {
		return nil
	}
	out := make([]mpsaas.DeliveryAttempt, 0, len(l.Value))
	for _, v := range l.Value {
		s, _ := v.(*types.AttributeValueMemberS)
		if s == nil {
			continue
		}
		ns, msg, _ := strings.Cut(s.Value, "|")
		n, _ := strconv.ParseInt(ns, 10, 64)
		out = append(out, mpsaas.DeliveryAttempt{At: time.Unix(0, n).UTC(), Error: msg})
	}
	return out
}

package dynamodb

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/mpsaas/mpsaas"
)

var _ mpsaas.ConsoleStore = (*Store)(nil)

// consoleScanBudget bounds the items one ListSubscribers call reads (about
// 5,000 x 1-2 KB, so ~1,250-2,500 eventually consistent read units at
// worst): a search that matches rarely returns a shorter page and a cursor
// instead of scanning 100,000 buyers in one request.
const consoleScanBudget = 5000

// ListSubscribers scans the subscribers table (eventually consistent, in
// the table's order) from the cursor, keeping those f matches, until the
// page is full, the table ends or the scan budget is spent. The cursor is
// the key of the last item read: a Scan resumes after any key.
func (s *Store) ListSubscribers(ctx context.Context, f mpsaas.SubscriberFilter) (mpsaas.SubscriberPage, error) {
	var page mpsaas.SubscriberPage
	want := f.PageSize()
	var start map[string]types.AttributeValue
	if f.After != "" {
		start = map[string]types.AttributeValue{"customerIdentifier": sv(f.After)}
	}
	for {
		out, err := s.client.Scan(ctx, &ddb.ScanInput{TableName: aws.String(s.tables.Subscribers), ExclusiveStartKey: start,
			Limit: aws.Int32(int32(min(500, consoleScanBudget-page.Scanned)))})
		if err != nil {
			return page, fmt.Errorf("scan %s: %w", s.tables.Subscribers, err)
		}
		for i, it := range out.Items {
			page.Scanned++
			key := getS(it, "customerIdentifier")
			if strings.HasPrefix(key, "\x00") || getS(it, "linkTo") != "" {
				continue // meta and account-link items
			}
			sub, err := subscriberFrom(it)
			if err != nil {
				return page, err
			}
			if !f.Match(sub) {
				continue
			}
			page.Subscribers = append(page.Subscribers, sub)
			if len(page.Subscribers) == want {
				if i < len(out.Items)-1 || out.LastEvaluatedKey != nil {
					page.Next = key
				}
				return page, nil
			}
		}
		if out.LastEvaluatedKey == nil {
			return page, nil
		}
		start = out.LastEvaluatedKey
		if page.Scanned >= consoleScanBudget {
			page.Next = getS(start, "customerIdentifier")
			return page, nil
		}
	}
}

// DeliveriesFor reads the outbox items of the subscriber's last 50 access
// versions on each channel by their keys (channel#key:version): no index
// is needed, at most 50 x channels items (BatchGetItem, 100 keys a call).
func (s *Store) DeliveriesFor(ctx context.Context, sub *mpsaas.Subscriber, channels []string) ([]mpsaas.OutboxMessage, error) {
	var keys []map[string]types.AttributeValue
	for v := sub.AccessVersion; v >= 1 && v > sub.AccessVersion-50; v-- {
		for _, ch := range channels {
			keys = append(keys, map[string]types.AttributeValue{"id": sv(fmt.Sprintf("%s#%s:%d", ch, sub.Key, v))})
		}
	}
	var out []mpsaas.OutboxMessage
	for len(keys) > 0 {
		n := min(len(keys), 100)
		pending := keys[:n]
		keys = keys[n:]
		for attempt := 0; len(pending) > 0; attempt++ {
			res, err := s.client.BatchGetItem(ctx, &ddb.BatchGetItemInput{RequestItems: map[string]types.KeysAndAttributes{
				s.tables.Outbox: {Keys: pending}}})
			if err != nil {
				return nil, fmt.Errorf("read deliveries of %s: %w", sub.Key, err)
			}
			for _, it := range res.Responses[s.tables.Outbox] {
				out = append(out, outboxMessageFrom(it))
			}
			pending = res.UnprocessedKeys[s.tables.Outbox].Keys
			if len(pending) > 0 {
				if err := sleepCtx(ctx, backoff(attempt+1)); err != nil {
					return nil, err
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].ID > out[j].ID
	})
	return out, nil
}

// FailedDeliveries reads the sparse index of undelivered messages (only
// undelivered ones are in it) and keeps those with a failed attempt.
func (s *Store) FailedDeliveries(ctx context.Context, limit int) ([]mpsaas.OutboxMessage, error) {
	p := ddb.NewQueryPaginator(s.client, &ddb.QueryInput{
		TableName: aws.String(s.tables.Outbox), IndexName: aws.String(indexDue),
		KeyConditionExpression:    aws.String("pending = :p"),
		FilterExpression:          aws.String("attempts > :zero"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv("1"), ":zero": nv(0)},
	})
	var out []mpsaas.OutboxMessage
	for p.HasMorePages() && len(out) < limit {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("failed deliveries: %w", err)
		}
		for _, it := range page.Items {
			if len(out) < limit {
				out = append(out, outboxMessageFrom(it))
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// RetryDelivery makes an undelivered message due at now.
func (s *Store) RetryDelivery(ctx context.Context, id string, now time.Time) error {
	_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{
		TableName: aws.String(s.tables.Outbox), Key: map[string]types.AttributeValue{"id": sv(id)},
		UpdateExpression:          aws.String("SET nextAttemptAt = :now"),
		ConditionExpression:       aws.String("attribute_exists(pending)"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":now": nv(timeN(now))},
	})
	if isConditionFailed(err) {
		return mpsaas.Errorf(mpsaas.ENOTFOUND, "no undelivered message %q", id)
	}
	if err != nil {
		return fmt.Errorf("retry outbox %s: %w", id, err)
	}
	return nil
}

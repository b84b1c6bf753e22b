package dynamodb

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/mpsaas/mpsaas"
)

// query returns every item of a key condition (all pages).
func (s *Store) query(ctx context.Context, in *ddb.QueryInput) ([]map[string]types.AttributeValue, error) {
	p := ddb.NewQueryPaginator(s.client, in)
	var out []map[string]types.AttributeValue
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("query %s: %w", aws.ToString(in.TableName), err)
		}
		out = append(out, page.Items...)
	}
	return out, nil
}

// ActiveSubscribers returns the subscribers whose status is in statuses.
func (s *Store) ActiveSubscribers(ctx context.Context, statuses []mpsaas.Status) ([]*mpsaas.Subscriber, error) {
	var out []*mpsaas.Subscriber
	err := s.EachSubscriber(ctx, statuses, func(sub *mpsaas.Subscriber) error {
		out = append(out, sub)
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, err
}

// EachSubscriber calls fn with every subscriber whose status is in
// statuses, a page of the table at a time: memory does not grow with the
// number of buyers. It scans the whole table (eventually consistent reads:
// half a read unit per 4 KB).
func (s *Store) EachSubscriber(ctx context.Context, statuses []mpsaas.Status, fn func(*mpsaas.Subscriber) error) error {
	p := ddb.NewScanPaginator(s.client, &ddb.ScanInput{TableName: aws.String(s.tables.Subscribers)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("scan %s: %w", s.tables.Subscribers, err)
		}
		for _, it := range page.Items {
			if strings.HasPrefix(getS(it, "customerIdentifier"), "\x00") {
				continue
			}
			sub, err := subscriberFrom(it)
			if err != nil {
				return err
			}
			if slices.Contains(statuses, sub.Status) {
				if err := fn(sub); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// backoff is the jittered delay before retry attempt n (n >= 1) of
// unprocessed items: up to 50 ms doubling per attempt, capped at 2 s.
func backoff(n int) time.Duration {
	ceiling := min(50*time.Millisecond<<min(n-1, 6), 2*time.Second)
	return ceiling/2 + time.Duration(rand.Int64N(int64(ceiling/2)+1))
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// withTTL sets the item's time-to-live attribute when ttl is positive.
func withTTL(item map[string]types.AttributeValue, ttl int64) map[string]types.AttributeValue {
	if ttl > 0 {
		item[TTLAttribute] = nv(ttl)
	}
	return item
}

// setTTL adds the time-to-live of an item done at t to an update's names
// and values and returns the SET clause to append ("" without retention).
func (s *Store) setTTL(t time.Time, names map[string]string, vals map[string]types.AttributeValue) string {
	ttl := s.expiry(t)
	if ttl <= 0 {
		return ""
	}
	names["#ttl"], vals[":ttl"] = TTLAttribute, nv(ttl) // "ttl" is a reserved word
	return ", #ttl = :ttl"
}

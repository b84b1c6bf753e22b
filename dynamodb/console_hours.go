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

var _ mpsaas.UsageHistory = (*HourStore)(nil)

// maxHistoryHours bounds one UsageHistory read (31 days).
const maxHistoryHours = 31 * 24

// UsageHistory queries, for each hour, the buyer's usage items in the
// hour's shard (sort key prefix "buyer␟"): one eventually consistent Query
// per hour, 0.5 read unit each for a buyer with a few dimensions; a week is
// 168 queries, 8 at a time. Items whose usage moved to a later hour are
// skipped: the usage shows in the hour it moved to.
func (s *HourStore) UsageHistory(ctx context.Context, key string, from, to time.Time) ([]mpsaas.HourUsage, error) {
	from, to = mpsaas.Hour(from), mpsaas.Hour(to)
	if n := int(to.Sub(from)/time.Hour) + 1; n > maxHistoryHours {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "usage history of at most %d hours, not %d", maxHistoryHours, n)
	}
	var hours []time.Time
	for h := from; !h.After(to); h = h.Add(time.Hour) {
		hours = append(hours, h)
	}
	found := make([][]mpsaas.HourUsage, len(hours))
	err := parallel(ctx, len(hours), 8, func(i int) error {
		h := hours[i]
		k := itemKey{sub: key, hour: h.Unix()}
		return s.pages(ctx, &ddb.QueryInput{TableName: s.table(),
			KeyConditionExpression:    aws.String("pk = :p AND begins_with(sk, :prefix)"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv(k.pk()), ":prefix": sv(key + "\x1f")}},
			func(it map[string]types.AttributeValue) error {
				if _, moved := it["to"]; moved {
					return nil
				}
				u := mpsaas.HourUsage{Dimension: getS(it, "dim"), Hour: h, Usage: getN(it, "q"), Quantity: getN(it, "bq"),
					State: getS(it, "st"), BatchID: getN(it, "batch"), MeteringRecordID: getS(it, "mrid"), Reason: getS(it, "reason")}
				if u.State == "" {
					u.State, u.Quantity = mpsaas.UsagePending, 0
				}
				found[i] = append(found[i], u)
				return nil
			})
	})
	if err != nil {
		return nil, fmt.Errorf("usage history of %s: %w", key, err)
	}
	var out []mpsaas.HourUsage
	for _, f := range found {
		out = append(out, f...)
	}
	mpsaas.SortHourUsage(out)
	return out, nil
}

// HourSummaries reads the hour marks from..to (one Query): a done hour's
// counts by state, and for an hour still being metered how many of its
// shards are sealed (its counts would mean reading all its items).
func (s *HourStore) HourSummaries(ctx context.Context, from, to time.Time) ([]mpsaas.HourSummary, error) {
	metas, err := s.metas(ctx, mpsaas.Hour(from).Unix(), mpsaas.Hour(to).Unix())
	if err != nil {
		return nil, err
	}
	var out []mpsaas.HourSummary
	for h := mpsaas.Hour(to).Unix(); h >= mpsaas.Hour(from).Unix(); h -= 3600 {
		m, ok := metas[h]
		if !ok || m.done && len(m.counts) == 0 {
			continue // no usage in that hour
		}
		sum := mpsaas.HourSummary{Hour: time.Unix(h, 0).UTC(), Late: -1, Done: m.done, Sealed: len(m.sealed), Parts: hourShards}
		if m.done {
			sum.Counts = m.counts
		}
		out = append(out, sum)
	}
	return out, nil
}

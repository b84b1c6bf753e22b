package dynamodb

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/mpsaas/mpsaas"
)

// The metering tables. Usage ids come from an atomic counter; a request
// is recorded (with its id range, "writing") before its rows are written,
// so PendingRange never reaches past a row that is still being written —
// the committed watermark the sealing relies on.
const (
	indexPendingID  = "pending-id-index"
	indexSubscriber = "subscriberKey-id-index"
	indexWriting    = "writing-firstId-index"
	indexSealed     = "sealed-id-index"
	indexBatch      = "batchId-index"
	indexHour       = "hour-index"

	counterUsage = "\x00counter:usage"
	counterMeter = "\x00counter:meter"
	counterBatch = "\x00counter:batch"

	// staleWriting is when a request left "writing" by a crashed client no
	// longer holds back sealing.
	staleWriting = 10 * time.Minute
)

var _ mpsaas.MeterStore = (*Store)(nil)

// createMeteringTables creates the usage, request, meter record and batch tables.
func (s *Store) createMeteringTables(ctx context.Context) error {
	str := func(n string) types.AttributeDefinition {
		return types.AttributeDefinition{AttributeName: aws.String(n), AttributeType: types.ScalarAttributeTypeS}
	}
	num := func(n string) types.AttributeDefinition {
		return types.AttributeDefinition{AttributeName: aws.String(n), AttributeType: types.ScalarAttributeTypeN}
	}
	keys := func(hash, rng string) []types.KeySchemaElement {
		k := []types.KeySchemaElement{{AttributeName: aws.String(hash), KeyType: types.KeyTypeHash}}
		if rng != "" {
			k = append(k, types.KeySchemaElement{AttributeName: aws.String(rng), KeyType: types.KeyTypeRange})
		}
		return k
	}
	gsi := func(name, hash, rng string) types.GlobalSecondaryIndex {
		return types.GlobalSecondaryIndex{IndexName: aws.String(name), KeySchema: keys(hash, rng), Projection: &types.Projection{ProjectionType: types.ProjectionTypeAll}}
	}
	return s.createTables(ctx, []*ddb.CreateTableInput{
		{
			TableName:            aws.String(s.tables.Usage),
			AttributeDefinitions: []types.AttributeDefinition{num("id"), str("pending"), str("subscriberKey")},
			KeySchema:            keys("id", ""),
			GlobalSecondaryIndexes: []types.GlobalSecondaryIndex{
				gsi(indexPendingID, "pending", "id"), gsi(indexSubscriber, "subscriberKey", "id"),
			},
		},
		{
			TableName:              aws.String(s.tables.UsageRequests),
			AttributeDefinitions:   []types.AttributeDefinition{str("key"), str("writing"), num("firstId")},
			KeySchema:              keys("key", ""),
			GlobalSecondaryIndexes: []types.GlobalSecondaryIndex{gsi(indexWriting, "writing", "firstId")},
		},
		{
			TableName:            aws.String(s.tables.MeterRecords),
			AttributeDefinitions: []types.AttributeDefinition{str("key"), str("sealed"), num("id"), num("batchId"), num("hour")},
			KeySchema:            keys("key", ""),
			GlobalSecondaryIndexes: []types.GlobalSecondaryIndex{
				gsi(indexSealed, "sealed", "id"), gsi(indexBatch, "batchId", "id"), gsi(indexHour, "hour", "id"),
			},
		},
		{
			TableName:              aws.String(s.tables.MeterBatches),
			AttributeDefinitions:   []types.AttributeDefinition{num("id"), str("pending"), num("nextAttemptAt")},
			KeySchema:              keys("id", ""),
			GlobalSecondaryIndexes: []types.GlobalSecondaryIndex{gsi(indexDue, "pending", "nextAttemptAt")},
		},
	})
}

func meterKey(sub, dim string, hour time.Time) string {
	return sub + "\x1f" + dim + "\x1f" + strconv.FormatInt(hour.Unix(), 10)
}

// allocate reserves n ids from a counter and returns the first.
func (s *Store) allocate(ctx context.Context, counter string, n int) (int64, error) {
	out, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{
		TableName: aws.String(s.tables.UsageRequests), Key: map[string]types.AttributeValue{"key": sv(counter)},
		UpdateExpression:          aws.String("ADD seq :n"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":n": nv(int64(n))},
		ReturnValues:              types.ReturnValueUpdatedNew,
	})
	if err != nil {
		return 0, fmt.Errorf("allocate ids: %w", err)
	}
	return getN(out.Attributes, "seq") - int64(n) + 1, nil
}

func (s *Store) counter(ctx context.Context, counter string) (int64, error) {
	out, err := s.client.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(s.tables.UsageRequests), ConsistentRead: aws.Bool(true),
		Key: map[string]types.AttributeValue{"key": sv(counter)}})
	if err != nil {
		return 0, err
	}
	return getN(out.Item, "seq"), nil
}

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

func (s *Store) scan(ctx context.Context, table string) ([]map[string]types.AttributeValue, error) {
	p := ddb.NewScanPaginator(s.client, &ddb.ScanInput{TableName: aws.String(table), ConsistentRead: aws.Bool(true)})
	var out []map[string]types.AttributeValue
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", table, err)
		}
		out = append(out, page.Items...)
	}
	return out, nil
}

// hourPlacer puts usage of an already metered (subscriber, dimension, hour)
// into the first free hour from the open hour on.
type hourPlacer struct {
	s        *Store
	ctx      context.Context
	openHour time.Time
	sealed   map[string]bool
	anyHour  map[int64]bool
}

func (s *Store) placer(ctx context.Context, openHour time.Time) *hourPlacer {
	return &hourPlacer{s: s, ctx: ctx, openHour: openHour, sealed: map[string]bool{}, anyHour: map[int64]bool{}}
}

func (p *hourPlacer) isSealed(sub, dim string, h time.Time) (bool, error) {
	any, ok := p.anyHour[h.Unix()]
	if !ok {
		out, err := p.s.client.Query(p.ctx, &ddb.QueryInput{TableName: aws.String(p.s.tables.MeterRecords), IndexName: aws.String(indexHour),
			KeyConditionExpression: aws.String("#h = :h"), ExpressionAttributeNames: map[string]string{"#h": "hour"},
			ExpressionAttributeValues: map[string]types.AttributeValue{":h": nv(h.Unix())}, Limit: aws.Int32(1)})
		if err != nil {
			return false, err
		}
		any = len(out.Items) > 0
		p.anyHour[h.Unix()] = any
	}
	if !any {
		return false, nil
	}
	k := meterKey(sub, dim, h)
	if v, ok := p.sealed[k]; ok {
		return v, nil
	}
	out, err := p.s.client.GetItem(p.ctx, &ddb.GetItemInput{TableName: aws.String(p.s.tables.MeterRecords), ConsistentRead: aws.Bool(true),
		Key: map[string]types.AttributeValue{"key": sv(k)}, ProjectionExpression: aws.String("#k"), ExpressionAttributeNames: map[string]string{"#k": "key"}})
	if err != nil {
		return false, err
	}
	p.sealed[k] = out.Item != nil
	return out.Item != nil, nil
}

func (p *hourPlacer) place(sub, dim string, h time.Time) (time.Time, error) {
	return mpsaas.MeterHour(h, p.openHour, func(h time.Time) (bool, error) { return p.isSealed(sub, dim, h) })
}

// AddUsage stores a request's rows under its idempotency key.
func (s *Store) AddUsage(ctx context.Context, key, hash string, rows []mpsaas.UsageRow, openHour, now time.Time) (mpsaas.UsageReceipt, error) {
	reqKey := map[string]types.AttributeValue{"key": sv("request:" + key)}
	for attempt := 0; attempt < 3; attempt++ {
		out, err := s.client.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(s.tables.UsageRequests), Key: reqKey, ConsistentRead: aws.Bool(true)})
		if err != nil {
			return mpsaas.UsageReceipt{}, fmt.Errorf("add usage %s: %w", key, err)
		}
		if it := out.Item; it != nil {
			if getS(it, "hash") != hash {
				return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.ECONFLICT, "idempotency key %q was already used for different usage records", key)
			}
			rec := mpsaas.UsageReceipt{IdempotencyKey: key, Accepted: int(getN(it, "accepted")), FirstID: getN(it, "firstId"), ReceivedAt: fromN(getN(it, "receivedAt")), Replayed: true}
			if getS(it, "writing") != "" {
				// An earlier attempt stopped half-way: finish it.
				if err := s.writeUsage(ctx, key, rec.FirstID, rows, openHour, now, true); err != nil {
					return rec, err
				}
			}
			return rec, nil
		}
		first, err := s.allocate(ctx, counterUsage, len(rows))
		if err != nil {
			return mpsaas.UsageReceipt{}, err
		}
		_, err = s.client.PutItem(ctx, &ddb.PutItemInput{TableName: aws.String(s.tables.UsageRequests),
			Item: withTTL(map[string]types.AttributeValue{"key": reqKey["key"], "hash": sv(hash), "accepted": nv(int64(len(rows))), "firstId": nv(first),
				"receivedAt": nv(timeN(now)), "writing": sv("1")}, s.expiry(now)),
			ConditionExpression: aws.String("attribute_not_exists(#k)"), ExpressionAttributeNames: map[string]string{"#k": "key"}})
		if isConditionFailed(err) {
			continue // the same key arrived concurrently; read what it stored
		}
		if err != nil {
			return mpsaas.UsageReceipt{}, fmt.Errorf("add usage %s: %w", key, err)
		}
		if err := s.writeUsage(ctx, key, first, rows, openHour, now, false); err != nil {
			return mpsaas.UsageReceipt{}, err
		}
		return mpsaas.UsageReceipt{IdempotencyKey: key, Accepted: len(rows), FirstID: first, ReceivedAt: now}, nil
	}
	return mpsaas.UsageReceipt{}, fmt.Errorf("add usage %s: concurrent requests with the same key", key)
}

// writeUsage writes rows with ids first.. and clears the request's writing
// flag. On resume, rows that exist are left alone (they may be sealed).
func (s *Store) writeUsage(ctx context.Context, key string, first int64, rows []mpsaas.UsageRow, openHour, now time.Time, resume bool) error {
	exists := map[int64]bool{}
	if resume {
		for start := 0; start < len(rows); start += 100 {
			var keys []map[string]types.AttributeValue
			for i := start; i < min(start+100, len(rows)); i++ {
				keys = append(keys, map[string]types.AttributeValue{"id": nv(first + int64(i))})
			}
			out, err := s.client.BatchGetItem(ctx, &ddb.BatchGetItemInput{RequestItems: map[string]types.KeysAndAttributes{
				s.tables.Usage: {Keys: keys, ConsistentRead: aws.Bool(true), ProjectionExpression: aws.String("id")}}})
			if err != nil {
				return fmt.Errorf("resume usage %s: %w", key, err)
			}
			for _, it := range out.Responses[s.tables.Usage] {
				exists[getN(it, "id")] = true
			}
			if len(out.UnprocessedKeys) > 0 {
				return fmt.Errorf("resume usage %s: throttled; retry", key)
			}
		}
	}
	hours := s.placer(ctx, openHour)
	var writes []types.WriteRequest
	flush := func() error {
		for attempt := 0; len(writes) > 0; attempt++ {
			if attempt > 0 {
				// Unprocessed items mean throttling: back off (jittered,
				// growing, capped) before sending the rest again.
				if err := sleepCtx(ctx, backoff(attempt)); err != nil {
					return fmt.Errorf("write usage %s: %w", key, err)
				}
			}
			out, err := s.client.BatchWriteItem(ctx, &ddb.BatchWriteItemInput{RequestItems: map[string][]types.WriteRequest{s.tables.Usage: writes}})
			if err != nil {
				return fmt.Errorf("write usage %s: %w", key, err)
			}
			writes = out.UnprocessedItems[s.tables.Usage]
		}
		return nil
	}
	for i, r := range rows {
		id := first + int64(i)
		if exists[id] {
			continue
		}
		h, err := hours.place(r.SubscriberKey, r.Dimension, mpsaas.Hour(r.Time))
		if err != nil {
			return err
		}
		item := map[string]types.AttributeValue{
			"id": nv(id), "subscriberKey": sv(r.SubscriberKey), "dimension": sv(r.Dimension), "quantity": nv(r.Quantity),
			"usageTime": nv(timeN(r.Time)), "meterHour": nv(h.Unix()), "state": sv(mpsaas.UsagePending), "pending": sv("1"),
			"requestKey": sv(key), "receivedAt": nv(timeN(now)),
		}
		putS(item, "tagSig", r.TagSig)
		if uh := mpsaas.Hour(r.Time); !h.Equal(uh) {
			putS(item, "reason", mpsaas.LateReason(uh, h))
		}
		writes = append(writes, types.WriteRequest{PutRequest: &types.PutRequest{Item: item}})
		if len(writes) == 25 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: aws.String(s.tables.UsageRequests),
		Key: map[string]types.AttributeValue{"key": sv("request:" + key)}, UpdateExpression: aws.String("REMOVE writing")})
	if err != nil {
		return fmt.Errorf("finish usage %s: %w", key, err)
	}
	return nil
}

// PendingRange returns the lowest pending usage id and the committed
// watermark: the highest id below any request still being written.
func (s *Store) PendingRange(ctx context.Context) (mpsaas.PendingScan, error) {
	var scan mpsaas.PendingScan
	records, err := s.counter(ctx, counterMeter)
	if err != nil {
		return scan, fmt.Errorf("pending range: %w", err)
	}
	scan.Records = records
	out, err := s.client.Query(ctx, &ddb.QueryInput{TableName: aws.String(s.tables.Usage), IndexName: aws.String(indexPendingID),
		KeyConditionExpression: aws.String("pending = :p"), ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv("1")}, Limit: aws.Int32(1)})
	if err != nil {
		return scan, fmt.Errorf("pending range: %w", err)
	}
	if len(out.Items) == 0 {
		return scan, nil
	}
	lo := getN(out.Items[0], "id")
	hi, err := s.counter(ctx, counterUsage)
	if err != nil {
		return scan, fmt.Errorf("pending range: %w", err)
	}
	writing, err := s.query(ctx, &ddb.QueryInput{TableName: aws.String(s.tables.UsageRequests), IndexName: aws.String(indexWriting),
		KeyConditionExpression: aws.String("writing = :w"), ExpressionAttributeValues: map[string]types.AttributeValue{":w": sv("1")}})
	if err != nil {
		return scan, err
	}
	for _, w := range writing {
		if s.Now().Sub(fromN(getN(w, "receivedAt"))) > staleWriting {
			continue // abandoned: what it wrote counts, the rest never came
		}
		hi = min(hi, getN(w, "firstId")-1)
	}
	if hi >= lo {
		scan.Lo, scan.Hi = lo, hi
	}
	return scan, nil
}

type usageItem struct {
	id        int64
	sub, dim  string
	hour      time.Time
	usageHour time.Time
	tag       string
	quantity  int64
}

func (s *Store) pendingItems(ctx context.Context, lo, hi int64) ([]usageItem, error) {
	items, err := s.query(ctx, &ddb.QueryInput{TableName: aws.String(s.tables.Usage), IndexName: aws.String(indexPendingID),
		KeyConditionExpression:    aws.String("pending = :p AND id BETWEEN :lo AND :hi"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv("1"), ":lo": nv(lo), ":hi": nv(hi)}})
	if err != nil {
		return nil, err
	}
	out := make([]usageItem, len(items))
	for i, it := range items {
		out[i] = usageItem{id: getN(it, "id"), sub: getS(it, "subscriberKey"), dim: getS(it, "dimension"),
			hour: time.Unix(getN(it, "meterHour"), 0).UTC(), tag: getS(it, "tagSig"), quantity: getN(it, "quantity")}
		out[i].usageHour = out[i].hour
		if uh := mpsaas.Hour(fromN(getN(it, "usageTime"))); !uh.IsZero() && uh.Before(out[i].hour) {
			out[i].usageHour = uh
		}
	}
	return out, nil
}

func qualifies(u usageItem, scan *mpsaas.PendingScan, flush map[string]bool) bool {
	return u.hour.Before(scan.Before) || (flush[u.sub] && !u.hour.After(scan.FlushUntil))
}

func setOf(keys []string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// ScanPending sums pending usage in [lo, hi] per key and tag set, in order.
// The pending index is eventually consistent, so a second reading could
// see usage this one did not: the ids summed are kept in scan.Summed and
// SealUsage seals those and no others.
func (s *Store) ScanPending(ctx context.Context, scan *mpsaas.PendingScan, fn func(mpsaas.UsageGroup) error) error {
	items, err := s.pendingItems(ctx, scan.Lo, scan.Hi)
	if err != nil {
		return err
	}
	fl := setOf(scan.Flush)
	groups := map[[5]string]*mpsaas.UsageGroup{}
	ranges := map[string]*rangeCount{}
	scan.Summed = scan.Summed[:0]
	for _, u := range items {
		if !qualifies(u, scan, fl) {
			continue
		}
		mk := meterKey(u.sub, u.dim, u.hour)
		rc := ranges[mk]
		if rc == nil {
			rc = &rangeCount{last: -1}
			ranges[mk] = rc
		}
		if !rc.add(u.id) {
			continue // the record is full: this usage stays pending and goes to a later hour
		}
		scan.Summed = append(scan.Summed, u.id)
		k := [5]string{strconv.FormatInt(u.hour.Unix(), 10), u.sub, u.dim, strconv.FormatInt(u.usageHour.Unix(), 10), u.tag}
		g := groups[k]
		if g == nil {
			g = &mpsaas.UsageGroup{SubscriberKey: u.sub, Dimension: u.dim, Hour: u.hour, UsageHour: u.usageHour, TagSig: u.tag}
			groups[k] = g
		}
		g.Quantity += u.quantity
		g.Records++
		g.IDs = append(g.IDs, u.id)
	}
	list := make([]*mpsaas.UsageGroup, 0, len(groups))
	for _, g := range groups {
		list = append(list, g)
	}
	sort.Slice(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if !a.Hour.Equal(b.Hour) {
			return a.Hour.Before(b.Hour)
		}
		if a.SubscriberKey != b.SubscriberKey {
			return a.SubscriberKey < b.SubscriberKey
		}
		if a.Dimension != b.Dimension {
			return a.Dimension < b.Dimension
		}
		if !a.UsageHour.Equal(b.UsageHour) {
			return a.UsageHour.Before(b.UsageHour)
		}
		return a.TagSig < b.TagSig
	})
	for _, g := range list {
		if err := fn(*g); err != nil {
			return err
		}
	}
	return nil
}

func meterItem(r mpsaas.MeterRecord, id, upTo int64, now time.Time) (map[string]types.AttributeValue, error) {
	state := r.State
	if state == "" {
		state = mpsaas.UsageSealed
	}
	item := map[string]types.AttributeValue{
		"key": sv(meterKey(r.SubscriberKey, r.Dimension, r.Hour)), "id": nv(id), "subscriberKey": sv(r.SubscriberKey),
		"dimension": sv(r.Dimension), "hour": nv(r.Hour.Unix()), "quantity": nv(r.Quantity), "usageQuantity": nv(r.UsageQuantity), "maxUsageId": nv(upTo),
		"state": sv(state), "createdAt": nv(timeN(now)),
	}
	if state == mpsaas.UsageSealed {
		item["sealed"] = sv("1")
	}
	// Exactly the usage the record includes: the pending index may miss a
	// row a moment old, so "every id up to the scan's end" would take in
	// usage that was never summed (issue 8, item 3).
	ids := slices.Clone(r.UsageIDs)
	slices.Sort(ids)
	item["usageIds"] = sv(encodeRanges(slices.Compact(ids)))
	if r.Allocations != nil {
		b, err := json.Marshal(r.Allocations)
		if err != nil {
			return nil, err
		}
		item["allocations"] = sv(string(b))
	}
	if r.Shares != nil {
		b, err := json.Marshal(r.Shares)
		if err != nil {
			return nil, err
		}
		item["shares"] = sv(string(b))
	}
	putS(item, "customerIdentifier", r.CustomerIdentifier)
	putS(item, "awsAccountId", r.CustomerAWSAccountID)
	putS(item, "licenseArn", r.LicenseArn)
	putS(item, "productCode", r.ProductCode)
	putS(item, "reason", r.Reason)
	return item, nil
}

func meterFrom(it map[string]types.AttributeValue) (mpsaas.MeterRecord, error) {
	r := mpsaas.MeterRecord{
		ID: getN(it, "id"), SubscriberKey: getS(it, "subscriberKey"), Dimension: getS(it, "dimension"),
		Hour: time.Unix(getN(it, "hour"), 0).UTC(), Quantity: getN(it, "quantity"),
		CustomerIdentifier: getS(it, "customerIdentifier"), CustomerAWSAccountID: getS(it, "awsAccountId"),
		LicenseArn: getS(it, "licenseArn"), ProductCode: getS(it, "productCode"), State: getS(it, "state"),
		BatchID: getN(it, "batchId"), MeteringRecordID: getS(it, "meteringRecordId"), Reason: getS(it, "reason"),
	}
	if a := getS(it, "allocations"); a != "" {
		if err := json.Unmarshal([]byte(a), &r.Allocations); err != nil {
			return r, fmt.Errorf("meter record %d allocations: %w", r.ID, err)
		}
	}
	r.UsageQuantity = getN(it, "usageQuantity")
	if sh := getS(it, "shares"); sh != "" {
		if err := json.Unmarshal([]byte(sh), &r.Shares); err != nil {
			return r, fmt.Errorf("meter record %d shares: %w", r.ID, err)
		}
	}
	return r, nil
}

// MeterRecordsFor reads the records of a buyer and dimension for the hours
// from..to by their keys (consistent reads: one read unit per record).
func (s *Store) MeterRecordsFor(ctx context.Context, subscriberKey, dimension string, from, to time.Time) ([]mpsaas.MeterRecord, error) {
	var keys []map[string]types.AttributeValue
	for h := from; !h.After(to); h = h.Add(time.Hour) {
		keys = append(keys, map[string]types.AttributeValue{"key": sv(meterKey(subscriberKey, dimension, h))})
	}
	var out []mpsaas.MeterRecord
	for len(keys) > 0 {
		n := min(len(keys), 100)
		batch := keys[:n]
		keys = keys[n:]
		attempt := 0
		for len(batch) > 0 {
			res, err := s.client.BatchGetItem(ctx, &ddb.BatchGetItemInput{RequestItems: map[string]types.KeysAndAttributes{
				s.tables.MeterRecords: {Keys: batch, ConsistentRead: aws.Bool(true)}}})
			if err != nil {
				return nil, fmt.Errorf("meter records of %s/%s: %w", subscriberKey, dimension, err)
			}
			for _, it := range res.Responses[s.tables.MeterRecords] {
				r, err := meterFrom(it)
				if err != nil {
					return nil, err
				}
				out = append(out, r)
			}
			batch = res.UnprocessedKeys[s.tables.MeterRecords].Keys
			if len(batch) > 0 {
				attempt++
				if err := sleepCtx(ctx, backoff(attempt)); err != nil {
					return nil, err
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Hour.Before(out[j].Hour) })
	return out, nil
}

// InsertMeterRecords stores records; keys that have one keep it and are returned.
func (s *Store) InsertMeterRecords(ctx context.Context, recs []mpsaas.MeterRecord, upTo int64) ([]mpsaas.MeterKey, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	first, err := s.allocate(ctx, counterMeter, len(recs))
	if err != nil {
		return nil, err
	}
	var conflicts []mpsaas.MeterKey
	for i, r := range recs {
		item, err := meterItem(r, first+int64(i), upTo, s.Now())
		if err != nil {
			return nil, err
		}
		_, err = s.client.PutItem(ctx, &ddb.PutItemInput{TableName: aws.String(s.tables.MeterRecords), Item: item,
			ConditionExpression: aws.String("attribute_not_exists(#k)"), ExpressionAttributeNames: map[string]string{"#k": "key"}})
		if isConditionFailed(err) {
			conflicts = append(conflicts, mpsaas.MeterKey{SubscriberKey: r.SubscriberKey, Dimension: r.Dimension, Hour: r.Hour})
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("insert meter record: %w", err)
		}
	}
	return conflicts, nil
}

// SealUsage seals the summed usage; usage of a conflicting key that its
// record does not include moves to the first free hour from openHour on.
func (s *Store) SealUsage(ctx context.Context, scan mpsaas.PendingScan, conflicts []mpsaas.MeterKey, openHour time.Time) (int, error) {
	if len(scan.Summed) == 0 {
		return 0, nil
	}
	items, err := s.pendingItems(ctx, scan.Lo, scan.Hi)
	if err != nil {
		return 0, err
	}
	summed := make(map[int64]bool, len(scan.Summed))
	for _, id := range scan.Summed {
		summed[id] = true
	}
	included := map[string]func(int64) bool{}
	for _, k := range conflicts {
		out, err := s.client.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(s.tables.MeterRecords), ConsistentRead: aws.Bool(true),
			Key: map[string]types.AttributeValue{"key": sv(meterKey(k.SubscriberKey, k.Dimension, k.Hour))}})
		if err != nil {
			return 0, fmt.Errorf("seal usage: %w", err)
		}
		if out.Item == nil {
			return 0, fmt.Errorf("seal usage: the meter record of %s/%s/%s is gone", k.SubscriberKey, k.Dimension, k.Hour.Format(time.RFC3339))
		}
		in, err := includes(out.Item)
		if err != nil {
			return 0, fmt.Errorf("seal usage: %w", err)
		}
		included[meterKey(k.SubscriberKey, k.Dimension, k.Hour)] = in
	}
	hours := s.placer(ctx, openHour)
	moved := 0
	for _, u := range items {
		if !summed[u.id] {
			continue
		}
		key := map[string]types.AttributeValue{"id": nv(u.id)}
		if in, conflict := included[meterKey(u.sub, u.dim, u.hour)]; conflict && !in(u.id) {
			to, err := hours.place(u.sub, u.dim, u.hour)
			if err != nil {
				return moved, err
			}
			_, err = s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: aws.String(s.tables.Usage), Key: key,
				UpdateExpression: aws.String("SET meterHour = :h, reason = :r"), ConditionExpression: aws.String("attribute_exists(pending)"),
				ExpressionAttributeValues: map[string]types.AttributeValue{":h": nv(to.Unix()), ":r": sv("hour " + u.hour.Format(time.RFC3339) + " was already metered")}})
			if err != nil && !isConditionFailed(err) {
				return moved, fmt.Errorf("move usage %d: %w", u.id, err)
			}
			moved++
			continue
		}
		_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: aws.String(s.tables.Usage), Key: key,
			UpdateExpression: aws.String("SET #s = :s REMOVE pending"), ConditionExpression: aws.String("attribute_exists(pending)"),
			ExpressionAttributeNames: map[string]string{"#s": "state"}, ExpressionAttributeValues: map[string]types.AttributeValue{":s": sv(mpsaas.UsageSealed)}})
		if err != nil && !isConditionFailed(err) {
			return moved, fmt.Errorf("seal usage %d: %w", u.id, err)
		}
	}
	return moved, nil
}

// AddHeartbeats stores zero-quantity records for keys that have none.
func (s *Store) AddHeartbeats(ctx context.Context, records []mpsaas.MeterRecord) (int, error) {
	if len(records) == 0 {
		return 0, nil
	}
	first, err := s.allocate(ctx, counterMeter, len(records))
	if err != nil {
		return 0, err
	}
	added := 0
	for i, r := range records {
		r.Quantity, r.State = 0, mpsaas.UsageSealed
		item, err := meterItem(r, first+int64(i), 0, s.Now())
		if err != nil {
			return added, err
		}
		_, err = s.client.PutItem(ctx, &ddb.PutItemInput{TableName: aws.String(s.tables.MeterRecords), Item: item,
			ConditionExpression: aws.String("attribute_not_exists(#k)"), ExpressionAttributeNames: map[string]string{"#k": "key"}})
		if isConditionFailed(err) {
			continue
		}
		if err != nil {
			return added, fmt.Errorf("add heartbeat: %w", err)
		}
		added++
	}
	return added, nil
}

// CreateBatches puts sealed records into batches of at most 25, one
// product code (or license mode) per batch.
func (s *Store) CreateBatches(ctx context.Context, now time.Time) (int, error) {
	items, err := s.query(ctx, &ddb.QueryInput{TableName: aws.String(s.tables.MeterRecords), IndexName: aws.String(indexSealed),
		KeyConditionExpression: aws.String("sealed = :s"), ExpressionAttributeValues: map[string]types.AttributeValue{":s": sv("1")}})
	if err != nil {
		return 0, err
	}
	recs := make([]mpsaas.MeterRecord, 0, len(items))
	for _, it := range items {
		r, err := meterFrom(it)
		if err != nil {
			return 0, err
		}
		recs = append(recs, r)
	}
	sort.SliceStable(recs, func(i, j int) bool {
		if gi, gj := mpsaas.BatchGroup(recs[i]), mpsaas.BatchGroup(recs[j]); gi != gj {
			return gi < gj
		}
		return recs[i].ID < recs[j].ID
	})
	created := 0
	for start := 0; start < len(recs); {
		end := start + 1
		for end < len(recs) && end-start < mpsaas.MaxBatchRecords && mpsaas.BatchGroup(recs[end]) == mpsaas.BatchGroup(recs[start]) {
			end++
		}
		if err := s.insertBatch(ctx, recs[start:end], now); err != nil {
			return created, err
		}
		created++
		start = end
	}
	return created, nil
}

func (s *Store) insertBatch(ctx context.Context, recs []mpsaas.MeterRecord, now time.Time) error {
	id, err := s.allocate(ctx, counterBatch, 1)
	if err != nil {
		return err
	}
	product := ""
	if !recs[0].LicenseMode() {
		product = recs[0].ProductCode
	}
	// The batch lists its records' keys: they are read back by key, with
	// consistent reads, never through the eventually consistent batch
	// index (which could leave out a record, sent never).
	keys := make([]types.AttributeValue, len(recs))
	for i, r := range recs {
		keys[i] = sv(meterKey(r.SubscriberKey, r.Dimension, r.Hour))
	}
	item := map[string]types.AttributeValue{"id": nv(id), "pending": sv("1"), "nextAttemptAt": nv(timeN(now)), "attempts": nv(0),
		"state": sv("pending"), "createdAt": nv(timeN(now)), "recordKeys": &types.AttributeValueMemberL{Value: keys}}
	putS(item, "productCode", product)
	if _, err := s.client.PutItem(ctx, &ddb.PutItemInput{TableName: aws.String(s.tables.MeterBatches), Item: item}); err != nil {
		return fmt.Errorf("create batch: %w", err)
	}
	for _, r := range recs {
		_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: aws.String(s.tables.MeterRecords),
			Key:                       map[string]types.AttributeValue{"key": sv(meterKey(r.SubscriberKey, r.Dimension, r.Hour))},
			UpdateExpression:          aws.String("SET #s = :b, batchId = :id REMOVE sealed"),
			ConditionExpression:       aws.String("attribute_exists(sealed) OR (#s = :b AND batchId = :id)"),
			ExpressionAttributeNames:  map[string]string{"#s": "state"},
			ExpressionAttributeValues: map[string]types.AttributeValue{":b": sv(mpsaas.UsageBatched), ":id": nv(id)}})
		if err != nil && !isConditionFailed(err) {
			return fmt.Errorf("batch meter record %d: %w", r.ID, err)
		}
	}
	return nil
}

// batchRecords returns the unfinished records of a batch: those of the
// keys it lists (consistent reads) that are still batched in it.
func (s *Store) batchRecords(ctx context.Context, batchID int64) ([]mpsaas.MeterRecord, error) {
	b, err := s.client.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(s.tables.MeterBatches), ConsistentRead: aws.Bool(true),
		Key: map[string]types.AttributeValue{"id": nv(batchID)}})
	if err != nil {
		return nil, fmt.Errorf("batch %d: %w", batchID, err)
	}
	var items []map[string]types.AttributeValue
	if l, ok := b.Item["recordKeys"].(*types.AttributeValueMemberL); ok {
		keys := make([]map[string]types.AttributeValue, len(l.Value))
		for i, k := range l.Value {
			keys[i] = map[string]types.AttributeValue{"key": k}
		}
		for len(keys) > 0 {
			out, err := s.client.BatchGetItem(ctx, &ddb.BatchGetItemInput{RequestItems: map[string]types.KeysAndAttributes{
				s.tables.MeterRecords: {Keys: keys, ConsistentRead: aws.Bool(true)}}})
			if err != nil {
				return nil, fmt.Errorf("batch %d records: %w", batchID, err)
			}
			items = append(items, out.Responses[s.tables.MeterRecords]...)
			keys = out.UnprocessedKeys[s.tables.MeterRecords].Keys
			if len(keys) > 0 {
				if err := sleepCtx(ctx, backoff(1)); err != nil {
					return nil, err
				}
			}
		}
	} else if b.Item != nil {
		// A batch stored before batches listed their records.
		if items, err = s.query(ctx, &ddb.QueryInput{TableName: aws.String(s.tables.MeterRecords), IndexName: aws.String(indexBatch),
			KeyConditionExpression: aws.String("batchId = :b"), ExpressionAttributeValues: map[string]types.AttributeValue{":b": nv(batchID)}}); err != nil {
			return nil, err
		}
	}
	out := make([]mpsaas.MeterRecord, 0, len(items))
	for _, it := range items {
		if getN(it, "batchId") != batchID || getS(it, "state") != mpsaas.UsageBatched {
			continue
		}
		r, err := meterFrom(it)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// DueBatches returns unfinished batches due at now, oldest attempt first,
// with their unfinished records.
func (s *Store) DueBatches(ctx context.Context, now time.Time, limit int) ([]mpsaas.MeterBatch, error) {
	items, err := s.query(ctx, &ddb.QueryInput{TableName: aws.String(s.tables.MeterBatches), IndexName: aws.String(indexDue),
		KeyConditionExpression:    aws.String("pending = :p AND nextAttemptAt <= :now"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv("1"), ":now": nv(timeN(now))}})
	if err != nil {
		return nil, fmt.Errorf("due batches: %w", err)
	}
	sort.Slice(items, func(i, j int) bool {
		if a, b := getN(items[i], "nextAttemptAt"), getN(items[j], "nextAttemptAt"); a != b {
			return a < b
		}
		return getN(items[i], "id") < getN(items[j], "id")
	})
	if len(items) > limit {
		items = items[:limit]
	}
	batches := make([]mpsaas.MeterBatch, 0, len(items))
	for _, it := range items {
		b := mpsaas.MeterBatch{ID: getN(it, "id"), ProductCode: getS(it, "productCode"), Attempts: int(getN(it, "attempts")), NextAttempt: fromN(getN(it, "nextAttemptAt"))}
		if b.Records, err = s.batchRecords(ctx, b.ID); err != nil {
			return nil, err
		}
		batches = append(batches, b)
	}
	return batches, nil
}

// FinishBatches stores outcomes and retry schedules.
func (s *Store) FinishBatches(ctx context.Context, results []mpsaas.BatchOutcome) error {
	now := s.Now()
	for _, b := range results {
		recs, err := s.batchRecords(ctx, b.BatchID)
		if err != nil {
			return fmt.Errorf("finish batch %d: %w", b.BatchID, err)
		}
		keyOf := make(map[int64]string, len(recs))
		for _, r := range recs {
			keyOf[r.ID] = meterKey(r.SubscriberKey, r.Dimension, r.Hour)
		}
		for _, o := range b.Outcomes {
			key, ok := keyOf[o.MeterRecordID]
			if !ok {
				continue // finished already
			}
			vals := map[string]types.AttributeValue{":s": sv(o.State), ":b": nv(b.BatchID), ":batched": sv(mpsaas.UsageBatched), ":now": nv(timeN(now))}
			names := map[string]string{"#s": "state"}
			expr := "SET #s = :s, updatedAt = :now"
			for name, v := range map[string]string{"meteringRecordId": o.MeteringRecordID, "reason": o.Reason, "response": o.Response} {
				if v != "" {
					// "response" is a DynamoDB reserved word: always use placeholders.
					vals[":"+name], names["#"+name] = sv(v), name
					expr += ", #" + name + " = :" + name
				}
			}
			_, err = s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: aws.String(s.tables.MeterRecords),
				Key: map[string]types.AttributeValue{"key": sv(key)}, UpdateExpression: aws.String(expr),
				ConditionExpression: aws.String("batchId = :b AND #s = :batched"), ExpressionAttributeNames: names,
				ExpressionAttributeValues: vals})
			if err != nil && !isConditionFailed(err) {
				return fmt.Errorf("finish meter record %d: %w", o.MeterRecordID, err)
			}
		}
		bkey := map[string]types.AttributeValue{"id": nv(b.BatchID)}
		if !b.Retry.IsZero() {
			_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: aws.String(s.tables.MeterBatches), Key: bkey,
				UpdateExpression:          aws.String("SET attempts = attempts + :one, nextAttemptAt = :n, lastError = :e"),
				ExpressionAttributeValues: map[string]types.AttributeValue{":one": nv(1), ":n": nv(timeN(b.Retry)), ":e": sv(b.LastError)}})
			if err != nil {
				return fmt.Errorf("retry batch %d: %w", b.BatchID, err)
			}
			continue
		}
		left, err := s.batchRecords(ctx, b.BatchID)
		if err != nil {
			return err
		}
		if len(left) > 0 {
			continue
		}
		names, vals := map[string]string{"#s": "state"}, map[string]types.AttributeValue{":done": sv("done"), ":now": nv(timeN(now)), ":one": nv(1)}
		_, err = s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: aws.String(s.tables.MeterBatches), Key: bkey,
			UpdateExpression:         aws.String("SET #s = :done, doneAt = :now, attempts = attempts + :one" + s.setTTL(now, names, vals) + " REMOVE pending"),
			ExpressionAttributeNames: names, ExpressionAttributeValues: vals})
		if err != nil {
			return fmt.Errorf("finish batch %d: %w", b.BatchID, err)
		}
	}
	return nil
}

// SplitBatch replaces a batch with single-record batches.
func (s *Store) SplitBatch(ctx context.Context, batchID int64, now time.Time) error {
	recs, err := s.batchRecords(ctx, batchID)
	if err != nil {
		return err
	}
	for _, r := range recs {
		// Back to sealed for a moment, then into its own batch.
		_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: aws.String(s.tables.MeterRecords),
			Key:                       map[string]types.AttributeValue{"key": sv(meterKey(r.SubscriberKey, r.Dimension, r.Hour))},
			UpdateExpression:          aws.String("SET sealed = :one"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":one": sv("1")}})
		if err != nil {
			return err
		}
		if err := s.insertBatch(ctx, []mpsaas.MeterRecord{r}, now); err != nil {
			return err
		}
	}
	names, vals := map[string]string{"#s": "state"}, map[string]types.AttributeValue{":split": sv("split")}
	_, err = s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: aws.String(s.tables.MeterBatches), Key: map[string]types.AttributeValue{"id": nv(batchID)},
		UpdateExpression: aws.String("SET #s = :split" + s.setTTL(now, names, vals) + " REMOVE pending"), ExpressionAttributeNames: names,
		ExpressionAttributeValues: vals})
	if err != nil {
		return fmt.Errorf("split batch %d: %w", batchID, err)
	}
	return nil
}

// Outstanding reports whether records wait to be sent or sealed.
func (s *Store) Outstanding(ctx context.Context, before time.Time) (bool, error) {
	for _, q := range []*ddb.QueryInput{
		{TableName: aws.String(s.tables.MeterBatches), IndexName: aws.String(indexDue), KeyConditionExpression: aws.String("pending = :p"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv("1")}, Limit: aws.Int32(1)},
		{TableName: aws.String(s.tables.MeterRecords), IndexName: aws.String(indexSealed), KeyConditionExpression: aws.String("sealed = :p"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv("1")}, Limit: aws.Int32(1)},
	} {
		out, err := s.client.Query(ctx, q)
		if err != nil {
			return false, fmt.Errorf("outstanding: %w", err)
		}
		if len(out.Items) > 0 {
			return true, nil
		}
	}
	items, err := s.query(ctx, &ddb.QueryInput{TableName: aws.String(s.tables.Usage), IndexName: aws.String(indexPendingID),
		KeyConditionExpression: aws.String("pending = :p"), FilterExpression: aws.String("meterHour < :b"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv("1"), ":b": nv(before.Unix())}})
	if err != nil {
		return false, err
	}
	return len(items) > 0, nil
}

// ledgerEntries derives each usage item's fate from its meter record.
func (s *Store) ledgerEntries(ctx context.Context, items []map[string]types.AttributeValue) ([]mpsaas.LedgerEntry, error) {
	records := map[string]map[string]types.AttributeValue{}
	out := make([]mpsaas.LedgerEntry, 0, len(items))
	for _, it := range items {
		e := mpsaas.LedgerEntry{ID: getN(it, "id"), SubscriberKey: getS(it, "subscriberKey"), Dimension: getS(it, "dimension"),
			Quantity: getN(it, "quantity"), Time: fromN(getN(it, "usageTime")), Hour: time.Unix(getN(it, "meterHour"), 0).UTC(),
			State: getS(it, "state"), Reason: getS(it, "reason"), RequestKey: getS(it, "requestKey")}
		if e.State == mpsaas.UsageSealed {
			k := meterKey(e.SubscriberKey, e.Dimension, e.Hour)
			m, ok := records[k]
			if !ok {
				res, err := s.client.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(s.tables.MeterRecords), Key: map[string]types.AttributeValue{"key": sv(k)}})
				if err != nil {
					return nil, fmt.Errorf("ledger: %w", err)
				}
				m, records[k] = res.Item, res.Item
			}
			if m != nil {
				e.State, e.BatchID, e.MeteringRecordID = getS(m, "state"), getN(m, "batchId"), getS(m, "meteringRecordId")
				e.MeterQuantity = getN(m, "quantity")
				if r := getS(m, "reason"); r != "" {
					e.Reason = r
				}
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// Ledger lists usage records and their fate, by id.
func (s *Store) Ledger(ctx context.Context, f mpsaas.LedgerFilter) ([]mpsaas.LedgerEntry, error) {
	if f.Limit <= 0 || f.Limit > 10000 {
		f.Limit = 1000
	}
	var items []map[string]types.AttributeValue
	var err error
	if f.SubscriberKey != "" {
		items, err = s.query(ctx, &ddb.QueryInput{TableName: aws.String(s.tables.Usage), IndexName: aws.String(indexSubscriber),
			KeyConditionExpression:    aws.String("subscriberKey = :k AND id > :a"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":k": sv(f.SubscriberKey), ":a": nv(f.AfterID)}})
	} else {
		items, err = s.scan(ctx, s.tables.Usage)
	}
	if err != nil {
		return nil, err
	}
	sort.Slice(items, func(i, j int) bool { return getN(items[i], "id") < getN(items[j], "id") })
	entries, err := s.ledgerEntries(ctx, items)
	if err != nil {
		return nil, err
	}
	out := []mpsaas.LedgerEntry{}
	for _, e := range entries {
		if e.ID <= f.AfterID || (f.State != "" && e.State != f.State) {
			continue
		}
		out = append(out, e)
		if len(out) == f.Limit {
			break
		}
	}
	return out, nil
}

// MeterSummary counts usage by ledger state.
func (s *Store) MeterSummary(ctx context.Context) (map[string]mpsaas.StateCount, error) {
	entries, err := s.Ledger(ctx, mpsaas.LedgerFilter{Limit: 10000})
	if err != nil {
		return nil, err
	}
	out := map[string]mpsaas.StateCount{}
	for _, e := range entries {
		c := out[e.State]
		c.Records++
		c.Quantity += e.Quantity
		out[e.State] = c
	}
	return out, nil
}

// Replay moves the usage of flagged records (all, or the given usage ids)
// back to pending in hour, or a later free hour of the key.
func (s *Store) Replay(ctx context.Context, ids []int64, hour time.Time) (int, error) {
	all, err := s.scan(ctx, s.tables.MeterRecords)
	if err != nil {
		return 0, err
	}
	only := map[int64]bool{}
	for _, id := range ids {
		only[id] = true
	}
	hours := s.placer(ctx, hour)
	moved := 0
	for _, m := range all {
		if getS(m, "state") != mpsaas.UsageFlagged {
			continue
		}
		sub, dim, h := getS(m, "subscriberKey"), getS(m, "dimension"), getN(m, "hour")
		usage, err := s.query(ctx, &ddb.QueryInput{TableName: aws.String(s.tables.Usage), IndexName: aws.String(indexSubscriber),
			KeyConditionExpression: aws.String("subscriberKey = :k"), FilterExpression: aws.String("dimension = :d AND meterHour = :h AND #s = :sealed"),
			ExpressionAttributeNames:  map[string]string{"#s": "state"},
			ExpressionAttributeValues: map[string]types.AttributeValue{":k": sv(sub), ":d": sv(dim), ":h": nv(h), ":sealed": sv(mpsaas.UsageSealed)}})
		if err != nil {
			return moved, err
		}
		to, err := hours.place(sub, dim, hour)
		if err != nil {
			return moved, err
		}
		left, movedQ := 0, int64(0)
		for _, u := range usage {
			id := getN(u, "id")
			if len(only) > 0 && !only[id] {
				left++
				continue
			}
			movedQ += getN(u, "quantity")
			_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: aws.String(s.tables.Usage), Key: map[string]types.AttributeValue{"id": nv(id)},
				UpdateExpression: aws.String("SET #s = :p, pending = :one, meterHour = :h, reason = :r"), ExpressionAttributeNames: map[string]string{"#s": "state"},
				ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv(mpsaas.UsagePending), ":one": sv("1"), ":h": nv(to.Unix()),
					":r": sv(fmt.Sprintf("replayed from flagged meter record %d", getN(m, "id")))}})
			if err != nil {
				return moved, fmt.Errorf("replay usage %d: %w", id, err)
			}
			moved++
		}
		if len(usage) > left {
			// The record no longer includes the moved usage; one whose usage
			// all moved is done with.
			state := mpsaas.UsageFlagged
			if left == 0 {
				state = "replayed"
			}
			// Records stored before usageQuantity existed get none.
			in := &ddb.UpdateItemInput{TableName: aws.String(s.tables.MeterRecords), Key: map[string]types.AttributeValue{"key": m["key"]},
				UpdateExpression: aws.String("SET #s = :r"), ExpressionAttributeNames: map[string]string{"#s": "state"},
				ExpressionAttributeValues: map[string]types.AttributeValue{":r": sv(state)}}
			if _, ok := m["usageQuantity"]; ok {
				in.UpdateExpression = aws.String("SET #s = :r ADD usageQuantity :q")
				in.ExpressionAttributeValues[":q"] = nv(-movedQ)
			}
			if _, err := s.client.UpdateItem(ctx, in); err != nil {
				return moved, err
			}
		}
	}
	return moved, nil
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

// VerifyMetering checks the metering invariant in scope. It reads usage by
// id from the table itself (strongly consistent, 100 ids a request) and
// each touched meter record by its key; a whole-store check also scans the
// meter records for ones whose usage is gone. Memory grows with the number
// of (subscriber, dimension, hour) keys in scope.
func (s *Store) VerifyMetering(ctx context.Context, scope mpsaas.VerifyScope, limit int) ([]mpsaas.MeterViolation, error) {
	last, err := s.counter(ctx, counterUsage)
	if err != nil {
		return nil, fmt.Errorf("verify metering: %w", err)
	}
	from, to := max(scope.UsageFrom, 1), last
	if scope.UsageTo > 0 {
		to = min(scope.UsageTo, last)
	}
	type keySum struct {
		key             mpsaas.MeterKey
		sealed          int64
		sealedIDs       []int64
		pendingIDs, pQs []int64
	}
	sums := map[string]*keySum{}
	var order []string
	for start := from; start <= to; start += 100 {
		var keys []map[string]types.AttributeValue
		for id := start; id <= min(start+99, to); id++ {
			keys = append(keys, map[string]types.AttributeValue{"id": nv(id)})
		}
		for len(keys) > 0 {
			out, err := s.client.BatchGetItem(ctx, &ddb.BatchGetItemInput{RequestItems: map[string]types.KeysAndAttributes{
				s.tables.Usage: {Keys: keys, ConsistentRead: aws.Bool(true)}}})
			if err != nil {
				return nil, fmt.Errorf("verify metering: %w", err)
			}
			for _, it := range out.Responses[s.tables.Usage] {
				state := getS(it, "state")
				if state != mpsaas.UsageSealed && state != mpsaas.UsagePending {
					continue
				}
				sub, dim, h := getS(it, "subscriberKey"), getS(it, "dimension"), time.Unix(getN(it, "meterHour"), 0).UTC()
				k := meterKey(sub, dim, h)
				ks := sums[k]
				if ks == nil {
					ks = &keySum{key: mpsaas.MeterKey{SubscriberKey: sub, Dimension: dim, Hour: h}}
					sums[k] = ks
					order = append(order, k)
				}
				if state == mpsaas.UsageSealed {
					ks.sealed += getN(it, "quantity")
					ks.sealedIDs = append(ks.sealedIDs, getN(it, "id"))
				} else {
					ks.pendingIDs = append(ks.pendingIDs, getN(it, "id"))
					ks.pQs = append(ks.pQs, getN(it, "quantity"))
				}
			}
			keys = out.UnprocessedKeys[s.tables.Usage].Keys
			if len(keys) > 0 {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	var out []mpsaas.MeterViolation
	if limit <= 0 {
		limit = int(^uint(0) >> 1)
	}
	seen := map[string]bool{}
	var badRecord error
	check := func(ks *keySum, m map[string]types.AttributeValue) {
		if m == nil {
			if len(ks.sealedIDs) > 0 {
				sort.Slice(ks.sealedIDs, func(i, j int) bool { return ks.sealedIDs[i] < ks.sealedIDs[j] })
				out = append(out, mpsaas.MeterViolation{Kind: mpsaas.ViolationSealedWithoutRecord, MeterKey: ks.key, UsageIDs: ks.sealedIDs[:min(10, len(ks.sealedIDs))], Got: ks.sealed})
			}
			return
		}
		id := getN(m, "id")
		if id <= scope.RecordsAfter {
			return
		}
		v := mpsaas.MeterViolation{MeterKey: ks.key, MeterRecordID: id}
		if _, ok := m["usageQuantity"]; ok {
			v.Want, v.Got = getN(m, "usageQuantity"), ks.sealed
			in, err := includes(m)
			if err != nil {
				badRecord = err
				return
			}
			for i, pid := range ks.pendingIDs {
				if in(pid) {
					v.Got += ks.pQs[i]
				}
			}
			if v.Want != v.Got {
				v.Kind = mpsaas.ViolationSumMismatch
				out = append(out, v)
				return
			}
		}
		if getS(m, "state") == mpsaas.UsageBilled && getS(m, "meteringRecordId") == "" {
			v.Kind = mpsaas.ViolationBilledWithoutID
			out = append(out, v)
		}
	}
	for _, k := range order {
		if len(out) >= limit {
			break
		}
		seen[k] = true
		res, err := s.client.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(s.tables.MeterRecords), ConsistentRead: aws.Bool(true),
			Key: map[string]types.AttributeValue{"key": sv(k)}})
		if err != nil {
			return nil, fmt.Errorf("verify metering: %w", err)
		}
		check(sums[k], res.Item)
	}
	if scope == (mpsaas.VerifyScope{}) && len(out) < limit {
		// Records whose usage is nowhere (every usage id was read above).
		records, err := s.scan(ctx, s.tables.MeterRecords)
		if err != nil {
			return nil, fmt.Errorf("verify metering: %w", err)
		}
		for _, m := range records {
			k := getS(m, "key")
			if seen[k] {
				continue
			}
			check(&keySum{key: mpsaas.MeterKey{SubscriberKey: getS(m, "subscriberKey"), Dimension: getS(m, "dimension"), Hour: time.Unix(getN(m, "hour"), 0).UTC()}}, m)
		}
	}
	if badRecord != nil {
		return nil, fmt.Errorf("verify metering: %w", badRecord)
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
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

// maxRanges caps the id ranges one meter record lists (about 16 bytes
// each: a record stays far below DynamoDB's 400 KB item limit). Usage
// beyond it stays pending and is billed in a later hour.
const maxRanges = 8000

// rangeCount counts the ranges of increasing ids.
type rangeCount struct {
	last int64
	n    int
}

// add takes id (greater than the last), unless it would start range
// maxRanges+1.
func (c *rangeCount) add(id int64) bool {
	if id != c.last+1 || c.n == 0 {
		if c.n >= maxRanges {
			return false
		}
		c.n++
	}
	c.last = id
	return true
}

// encodeRanges writes sorted ids as ranges: "3-7,9,12-13".
func encodeRanges(ids []int64) string {
	var b strings.Builder
	for i := 0; i < len(ids); {
		j := i
		for j+1 < len(ids) && ids[j+1] == ids[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(ids[i], 10))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.FormatInt(ids[j], 10))
		}
		i = j + 1
	}
	return b.String()
}

// decodeRanges reads what encodeRanges wrote.
func decodeRanges(s string) ([][2]int64, error) {
	if s == "" {
		return nil, nil
	}
	var out [][2]int64
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.ParseInt(lo, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("usage id ranges %.40q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.ParseInt(hi, 10, 64); err != nil || b < a {
				return nil, fmt.Errorf("usage id ranges %.40q: bad range %q", s, part)
			}
		}
		if len(out) > 0 && a <= out[len(out)-1][1] {
			return nil, fmt.Errorf("usage id ranges %.40q: not increasing at %q", s, part)
		}
		out = append(out, [2]int64{a, b})
	}
	return out, nil
}

// includes reports which usage ids a meter record item includes: those it
// lists, or for records stored before the list existed, every id up to
// its maxUsageId.
func includes(item map[string]types.AttributeValue) (func(int64) bool, error) {
	if _, ok := item["usageIds"]; !ok {
		max := getN(item, "maxUsageId")
		return func(id int64) bool { return id <= max }, nil
	}
	ranges, err := decodeRanges(getS(item, "usageIds"))
	if err != nil {
		return nil, fmt.Errorf("meter record %d: %w", getN(item, "id"), err)
	}
	return func(id int64) bool {
		i := sort.Search(len(ranges), func(i int) bool { return ranges[i][1] >= id })
		return i < len(ranges) && ranges[i][0] <= id
	}, nil
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

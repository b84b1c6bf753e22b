package dynamodb

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/mpsaas/mpsaas"
)

// HourStore is the metering store of the hour model (docs/dynamodb.md):
// usage is aggregated at ingestion into one item per buyer, dimension and
// meter hour, which becomes that hour's meter record when it is sealed.
// Everything lives in one table (Tables.MeterHours) with a string
// partition key "pk" and sort key "sk":
//
//	u#<hour>#<shard> / <buyer>␟<dimension>  usage of the hour; after sealing, its meter record
//	c#<hour>#<shard> / c                    ingestion counter of the hour; "closed" stops ingestion into the hour
//	r#<idempotency key> / r                 a usage request: hash, ids, parts written
//	l#<shard> / <first id>#<part>           the request's records (the ledger)
//	i#<shard> / i                           usage id counter
//	b#<hour>#<shard> / <batch id>           a BatchMeterUsage call and its records' keys
//	m / cursor, h#<hour>, lease             metering progress, per-hour marks and counts, the lease
//
// Shards spread what is listed by hour over 32 partition keys (a buyer's
// items are all in one shard; a request's counter and ids in another), so
// no key takes more than a thirty-second of the writes.
//
// Ingestion is one transaction per request (per part of at most 1,000
// records and 88 keys): the request item, its ledger part, an ADD to each
// hour item (condition: not sealed) and to the counter of each hour
// (condition: not closed). The meter closes an hour (all 32 counters)
// before it reads it: transactions are serializable, so a strongly
// consistent read after the close sees every record of the hour, and usage
// that arrives later is placed in the open hour. Items of the open hour
// (cancelling buyers' usage, sealed at once) are sealed only if their
// version is the one read.
type HourStore struct {
	*Store
	// Workers bounds the concurrent requests of one call (default 16).
	Workers int
	// SealBudget is about how many usage items one sealing pass reads
	// (default 20,000: 800 BatchMeterUsage calls). A pass that reaches it
	// stops after the shard it is reading and reports More, so a backlog
	// of closed hours is sealed and sent a part at a time, oldest first.
	SealBudget int

	closed sync.Map // hour (unix) → true: hours known closed for ingestion

	mu     sync.Mutex
	floor  int64 // the first hour usage is kept in (unix; 0: not read yet)
	bucket int64 // the lowest batch bucket the meter last saw (unix)
}

// NewHourStore returns the hour-model metering store on st's table
// Tables.MeterHours.
func NewHourStore(st *Store) *HourStore {
	return &HourStore{Store: st}
}

var _ mpsaas.MeterStore = (*HourStore)(nil)

const (
	hourShards = 32
	metaPK     = "m"
	cursorSK   = "cursor"
	// Parts of a request: a transaction holds at most 100 items (request,
	// ledger part, hour items and counters); a ledger part at most 1,000
	// records (about 100 KB of the 400 KB an item may hold).
	partKeys    = 88
	partHours   = 8
	partRecords = 1000
	// floorAge is how far before the first use the first hour usage is
	// kept in is set; usage of earlier hours (older than AWS accepts) is
	// placed in the open hour.
	floorAge = 26 * time.Hour
	// maxAheadHours bounds how far after the current hour usage can be
	// placed (late usage of a buyer whose next hours are sealed).
	maxAheadHours = 6
	// maxRequestRecords is the most records one request holds (the
	// ingestion API's limit).
	maxRequestRecords = 10000
)

func (s *HourStore) table() *string { return aws.String(s.tables.MeterHours) }

func (s *HourStore) sealBudget() int {
	if s.SealBudget > 0 {
		return s.SealBudget
	}
	return 20000
}

func (s *HourStore) workers() int {
	if s.Workers > 0 {
		return s.Workers
	}
	return 16
}

// createHoursTable creates the meter hours table.
func (s *Store) createHoursTable(ctx context.Context) error {
	str := func(n string) types.AttributeDefinition {
		return types.AttributeDefinition{AttributeName: aws.String(n), AttributeType: types.ScalarAttributeTypeS}
	}
	return s.createTables(ctx, []*ddb.CreateTableInput{{
		TableName:            aws.String(s.tables.MeterHours),
		AttributeDefinitions: []types.AttributeDefinition{str("pk"), str("sk")},
		KeySchema: []types.KeySchemaElement{{AttributeName: aws.String("pk"), KeyType: types.KeyTypeHash},
			{AttributeName: aws.String("sk"), KeyType: types.KeyTypeRange}},
	}})
}

func hkey(pk, sk string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{"pk": sv(pk), "sk": sv(sk)}
}

func shardOf(s string) int {
	h := fnv.New32a()
	h.Write([]byte(s))
	return int(h.Sum32() % hourShards)
}

func tagHash(sig string) string {
	if sig == "" {
		return ""
	}
	h := fnv.New64a()
	h.Write([]byte(sig))
	return strconv.FormatUint(h.Sum64(), 36)
}

// itemKey names the usage item of a buyer, dimension and meter hour.
type itemKey struct {
	sub, dim string
	hour     int64 // unix
}

func (k itemKey) pk() string { return fmt.Sprintf("u#%d#%d", k.hour, shardOf(k.sub)) }
func (k itemKey) sk() string { return k.sub + "\x1f" + k.dim }
func (k itemKey) key() map[string]types.AttributeValue {
	return hkey(k.pk(), k.sk())
}
func (k itemKey) flat() string { return k.pk() + "\x1e" + k.sk() }

func keyOfItem(it map[string]types.AttributeValue) itemKey {
	return itemKey{sub: getS(it, "sub"), dim: getS(it, "dim"), hour: getN(it, "h")}
}

func parseFlat(f string) (map[string]types.AttributeValue, error) {
	pk, sk, ok := strings.Cut(f, "\x1e")
	if !ok {
		return nil, fmt.Errorf("bad record key %q", f)
	}
	return hkey(pk, sk), nil
}

// floorHour is the first hour usage is kept in: set once, by the first
// ingestion or meter run, to floorAge before it.
func (s *HourStore) floorHour(ctx context.Context) (int64, error) {
	s.mu.Lock()
	f := s.floor
	s.mu.Unlock()
	if f != 0 {
		return f, nil
	}
	c, err := s.readCursor(ctx)
	if err != nil {
		return 0, err
	}
	return c.floor, nil
}

type cursor struct {
	floor, hour, bucket int64 // unix hours: the first kept, the first not done, the first batch bucket with work
	// heads is the first batch bucket whose pending batches all have a
	// head item (see putBatch); 0 on tables metered by a version without
	// heads (see pendingBatches).
	heads int64
}

// readCursor reads the metering cursor, creating it on first use.
func (s *HourStore) readCursor(ctx context.Context) (cursor, error) {
	for range 3 {
		out, err := s.client.GetItem(ctx, &ddb.GetItemInput{TableName: s.table(), Key: hkey(metaPK, cursorSK), ConsistentRead: aws.Bool(true)})
		if err != nil {
			return cursor{}, fmt.Errorf("metering cursor: %w", err)
		}
		if it := out.Item; it != nil {
			c := cursor{floor: getN(it, "floor"), hour: getN(it, "hour"), bucket: getN(it, "bucket"), heads: getN(it, "heads")}
			s.mu.Lock()
			s.floor, s.bucket = c.floor, max(s.bucket, c.bucket)
			s.mu.Unlock()
			return c, nil
		}
		f := mpsaas.Hour(s.Now().Add(-floorAge)).Unix()
		_, err = s.client.PutItem(ctx, &ddb.PutItemInput{TableName: s.table(),
			Item: map[string]types.AttributeValue{"pk": sv(metaPK), "sk": sv(cursorSK), "floor": nv(f), "hour": nv(f), "bucket": nv(f),
				"heads": nv(1)},
			ConditionExpression: aws.String("attribute_not_exists(pk)")})
		if err != nil && !isConditionFailed(err) {
			return cursor{}, fmt.Errorf("metering cursor: %w", err)
		}
	}
	return cursor{}, errors.New("metering cursor: cannot be created")
}

func (s *HourStore) setCursor(ctx context.Context, attr string, v int64) error {
	_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: hkey(metaPK, cursorSK),
		UpdateExpression: aws.String("SET #a = :v"), ConditionExpression: aws.String("#a < :v"),
		ExpressionAttributeNames: map[string]string{"#a": attr}, ExpressionAttributeValues: map[string]types.AttributeValue{":v": nv(v)}})
	if err != nil && !isConditionFailed(err) {
		return fmt.Errorf("metering cursor: %w", err)
	}
	return nil
}

// ---- Ingestion ----

// ledgerRow is one usage record as the ledger keeps it.
type ledgerRow struct {
	ID        int64  `json:"i"`
	Sub       string `json:"s"`
	Dim       string `json:"d"`
	Quantity  int64  `json:"q"`
	Time      int64  `json:"t"` // unix nanoseconds
	MeterHour int64  `json:"h"` // unix
	TagSig    string `json:"g,omitempty"`
}

// encodeRows writes a ledger part compactly (its size is what ingestion
// pays for it: 2 write units per KB): one line per record, fields
// separated by 0x1f, the buyer and dimension left empty when they repeat
// the previous record's, the time in base 36 nanoseconds, the meter hour
// as hours after the usage hour ("" for 0), the id as its offset from the
// request's first id (in the sort key).
func encodeRows(first int64, rows []ledgerRow) string {
	var b strings.Builder
	prevSub, prevDim := "", ""
	for i, r := range rows {
		if i > 0 {
			b.WriteByte('\x1e')
		}
		sub, dim := r.Sub, r.Dim
		if i > 0 && sub == prevSub {
			sub = ""
		}
		if i > 0 && dim == prevDim {
			dim = ""
		}
		prevSub, prevDim = r.Sub, r.Dim
		delta := ""
		if d := (r.MeterHour - time.Unix(0, r.Time).UTC().Truncate(time.Hour).Unix()) / 3600; d != 0 {
			delta = strconv.FormatInt(d, 36)
		}
		fmt.Fprintf(&b, "%d\x1f%s\x1f%s\x1f%s\x1f%s\x1f%s\x1f%s", r.ID-first, sub, dim, strconv.FormatInt(r.Quantity, 36), strconv.FormatInt(r.Time, 36), delta, r.TagSig)
	}
	return b.String()
}

// decodeRows reads a ledger part written by encodeRows for a request
// whose first id is first.
func decodeRows(s string, first int64) ([]ledgerRow, error) {
	if s == "" {
		return nil, nil
	}
	lines := strings.Split(s, "\x1e")
	out := make([]ledgerRow, len(lines))
	prevSub, prevDim := "", ""
	for i, line := range lines {
		f := strings.SplitN(line, "\x1f", 7)
		if len(f) != 7 {
			return nil, fmt.Errorf("record %d: %d fields", i, len(f))
		}
		off, err1 := strconv.ParseInt(f[0], 10, 64)
		q, err2 := strconv.ParseInt(f[3], 36, 64)
		t, err3 := strconv.ParseInt(f[4], 36, 64)
		var d int64
		var err4 error
		if f[5] != "" {
			d, err4 = strconv.ParseInt(f[5], 36, 64)
		}
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			return nil, fmt.Errorf("record %d: %w", i, err)
		}
		if f[1] == "" {
			f[1] = prevSub
		}
		if f[2] == "" {
			f[2] = prevDim
		}
		prevSub, prevDim = f[1], f[2]
		uh := time.Unix(0, t).UTC().Truncate(time.Hour).Unix()
		out[i] = ledgerRow{ID: first + off, Sub: f[1], Dim: f[2], Quantity: q, Time: t, MeterHour: uh + d*3600, TagSig: f[6]}
	}
	return out, nil
}

// requestPart is the rows of one ingestion transaction.
type requestPart struct {
	first int // index of the part's first row in the request
	rows  []mpsaas.UsageRow
}

// splitParts cuts a request into parts a transaction can hold. The cut
// depends only on the rows, so a retried request has the same parts.
func splitParts(rows []mpsaas.UsageRow) []requestPart {
	var parts []requestPart
	var cur requestPart
	keys, hours := map[string]bool{}, map[int64]bool{}
	for i, r := range rows {
		k := r.SubscriberKey + "\x1f" + r.Dimension + "\x1f" + strconv.FormatInt(mpsaas.Hour(r.Time).Unix(), 10)
		h := mpsaas.Hour(r.Time).Unix()
		if len(cur.rows) > 0 && (len(cur.rows) >= partRecords || (!keys[k] && len(keys) >= partKeys) || (!hours[h] && len(hours) >= partHours)) {
			parts = append(parts, cur)
			cur = requestPart{first: i}
			clear(keys)
			clear(hours)
		}
		keys[k], hours[h] = true, true
		cur.rows = append(cur.rows, r)
	}
	return append(parts, cur)
}

var errRequestRace = errors.New("the same request is being written concurrently")

// AddUsage stores a request's rows under its idempotency key, one
// transaction per part: the parts written are counted in the request item,
// so a retry after a crash writes only the rest.
func (s *HourStore) AddUsage(ctx context.Context, key, hash string, rows []mpsaas.UsageRow, openHour, now time.Time) (mpsaas.UsageReceipt, error) {
	if len(rows) == 0 {
		return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.EINVALID, "a request needs records")
	}
	floor, err := s.floorHour(ctx)
	if err != nil {
		return mpsaas.UsageReceipt{}, err
	}
	parts := splitParts(rows)
	for range 5 {
		out, err := s.client.GetItem(ctx, &ddb.GetItemInput{TableName: s.table(), Key: hkey("r#"+key, "r"), ConsistentRead: aws.Bool(true)})
		if err != nil {
			return mpsaas.UsageReceipt{}, fmt.Errorf("add usage %s: %w", key, err)
		}
		if it := out.Item; it != nil {
			if getS(it, "hash") != hash {
				return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.ECONFLICT, "idempotency key %q was already used for different usage records", key)
			}
			rec := mpsaas.UsageReceipt{IdempotencyKey: key, Accepted: int(getN(it, "n")), FirstID: getN(it, "first"), ReceivedAt: fromN(getN(it, "at")), Replayed: true}
			for p := int(getN(it, "done")); p < len(parts); p++ {
				// An earlier attempt stopped half-way: finish it.
				if err := s.writePart(ctx, key, hash, rec.FirstID, len(rows), parts, p, openHour, rec.ReceivedAt, floor); errors.Is(err, errRequestRace) {
					break
				} else if err != nil {
					return rec, err
				}
			}
			return rec, nil
		}
		first, err := s.allocateIDs(ctx, key, len(rows))
		if err != nil {
			return mpsaas.UsageReceipt{}, err
		}
		err = s.writePart(ctx, key, hash, first, len(rows), parts, 0, openHour, now, floor)
		for p := 1; err == nil && p < len(parts); p++ {
			err = s.writePart(ctx, key, hash, first, len(rows), parts, p, openHour, now, floor)
		}
		if errors.Is(err, errRequestRace) {
			continue // read what the other writer stored
		}
		if err != nil {
			return mpsaas.UsageReceipt{}, err
		}
		return mpsaas.UsageReceipt{IdempotencyKey: key, Accepted: len(rows), FirstID: first, ReceivedAt: now}, nil
	}
	return mpsaas.UsageReceipt{}, fmt.Errorf("add usage %s: concurrent requests with the same key", key)
}

// allocateIDs reserves n consecutive usage ids from the request's id
// shard: id = shard<<40 | sequence.
func (s *HourStore) allocateIDs(ctx context.Context, key string, n int) (int64, error) {
	shard := shardOf(key)
	out, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: hkey(fmt.Sprintf("i#%d", shard), "i"),
		UpdateExpression: aws.String("ADD n :n"), ExpressionAttributeValues: map[string]types.AttributeValue{":n": nv(int64(n))},
		ReturnValues: types.ReturnValueUpdatedNew})
	if err != nil {
		return 0, fmt.Errorf("allocate usage ids: %w", err)
	}
	return int64(shard)<<40 | (getN(out.Attributes, "n") - int64(n) + 1), nil
}

// placement decides the meter hour of usage: its own hour unless that hour
// is closed (or before the floor) or the buyer's item of it is sealed;
// then the first such hour from the open hour on.
type placement struct {
	s        *HourStore
	floor    int64
	openHour int64
	sealed   map[itemKey]bool
}

func (p *placement) place(sub, dim string, h int64) int64 {
	ok := func(h int64) bool {
		_, closed := p.s.closed.Load(h)
		return !closed && !p.sealed[itemKey{sub, dim, h}]
	}
	if h >= p.floor && ok(h) {
		return h
	}
	for m := p.openHour; ; m += 3600 {
		if ok(m) || m >= p.openHour+maxAheadHours*3600 {
			return m
		}
	}
}

// writePart writes part p of a request in one transaction, retrying with
// other hours when an hour turns out closed or an item sealed.
func (s *HourStore) writePart(ctx context.Context, key, hash string, first int64, total int, parts []requestPart, p int, openHour, now time.Time, floor int64) error {
	part := parts[p]
	pl := &placement{s: s, floor: floor, openHour: openHour.Unix(), sealed: map[itemKey]bool{}}
	reqShard := shardOf(key)
	for attempt := 0; ; attempt++ {
		if attempt >= 12 {
			return fmt.Errorf("add usage %s: too many conflicting attempts", key)
		}
		type add struct {
			q, n  int64
			parts map[string][2]int64 // "<usage hour>:<tag hash>" → quantity, records
			tags  map[string]string   // tag hash → signature
		}
		items := map[itemKey]*add{}
		var order []itemKey
		counters := map[int64][2]int64{}
		var hourOrder []int64
		lrows := make([]ledgerRow, len(part.rows))
		for i, r := range part.rows {
			uh := mpsaas.Hour(r.Time).Unix()
			mh := pl.place(r.SubscriberKey, r.Dimension, uh)
			k := itemKey{r.SubscriberKey, r.Dimension, mh}
			a := items[k]
			if a == nil {
				a = &add{parts: map[string][2]int64{}, tags: map[string]string{}}
				items[k] = a
				order = append(order, k)
			}
			th := tagHash(r.TagSig)
			pq := a.parts[strconv.FormatInt(uh, 10)+":"+th]
			a.parts[strconv.FormatInt(uh, 10)+":"+th] = [2]int64{pq[0] + r.Quantity, pq[1] + 1}
			if th != "" {
				a.tags[th] = r.TagSig
			}
			a.q += r.Quantity
			a.n++
			c, seen := counters[mh]
			if !seen {
				hourOrder = append(hourOrder, mh)
			}
			counters[mh] = [2]int64{c[0] + 1, c[1] + r.Quantity}
			lrows[i] = ledgerRow{ID: first + int64(part.first+i), Sub: r.SubscriberKey, Dim: r.Dimension, Quantity: r.Quantity, Time: r.Time.UnixNano(), MeterHour: mh, TagSig: r.TagSig}
		}
		body := encodeRows(first, lrows)
		var tx []types.TransactWriteItem
		if p == 0 {
			req := map[string]types.AttributeValue{"pk": sv("r#" + key), "sk": sv("r"), "hash": sv(hash), "first": nv(first), "n": nv(int64(total)),
				"parts": nv(int64(len(parts))), "done": nv(1), "at": nv(timeN(now))}
			tx = append(tx, types.TransactWriteItem{Put: &types.Put{TableName: s.table(), Item: withTTL(req, s.expiry(now)),
				ConditionExpression: aws.String("attribute_not_exists(pk)")}})
		} else {
			tx = append(tx, types.TransactWriteItem{Update: &types.Update{TableName: s.table(), Key: hkey("r#"+key, "r"),
				UpdateExpression: aws.String("SET #d = :next"), ConditionExpression: aws.String("#d = :p"),
				ExpressionAttributeNames: map[string]string{"#d": "done"}, ExpressionAttributeValues: map[string]types.AttributeValue{":next": nv(int64(p + 1)), ":p": nv(int64(p))}}})
		}
		tx = append(tx, types.TransactWriteItem{Put: &types.Put{TableName: s.table(), Item: map[string]types.AttributeValue{
			"pk": sv(fmt.Sprintf("l#%d", reqShard)), "sk": sv(fmt.Sprintf("%019d#%03d", first, p)), "key": sv(key), "rows": sv(body), "at": nv(timeN(now))}}})
		for _, k := range order {
			a := items[k]
			adds, sets := map[string]types.AttributeValue{}, map[string]types.AttributeValue{}
			for pk, v := range a.parts {
				adds["u:"+pk], adds["r:"+pk] = nv(v[0]), nv(v[1])
			}
			for th, sig := range a.tags {
				sets["g:"+th] = sv(sig)
			}
			tx = append(tx, types.TransactWriteItem{Update: s.addToHour(k, a.q, a.n, adds, sets)})
		}
		for _, h := range hourOrder {
			c := counters[h]
			tx = append(tx, types.TransactWriteItem{Update: &types.Update{TableName: s.table(), Key: hkey(fmt.Sprintf("c#%d#%d", h, reqShard), "c"),
				UpdateExpression: aws.String("ADD n :n, q :q"), ConditionExpression: aws.String("attribute_not_exists(#c)"),
				ExpressionAttributeNames: map[string]string{"#c": "closed"}, ExpressionAttributeValues: map[string]types.AttributeValue{":n": nv(c[0]), ":q": nv(c[1])}}})
		}
		_, err := s.client.TransactWriteItems(ctx, &ddb.TransactWriteItemsInput{TransactItems: tx})
		if err == nil {
			return nil
		}
		var tc *types.TransactionCanceledException
		if !errors.As(err, &tc) {
			return fmt.Errorf("add usage %s: %w", key, err)
		}
		retry := false
		for i, r := range tc.CancellationReasons {
			code := aws.ToString(r.Code)
			switch {
			case code == "" || code == "None":
			case code == "ConditionalCheckFailed" && i == 0:
				return errRequestRace
			case code == "ConditionalCheckFailed" && i >= 2 && i < 2+len(order):
				pl.sealed[order[i-2]] = true // a cancelling buyer's hour, sealed already
			case code == "ConditionalCheckFailed" && i >= 2+len(order):
				s.closed.Store(hourOrder[i-2-len(order)], true)
			default: // TransactionConflict, ThrottlingError: try again
				retry = true
			}
		}
		if retry {
			if err := sleepCtx(ctx, backoff(attempt+1)); err != nil {
				return err
			}
		}
	}
}

// addToHour is the update that adds usage (quantity q of n records, and
// the per usage hour and tag set attributes in adds) to a buyer's item of
// an hour, setting the attributes in sets, on condition the item is not
// sealed. Ingestion and replay add usage this way.
func (s *HourStore) addToHour(k itemKey, q, n int64, adds, sets map[string]types.AttributeValue) *types.Update {
	names := map[string]string{"#sub": "sub", "#dim": "dim", "#h": "h", "#st": "st"}
	vals := map[string]types.AttributeValue{":q": nv(q), ":n": nv(n), ":one": nv(1), ":sub": sv(k.sub), ":dim": sv(k.dim), ":h": nv(k.hour)}
	addExpr := []string{"q :q", "n :n", "v :one"}
	setExpr := []string{"#sub = :sub", "#dim = :dim", "#h = :h"}
	for i, name := range slices.Sorted(maps.Keys(adds)) {
		names[fmt.Sprintf("#a%d", i)], vals[fmt.Sprintf(":a%d", i)] = name, adds[name]
		addExpr = append(addExpr, fmt.Sprintf("#a%d :a%d", i, i))
	}
	for i, name := range slices.Sorted(maps.Keys(sets)) {
		names[fmt.Sprintf("#s%d", i)], vals[fmt.Sprintf(":s%d", i)] = name, sets[name]
		setExpr = append(setExpr, fmt.Sprintf("#s%d = :s%d", i, i))
	}
	return &types.Update{TableName: s.table(), Key: k.key(),
		UpdateExpression:    aws.String("SET " + strings.Join(setExpr, ", ") + " ADD " + strings.Join(addExpr, ", ")),
		ConditionExpression: aws.String("attribute_not_exists(#st)"), ExpressionAttributeNames: names, ExpressionAttributeValues: vals}
}

// ---- Sealing ----

// hourMeta is the meter's record of one hour.
type hourMeta struct {
	hour   int64
	closed bool
	done   bool
	sealed map[int]bool
	counts map[string]mpsaas.StateCount
	// products are a done hour's usage and billed quantity by product
	// code (the console's chart).
	products map[string][2]int64
}

func metaSK(h int64) string { return fmt.Sprintf("h#%012d", h) }

var countStates = []string{mpsaas.UsagePending, mpsaas.UsageSealed, mpsaas.UsageBatched, mpsaas.UsageBilled, mpsaas.UsageRejected, mpsaas.UsageFlagged, mpsaas.UsageCovered}

func metaFrom(it map[string]types.AttributeValue) hourMeta {
	m := hourMeta{hour: getN(it, "h"), closed: getB(it, "closed"), done: getB(it, "done"), sealed: map[int]bool{}, counts: map[string]mpsaas.StateCount{}}
	if ns, ok := it["sealed"].(*types.AttributeValueMemberNS); ok {
		for _, v := range ns.Value {
			n, _ := strconv.Atoi(v)
			m.sealed[n] = true
		}
	}
	for _, st := range countStates {
		c := mpsaas.StateCount{Records: getN(it, st+":r"), Quantity: getN(it, st+":q"), MeterRecords: getN(it, st+":m"), MeterQuantity: getN(it, st+":mq")}
		if c != (mpsaas.StateCount{}) {
			m.counts[st] = c
		}
	}
	if p := getS(it, "products"); p != "" {
		_ = json.Unmarshal([]byte(p), &m.products) // display only: a bad value shows no chart
	}
	return m
}

// metas reads the hour marks from..to (inclusive), consistently.
func (s *HourStore) metas(ctx context.Context, from, to int64) (map[int64]hourMeta, error) {
	items, err := s.query(ctx, &ddb.QueryInput{TableName: s.table(), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("pk = :m AND sk BETWEEN :a AND :b"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":m": sv(metaPK), ":a": sv(metaSK(from)), ":b": sv(metaSK(to))}})
	if err != nil {
		return nil, fmt.Errorf("hour marks: %w", err)
	}
	out := make(map[int64]hourMeta, len(items))
	for _, it := range items {
		m := metaFrom(it)
		out[m.hour] = m
	}
	return out, nil
}

// closeHour stops ingestion into hour h: every counter of the hour is
// closed (created closed if no request wrote to it).
func (s *HourStore) closeHour(ctx context.Context, h int64) error {
	err := parallel(ctx, hourShards, s.workers(), func(k int) error {
		_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: hkey(fmt.Sprintf("c#%d#%d", h, k), "c"),
			UpdateExpression: aws.String("SET #c = :t"), ExpressionAttributeNames: map[string]string{"#c": "closed"}, ExpressionAttributeValues: map[string]types.AttributeValue{":t": bv(true)}})
		return err
	})
	if err != nil {
		return fmt.Errorf("close hour %s: %w", time.Unix(h, 0).UTC().Format(time.RFC3339), err)
	}
	_, err = s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: hkey(metaPK, metaSK(h)),
		UpdateExpression: aws.String("SET #c = :t, h = :h"), ExpressionAttributeNames: map[string]string{"#c": "closed"}, ExpressionAttributeValues: map[string]types.AttributeValue{":t": bv(true), ":h": nv(h)}})
	if err != nil {
		return fmt.Errorf("close hour: %w", err)
	}
	s.closed.Store(h, true)
	return nil
}

// PendingRange starts a sealing pass. The hour model has no usage ids to
// range over: Hi 1 means "look".
func (s *HourStore) PendingRange(ctx context.Context) (mpsaas.PendingScan, error) {
	return mpsaas.PendingScan{Lo: 1, Hi: 1}, nil
}

// ScanPending closes the hours before scan.Before that are not closed yet,
// then reads every unsealed shard of them with strongly consistent
// queries, a page at a time, and the open hours of the buyers in
// scan.Flush; it calls fn with each unsealed item's usage by usage hour
// and tag set. Hours all of whose records are final are folded into their
// hour mark first (their counts kept, the cursor moved past them).
func (s *HourStore) ScanPending(ctx context.Context, scan *mpsaas.PendingScan, fn func(mpsaas.UsageGroup) error) error {
	c, err := s.readCursor(ctx)
	if err != nil {
		return err
	}
	before := scan.Before.Unix()
	if c.hour, err = s.advance(ctx, c.hour, before); err != nil {
		return err
	}
	if c.hour < before {
		metas, err := s.metas(ctx, c.hour, before-3600)
		if err != nil {
			return err
		}
		read, budget := 0, s.sealBudget()
	hours:
		for h := c.hour; h < before; h += 3600 {
			m := metas[h]
			for k := range hourShards {
				if m.sealed[k] {
					continue
				}
				if read >= budget {
					scan.More = true // the rest in the next pass
					break hours
				}
				if !m.closed {
					if err := s.closeHour(ctx, h); err != nil {
						return err
					}
					m.closed = true
				}
				pk := fmt.Sprintf("u#%d#%d", h, k)
				err := s.pages(ctx, &ddb.QueryInput{TableName: s.table(), ConsistentRead: aws.Bool(true),
					KeyConditionExpression: aws.String("pk = :p"), ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv(pk)}},
					func(it map[string]types.AttributeValue) error {
						read++
						return emitPending(it, fn)
					})
				if err != nil {
					return err
				}
				scan.Read = append(scan.Read, pk)
			}
		}
	}
	// Cancelling buyers: their open hours too (not closed: sealed by version).
	for _, sub := range scan.Flush {
		for h := max(before, c.hour); h <= scan.FlushUntil.Unix(); h += 3600 {
			k := itemKey{sub: sub, hour: h}
			err := s.pages(ctx, &ddb.QueryInput{TableName: s.table(), ConsistentRead: aws.Bool(true),
				KeyConditionExpression:    aws.String("pk = :p AND begins_with(sk, :s)"),
				ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv(k.pk()), ":s": sv(sub + "\x1f")}},
				func(it map[string]types.AttributeValue) error { return emitPending(it, fn) })
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// emitPending calls fn with the usage of an unsealed item, by usage hour
// and tag set.
func emitPending(it map[string]types.AttributeValue, fn func(mpsaas.UsageGroup) error) error {
	if getS(it, "st") != "" {
		return nil
	}
	k := keyOfItem(it)
	for _, p := range itemParts(it) {
		if err := fn(mpsaas.UsageGroup{SubscriberKey: k.sub, Dimension: k.dim, Hour: time.Unix(k.hour, 0).UTC(), UsageHour: time.Unix(p.hour, 0).UTC(),
			TagSig: p.tagSig, Quantity: p.q, Records: p.n, Version: getN(it, "v")}); err != nil {
			return err
		}
	}
	return nil
}

type itemPart struct {
	hour   int64
	tagSig string
	q, n   int64
}

// itemParts lists an item's usage by usage hour and tag set, in order.
func itemParts(it map[string]types.AttributeValue) []itemPart {
	var out []itemPart
	for name := range it {
		rest, ok := strings.CutPrefix(name, "u:")
		if !ok {
			continue
		}
		hs, th, _ := strings.Cut(rest, ":")
		h, _ := strconv.ParseInt(hs, 10, 64)
		p := itemPart{hour: h, q: getN(it, name), n: getN(it, "r:"+rest)}
		if th != "" {
			p.tagSig = getS(it, "g:"+th)
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].hour != out[j].hour {
			return out[i].hour < out[j].hour
		}
		return out[i].tagSig < out[j].tagSig
	})
	return out
}

// pages runs a query and calls fn with every item, a page at a time.
func (s *HourStore) pages(ctx context.Context, in *ddb.QueryInput, fn func(map[string]types.AttributeValue) error) error {
	in.Limit = aws.Int32(500)
	for {
		out, err := s.client.Query(ctx, in)
		if err != nil {
			return fmt.Errorf("query %s: %w", getS(in.ExpressionAttributeValues, ":p"), err)
		}
		for _, it := range out.Items {
			if err := fn(it); err != nil {
				return err
			}
		}
		if len(out.LastEvaluatedKey) == 0 {
			return nil
		}
		in.ExclusiveStartKey = out.LastEvaluatedKey
	}
}

// advance folds the hours from the cursor on (before `before`) whose
// shards are all sealed and whose records are all final: their counts go
// into the hour mark and the cursor moves past them. It stops at the first
// hour that is not final.
func (s *HourStore) advance(ctx context.Context, from, before int64) (int64, error) {
	if from >= before {
		return from, nil
	}
	metas, err := s.metas(ctx, from, before-3600)
	if err != nil {
		return from, err
	}
	// An hour with records still in a batch cannot be folded: while any
	// batch is unfinished, fold only hours already marked done, instead
	// of reading a whole hour again on every run.
	pending, err := s.pendingBatches(ctx, s.Now())
	if err != nil {
		return from, err
	}
	h := from
	for ; h < before; h += 3600 {
		if len(pending) > 0 && !metas[h].done {
			break
		}
		m := metas[h]
		if m.done {
			continue
		}
		if len(m.sealed) < hourShards {
			break
		}
		counts, products, final, err := s.countHour(ctx, h, true)
		if err != nil {
			return from, err
		}
		if !final {
			break
		}
		names, vals := map[string]string{"#d": "done"}, map[string]types.AttributeValue{":t": bv(true)}
		sets := []string{"#d = :t"}
		if len(products) > 0 {
			b, _ := json.Marshal(products)
			names["#p"], vals[":p"] = "products", sv(string(b))
			sets = append(sets, "#p = :p")
		}
		i := 0
		for st, c := range counts {
			for suffix, v := range map[string]int64{"r": c.Records, "q": c.Quantity, "m": c.MeterRecords, "mq": c.MeterQuantity} {
				names[fmt.Sprintf("#c%d", i)], vals[fmt.Sprintf(":c%d", i)] = st+":"+suffix, nv(v)
				sets = append(sets, fmt.Sprintf("#c%d = :c%d", i, i))
				i++
			}
		}
		in := &ddb.UpdateItemInput{TableName: s.table(), Key: hkey(metaPK, metaSK(h)), UpdateExpression: aws.String("SET " + strings.Join(sets, ", ")),
			ConditionExpression: aws.String("attribute_not_exists(#d)"), ExpressionAttributeNames: names, ExpressionAttributeValues: vals}
		if _, err := s.client.UpdateItem(ctx, in); err != nil && !isConditionFailed(err) {
			return from, fmt.Errorf("fold hour: %w", err)
		}
	}
	if h > from {
		if err := s.setCursor(ctx, "hour", h); err != nil {
			return from, err
		}
	}
	return h, nil
}

// countHour counts an hour's usage records by state, reading its items;
// final reports whether none is pending or being sent.
func (s *HourStore) countHour(ctx context.Context, h int64, consistent bool) (map[string]mpsaas.StateCount, map[string][2]int64, bool, error) {
	counts := map[string]mpsaas.StateCount{}
	products := map[string][2]int64{}
	final := true
	var mu sync.Mutex
	err := parallel(ctx, hourShards, s.workers(), func(k int) error {
		return s.pages(ctx, &ddb.QueryInput{TableName: s.table(), ConsistentRead: aws.Bool(consistent),
			KeyConditionExpression: aws.String("pk = :p"), ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv(fmt.Sprintf("u#%d#%d", h, k))}},
			func(it map[string]types.AttributeValue) error {
				mu.Lock()
				defer mu.Unlock()
				if _, moved := it["to"]; moved {
					return nil // its usage is counted where it moved
				}
				st := getS(it, "st")
				if st == "" || st == mpsaas.UsageBatched || st == mpsaas.UsageSealed {
					final = false
				}
				if st == "" {
					st = mpsaas.UsagePending
				}
				c := counts[st]
				c.Records += getN(it, "n")
				c.Quantity += getN(it, "q")
				if pc := getS(it, "pc"); pc != "" {
					p := products[pc]
					p[0] += getN(it, "q")
					if st == mpsaas.UsageBilled {
						p[1] += getN(it, "bq")
					}
					products[pc] = p
				}
				if st != mpsaas.UsagePending {
					c.MeterRecords++
					c.MeterQuantity += getN(it, "bq")
				}
				counts[st] = c
				return nil
			})
	})
	return counts, products, final, err
}

// InsertMeterRecords seals the items the records sum: each only if its
// version is still the one read (else it is returned as a conflict and
// sealed by a later pass). Records to send go straight into batches of at
// most 25 of one product; each batch, listing its records' keys, is
// written before the records are sealed into it.
func (s *HourStore) InsertMeterRecords(ctx context.Context, recs []mpsaas.MeterRecord, upTo int64) ([]mpsaas.MeterKey, error) {
	now := s.Now()
	var final, send []mpsaas.MeterRecord
	for _, r := range recs {
		if r.State == "" || r.State == mpsaas.UsageSealed {
			send = append(send, r)
		} else {
			final = append(final, r)
		}
	}
	var mu sync.Mutex
	var conflicts []mpsaas.MeterKey
	seal := func(r mpsaas.MeterRecord, state string, batch int64) (bool, error) {
		names, vals, set := recordAttrs(r, state, batch, now)
		names["#st"] = "st"
		vals[":v"] = nv(r.Version)
		_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: itemKey{r.SubscriberKey, r.Dimension, r.Hour.Unix()}.key(),
			UpdateExpression: aws.String(set), ConditionExpression: aws.String("attribute_not_exists(#st) AND v = :v"),
			ExpressionAttributeNames: names, ExpressionAttributeValues: vals})
		if isConditionFailed(err) {
			mu.Lock()
			conflicts = append(conflicts, mpsaas.MeterKey{SubscriberKey: r.SubscriberKey, Dimension: r.Dimension, Hour: r.Hour})
			mu.Unlock()
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("seal %s/%s/%s: %w", r.SubscriberKey, r.Dimension, r.Hour.Format(time.RFC3339), err)
		}
		return true, nil
	}
	if err := parallel(ctx, len(final), s.workers(), func(i int) error {
		_, err := seal(final[i], final[i].State, 0)
		return err
	}); err != nil {
		return nil, err
	}
	batches := groupBatches(send)
	err := parallel(ctx, len(batches), max(1, s.workers()/4), func(i int) error {
		b := batches[i]
		id, err := s.putBatch(ctx, b, now)
		if err != nil {
			return err
		}
		var sealed atomic.Int32
		if err := parallel(ctx, len(b), 4, func(j int) error {
			ok, err := seal(b[j], mpsaas.UsageBatched, id)
			if ok {
				sealed.Add(1)
			}
			return err
		}); err != nil {
			return err
		}
		if sealed.Load() == 0 {
			return s.endBatch(ctx, id, "done", now)
		}
		return nil
	})
	return conflicts, err
}

// recordAttrs is the update that makes an item a meter record in state.
func recordAttrs(r mpsaas.MeterRecord, state string, batch int64, now time.Time) (map[string]string, map[string]types.AttributeValue, string) {
	names := map[string]string{}
	vals := map[string]types.AttributeValue{":st": sv(state), ":bq": nv(r.Quantity), ":at": nv(timeN(now))}
	sets := []string{"#st = :st", "bq = :bq", "sat = :at"}
	if batch != 0 {
		vals[":b"], names["#batch"] = nv(batch), "batch"
		sets = append(sets, "#batch = :b")
	}
	str := func(attr, v string) {
		if v != "" {
			names["#"+attr], vals[":"+attr] = attr, sv(v)
			sets = append(sets, "#"+attr+" = :"+attr)
		}
	}
	str("ci", r.CustomerIdentifier)
	str("acct", r.CustomerAWSAccountID)
	str("lic", r.LicenseArn)
	str("pc", r.ProductCode)
	str("reason", r.Reason)
	if r.Allocations != nil {
		b, _ := json.Marshal(r.Allocations)
		str("al", string(b))
	}
	if r.Shares != nil {
		b, _ := json.Marshal(r.Shares)
		str("sh", string(b))
	}
	return names, vals, "SET " + strings.Join(sets, ", ")
}

// recordFrom reads the meter record of an item.
func recordFrom(it map[string]types.AttributeValue) (mpsaas.MeterRecord, error) {
	k := keyOfItem(it)
	r := mpsaas.MeterRecord{SubscriberKey: k.sub, Dimension: k.dim, Hour: time.Unix(k.hour, 0).UTC(), Quantity: getN(it, "bq"),
		UsageQuantity: getN(it, "q"), UsageRecords: getN(it, "n"), Version: getN(it, "v"),
		CustomerIdentifier: getS(it, "ci"), CustomerAWSAccountID: getS(it, "acct"), LicenseArn: getS(it, "lic"), ProductCode: getS(it, "pc"),
		State: getS(it, "st"), BatchID: getN(it, "batch"), MeteringRecordID: getS(it, "mrid"), Reason: getS(it, "reason")}
	if a := getS(it, "al"); a != "" {
		if err := json.Unmarshal([]byte(a), &r.Allocations); err != nil {
			return r, fmt.Errorf("meter record %s allocations: %w", k.flat(), err)
		}
	}
	if sh := getS(it, "sh"); sh != "" {
		if err := json.Unmarshal([]byte(sh), &r.Shares); err != nil {
			return r, fmt.Errorf("meter record %s shares: %w", k.flat(), err)
		}
	}
	return r, nil
}

// groupBatches cuts records into batches of at most 25 of one product.
func groupBatches(recs []mpsaas.MeterRecord) [][]mpsaas.MeterRecord {
	sorted := make([]mpsaas.MeterRecord, len(recs))
	copy(sorted, recs)
	sort.SliceStable(sorted, func(i, j int) bool { return mpsaas.BatchGroup(sorted[i]) < mpsaas.BatchGroup(sorted[j]) })
	var out [][]mpsaas.MeterRecord
	for start := 0; start < len(sorted); {
		end := start + 1
		for end < len(sorted) && end-start < mpsaas.MaxBatchRecords && mpsaas.BatchGroup(sorted[end]) == mpsaas.BatchGroup(sorted[start]) {
			end++
		}
		out = append(out, sorted[start:end])
		start = end
	}
	return out
}

// SealUsage records the shards the pass read in full, and sealed without
// a conflict, as sealed: later passes skip them (nothing can be added to
// a closed hour). Usage never moves here: an item whose seal conflicted
// is still pending and sealed by the next pass.
func (s *HourStore) SealUsage(ctx context.Context, scan mpsaas.PendingScan, conflicts []mpsaas.MeterKey, openHour time.Time) (int, error) {
	conflicted := map[string]bool{}
	for _, c := range conflicts {
		conflicted[itemKey{c.SubscriberKey, c.Dimension, c.Hour.Unix()}.pk()] = true
	}
	byHour := map[int64][]string{}
	for _, pk := range scan.Read {
		if conflicted[pk] {
			continue
		}
		var h int64
		var k int
		if _, err := fmt.Sscanf(pk, "u#%d#%d", &h, &k); err != nil {
			return 0, fmt.Errorf("seal: bad partition %q", pk)
		}
		byHour[h] = append(byHour[h], strconv.Itoa(k))
	}
	for h, shards := range byHour {
		_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: hkey(metaPK, metaSK(h)),
			UpdateExpression: aws.String("ADD #s :s SET h = :h"), ExpressionAttributeNames: map[string]string{"#s": "sealed"},
			ExpressionAttributeValues: map[string]types.AttributeValue{":s": &types.AttributeValueMemberNS{Value: shards}, ":h": nv(h)}})
		if err != nil {
			return 0, fmt.Errorf("seal hour: %w", err)
		}
	}
	return 0, nil
}

// ---- Batches ----

// batchPK is the partition of a batch: its bucket (the hour it was
// created in) and a shard, both in its id.
func batchPK(id int64) string {
	return fmt.Sprintf("b#%d#%d", (id>>21)*3600, id%hourShards)
}

func batchSK(id int64) string { return fmt.Sprintf("%019d", id) }

// headPK is the partition of a pending batch's head: a small item (id
// and next attempt; the rest is read from the batch when it is due) that
// exists while the batch is pending, so looking for due batches reads only those, not every batch
// item of the hour (about 2.5 KB each, most of them done).
func headPK(id int64) string {
	return fmt.Sprintf("d#%d#%d", (id>>21)*3600, id%hourShards)
}

func headKey(id int64) map[string]types.AttributeValue { return hkey(headPK(id), batchSK(id)) }

// putBatch stores a batch of records (not yet sealed into it) and returns
// its id: the hour bucket it is created in, and 21 random bits.
func (s *HourStore) putBatch(ctx context.Context, recs []mpsaas.MeterRecord, now time.Time) (int64, error) {
	s.mu.Lock()
	bucket := max(mpsaas.Hour(now).Unix(), s.bucket)
	s.mu.Unlock()
	keys := make([]types.AttributeValue, len(recs))
	for i, r := range recs {
		keys[i] = sv(itemKey{r.SubscriberKey, r.Dimension, r.Hour.Unix()}.flat())
	}
	product := ""
	if !recs[0].LicenseMode() {
		product = recs[0].ProductCode
	}
	for range 10 {
		var b [4]byte
		_, _ = rand.Read(b[:])
		id := bucket/3600<<21 | int64(binary.BigEndian.Uint32(b[:])&(1<<21-1))
		if id == 0 {
			continue
		}
		// The head first: a head without its batch (a crash in between)
		// is dropped by DueBatches; a batch without its head would never
		// be sent.
		head := map[string]types.AttributeValue{"pk": sv(headPK(id)), "sk": sv(batchSK(id)), "id": nv(id), "next": nv(timeN(now))}
		if _, err := s.client.PutItem(ctx, &ddb.PutItemInput{TableName: s.table(), Item: head}); err != nil {
			return 0, fmt.Errorf("create batch: %w", err)
		}
		item := map[string]types.AttributeValue{"pk": sv(batchPK(id)), "sk": sv(batchSK(id)), "id": nv(id), "st": sv("pending"), "next": nv(timeN(now)),
			"attempts": nv(0), "at": nv(timeN(now)), "keys": &types.AttributeValueMemberL{Value: keys}}
		putS(item, "pc", product)
		_, err := s.client.PutItem(ctx, &ddb.PutItemInput{TableName: s.table(), Item: item, ConditionExpression: aws.String("attribute_not_exists(pk)")})
		if isConditionFailed(err) {
			continue // the id is taken
		}
		if err != nil {
			return 0, fmt.Errorf("create batch: %w", err)
		}
		return id, nil
	}
	return 0, errors.New("create batch: no free id")
}

func (s *HourStore) endBatch(ctx context.Context, id int64, state string, now time.Time) error {
	names, vals := map[string]string{"#st": "st"}, map[string]types.AttributeValue{":s": sv(state), ":now": nv(timeN(now)), ":one": nv(1)}
	_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: hkey(batchPK(id), batchSK(id)),
		UpdateExpression:         aws.String("SET #st = :s, doneAt = :now, attempts = attempts + :one" + s.setTTL(now, names, vals)),
		ExpressionAttributeNames: names, ExpressionAttributeValues: vals})
	if err != nil {
		return fmt.Errorf("finish batch %d: %w", id, err)
	}
	return s.dropHead(ctx, id)
}

// dropHead deletes a batch's head (the batch is no longer pending).
func (s *HourStore) dropHead(ctx context.Context, id int64) error {
	if _, err := s.client.DeleteItem(ctx, &ddb.DeleteItemInput{TableName: s.table(), Key: headKey(id)}); err != nil {
		return fmt.Errorf("finish batch %d: %w", id, err)
	}
	return nil
}

// CreateBatches has nothing to do: records go into batches as they are sealed.
func (s *HourStore) CreateBatches(ctx context.Context, now time.Time) (int, error) { return 0, nil }

// AddHeartbeats stores zero-quantity records, in batches, for keys that
// have no item.
func (s *HourStore) AddHeartbeats(ctx context.Context, records []mpsaas.MeterRecord) (int, error) {
	now := s.Now()
	var added int
	var mu sync.Mutex
	batches := groupBatches(records)
	err := parallel(ctx, len(batches), max(1, s.workers()/4), func(i int) error {
		b := batches[i]
		id, err := s.putBatch(ctx, b, now)
		if err != nil {
			return err
		}
		n := 0
		for _, r := range b {
			r.Quantity = 0
			names, vals, set := recordAttrs(r, mpsaas.UsageBatched, id, now)
			k := itemKey{r.SubscriberKey, r.Dimension, r.Hour.Unix()}
			names["#sub"], names["#st"], names["#dim"], names["#h"] = "sub", "st", "dim", "h"
			vals[":sub"], vals[":dim"], vals[":h"], vals[":zero"] = sv(k.sub), sv(k.dim), nv(k.hour), nv(0)
			_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: k.key(),
				UpdateExpression:    aws.String(set + ", #sub = :sub, #dim = :dim, #h = :h, q = :zero, n = :zero, v = :zero"),
				ConditionExpression: aws.String("attribute_not_exists(pk)"), ExpressionAttributeNames: names, ExpressionAttributeValues: vals})
			if isConditionFailed(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("add heartbeat: %w", err)
			}
			n++
		}
		mu.Lock()
		added += n
		mu.Unlock()
		if n == 0 {
			return s.endBatch(ctx, id, "done", now)
		}
		return nil
	})
	return added, err
}

// batchItems reads batches' records (consistent reads) by their keys;
// records[i] is the record at position i, nil when absent.
func (s *HourStore) batchItems(ctx context.Context, flats []string) ([]map[string]types.AttributeValue, error) {
	byKey := map[string]map[string]types.AttributeValue{}
	for start := 0; start < len(flats); start += 100 {
		var keys []map[string]types.AttributeValue
		seen := map[string]bool{}
		for _, f := range flats[start:min(start+100, len(flats))] {
			if seen[f] {
				continue
			}
			seen[f] = true
			k, err := parseFlat(f)
			if err != nil {
				return nil, err
			}
			keys = append(keys, k)
		}
		for attempt := 0; len(keys) > 0; attempt++ {
			out, err := s.client.BatchGetItem(ctx, &ddb.BatchGetItemInput{RequestItems: map[string]types.KeysAndAttributes{
				s.tables.MeterHours: {Keys: keys, ConsistentRead: aws.Bool(true)}}})
			if err != nil {
				return nil, fmt.Errorf("read meter records: %w", err)
			}
			for _, it := range out.Responses[s.tables.MeterHours] {
				byKey[getS(it, "pk")+"\x1e"+getS(it, "sk")] = it
			}
			keys = out.UnprocessedKeys[s.tables.MeterHours].Keys
			if len(keys) > 0 {
				if err := sleepCtx(ctx, backoff(attempt+1)); err != nil {
					return nil, err
				}
			}
		}
	}
	out := make([]map[string]types.AttributeValue, len(flats))
	for i, f := range flats {
		out[i] = byKey[f]
	}
	return out, nil
}

func batchKeys(b map[string]types.AttributeValue) []string {
	l, _ := b["keys"].(*types.AttributeValueMemberL)
	if l == nil {
		return nil
	}
	out := make([]string, len(l.Value))
	for i, v := range l.Value {
		if s, ok := v.(*types.AttributeValueMemberS); ok {
			out[i] = s.Value
		}
	}
	return out
}

// batchRecords returns the records still batched in batch b: meter record
// ID i+1 is the record at position i of the batch's keys.
func (s *HourStore) batchRecords(ctx context.Context, b map[string]types.AttributeValue) ([]mpsaas.MeterRecord, []string, error) {
	id, keys := getN(b, "id"), batchKeys(b)
	items, err := s.batchItems(ctx, keys)
	if err != nil {
		return nil, nil, err
	}
	var out []mpsaas.MeterRecord
	for i, it := range items {
		if it == nil || getN(it, "batch") != id || getS(it, "st") != mpsaas.UsageBatched {
			continue
		}
		r, err := recordFrom(it)
		if err != nil {
			return nil, nil, err
		}
		r.ID = int64(i + 1)
		out = append(out, r)
	}
	return out, keys, nil
}

func (s *HourStore) getBatch(ctx context.Context, id int64) (map[string]types.AttributeValue, error) {
	it, err := s.findBatch(ctx, id)
	if err == nil && it == nil {
		err = fmt.Errorf("batch %d: not found", id)
	}
	return it, err
}

// findBatch reads a batch item (nil: there is none).
func (s *HourStore) findBatch(ctx context.Context, id int64) (map[string]types.AttributeValue, error) {
	out, err := s.client.GetItem(ctx, &ddb.GetItemInput{TableName: s.table(), Key: hkey(batchPK(id), batchSK(id)), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return nil, fmt.Errorf("batch %d: %w", id, err)
	}
	return out.Item, nil
}

// pendingBatches lists the unfinished batches of the buckets from the
// batch cursor to the current hour (their heads; whole batch items, with a
// filter, for buckets from before heads), moving the cursor past buckets
// that have none and can get no more. A head may be stale (its batch ended
// or was never written): DueBatches drops those.
func (s *HourStore) pendingBatches(ctx context.Context, now time.Time) ([]map[string]types.AttributeValue, error) {
	c, err := s.readCursor(ctx)
	if err != nil {
		return nil, err
	}
	if c.heads == 0 {
		// A table metered by a version without heads: its batches have
		// none. A meter invocation of that version may still be finishing
		// (minutes), so buckets are trusted to have heads from two hours
		// on; earlier ones are read whole until the cursor passes them.
		h := mpsaas.Hour(s.Now()).Unix() + 2*3600
		_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: hkey(metaPK, cursorSK),
			UpdateExpression: aws.String("SET heads = :h"), ConditionExpression: aws.String("attribute_not_exists(heads)"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":h": nv(h)}})
		if err != nil && !isConditionFailed(err) {
			return nil, fmt.Errorf("metering cursor: %w", err)
		}
		if c, err = s.readCursor(ctx); err != nil {
			return nil, err
		}
	}
	last := mpsaas.Hour(now).Unix() + 3600
	var out []map[string]types.AttributeValue
	var mu sync.Mutex
	first := int64(0) // the first bucket with a pending batch
	for b := c.bucket; b <= last; b += 3600 {
		n := 0
		err := parallel(ctx, hourShards, s.workers(), func(k int) error {
			in := &ddb.QueryInput{TableName: s.table(), ConsistentRead: aws.Bool(true), KeyConditionExpression: aws.String("pk = :p")}
			if b >= c.heads {
				in.ExpressionAttributeValues = map[string]types.AttributeValue{":p": sv(fmt.Sprintf("d#%d#%d", b, k))}
			} else {
				in.FilterExpression = aws.String("#st = :pending")
				// Only what scheduling needs, as a head holds: the record keys
				// of thousands of batches would make memory grow with the
				// number of buyers.
				in.ProjectionExpression = aws.String("id, #next")
				in.ExpressionAttributeNames = map[string]string{"#st": "st", "#next": "next"}
				in.ExpressionAttributeValues = map[string]types.AttributeValue{":p": sv(fmt.Sprintf("b#%d#%d", b, k)), ":pending": sv("pending")}
			}
			return s.pages(ctx, in,
				func(it map[string]types.AttributeValue) error {
					mu.Lock()
					out = append(out, it)
					n++
					mu.Unlock()
					return nil
				})
		})
		if err != nil {
			return nil, err
		}
		if n > 0 && first == 0 {
			first = b
		}
	}
	// Buckets before the previous hour get no new batches.
	to := mpsaas.Hour(now).Unix() - 3600
	if first != 0 {
		to = min(to, first)
	}
	if to > c.bucket {
		if err := s.setCursor(ctx, "bucket", to); err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.bucket = max(s.bucket, to)
		s.mu.Unlock()
	}
	return out, nil
}

// DueBatches returns unfinished batches due at now, oldest attempt first,
// with their unfinished records.
func (s *HourStore) DueBatches(ctx context.Context, now time.Time, limit int) ([]mpsaas.MeterBatch, error) {
	items, err := s.pendingBatches(ctx, now)
	if err != nil {
		return nil, fmt.Errorf("due batches: %w", err)
	}
	due := items[:0]
	for _, it := range items {
		if getN(it, "next") <= timeN(now) {
			due = append(due, it)
		}
	}
	sort.Slice(due, func(i, j int) bool {
		if a, b := getN(due[i], "next"), getN(due[j], "next"); a != b {
			return a < b
		}
		return getN(due[i], "id") < getN(due[j], "id")
	})
	if len(due) > limit {
		due = due[:limit]
	}
	out := make([]mpsaas.MeterBatch, len(due))
	err = parallel(ctx, len(due), s.workers(), func(i int) error {
		id := getN(due[i], "id")
		full, err := s.findBatch(ctx, id)
		if err != nil {
			return err
		}
		if full == nil || getS(full, "st") != "pending" {
			// A stale head: the batch ended (or was never written).
			return s.dropHead(ctx, id)
		}
		b := mpsaas.MeterBatch{ID: id, ProductCode: getS(full, "pc"), Attempts: int(getN(full, "attempts")), NextAttempt: fromN(getN(full, "next"))}
		b.Records, _, err = s.batchRecords(ctx, full)
		out[i] = b
		return err
	})
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(out, func(b mpsaas.MeterBatch) bool { return b.ID == 0 }), nil
}

// FinishBatches stores what AWS said about each record (only if it is
// still batched in that batch), then schedules the batch's retry or ends it.
func (s *HourStore) FinishBatches(ctx context.Context, results []mpsaas.BatchOutcome) error {
	now := s.Now()
	return parallel(ctx, len(results), max(1, s.workers()/4), func(i int) error {
		res := results[i]
		b, err := s.getBatch(ctx, res.BatchID)
		if err != nil {
			return err
		}
		recs, keys, err := s.batchRecords(ctx, b)
		if err != nil {
			return err
		}
		open := map[int64]bool{}
		for _, r := range recs {
			open[r.ID] = true
		}
		for _, o := range res.Outcomes {
			if !open[o.MeterRecordID] {
				continue // finished already
			}
			key, err := parseFlat(keys[o.MeterRecordID-1])
			if err != nil {
				return err
			}
			names := map[string]string{"#st": "st", "#batch": "batch"}
			vals := map[string]types.AttributeValue{":s": sv(o.State), ":b": nv(res.BatchID), ":batched": sv(mpsaas.UsageBatched), ":now": nv(timeN(now))}
			expr := "SET #st = :s, fat = :now"
			for name, v := range map[string]string{"mrid": o.MeteringRecordID, "reason": o.Reason, "resp": o.Response} {
				if v != "" {
					vals[":"+name], names["#"+name] = sv(v), name
					expr += ", #" + name + " = :" + name
				}
			}
			_, err = s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: key, UpdateExpression: aws.String(expr),
				ConditionExpression: aws.String("#batch = :b AND #st = :batched"), ExpressionAttributeNames: names, ExpressionAttributeValues: vals})
			if err != nil && !isConditionFailed(err) {
				return fmt.Errorf("finish meter record: %w", err)
			}
			delete(open, o.MeterRecordID)
		}
		if !res.Retry.IsZero() {
			_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: hkey(batchPK(res.BatchID), batchSK(res.BatchID)),
				UpdateExpression: aws.String("SET attempts = attempts + :one, #next = :n, lastError = :e"), ExpressionAttributeNames: map[string]string{"#next": "next"},
				ExpressionAttributeValues: map[string]types.AttributeValue{":one": nv(1), ":n": nv(timeN(res.Retry)), ":e": sv(res.LastError)}})
			if err != nil {
				return fmt.Errorf("retry batch %d: %w", res.BatchID, err)
			}
			// Its head's schedule too (a batch from before heads has none).
			_, err = s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: headKey(res.BatchID),
				UpdateExpression: aws.String("SET #next = :n"), ConditionExpression: aws.String("attribute_exists(pk)"),
				ExpressionAttributeNames:  map[string]string{"#next": "next"},
				ExpressionAttributeValues: map[string]types.AttributeValue{":n": nv(timeN(res.Retry))}})
			if err != nil && !isConditionFailed(err) {
				return fmt.Errorf("retry batch %d: %w", res.BatchID, err)
			}
			return nil
		}
		if len(open) > 0 {
			return nil // records without an answer: sent again when due
		}
		return s.endBatch(ctx, res.BatchID, "done", now)
	})
}

// SplitBatch replaces a batch with single-record batches.
func (s *HourStore) SplitBatch(ctx context.Context, batchID int64, now time.Time) error {
	b, err := s.getBatch(ctx, batchID)
	if err != nil {
		return err
	}
	recs, _, err := s.batchRecords(ctx, b)
	if err != nil {
		return err
	}
	for _, r := range recs {
		id, err := s.putBatch(ctx, []mpsaas.MeterRecord{r}, now)
		if err != nil {
			return err
		}
		_, err = s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: s.table(), Key: itemKey{r.SubscriberKey, r.Dimension, r.Hour.Unix()}.key(),
			UpdateExpression: aws.String("SET #batch = :new"), ConditionExpression: aws.String("#batch = :old AND #st = :batched"),
			ExpressionAttributeNames:  map[string]string{"#st": "st", "#batch": "batch"},
			ExpressionAttributeValues: map[string]types.AttributeValue{":new": nv(id), ":old": nv(batchID), ":batched": sv(mpsaas.UsageBatched)}})
		if err != nil && !isConditionFailed(err) {
			return fmt.Errorf("split batch %d: %w", batchID, err)
		}
	}
	return s.endBatch(ctx, batchID, "split", now)
}

// Outstanding reports whether batches are unfinished, or hours before
// `before` may hold usage not yet sealed.
func (s *HourStore) Outstanding(ctx context.Context, before time.Time) (bool, error) {
	c, err := s.readCursor(ctx)
	if err != nil {
		return false, err
	}
	if b := before.Unix(); c.hour < b {
		metas, err := s.metas(ctx, c.hour, b-3600)
		if err != nil {
			return false, err
		}
		for h := c.hour; h < b; h += 3600 {
			if m := metas[h]; !m.done && len(m.sealed) < hourShards {
				return true, nil
			}
		}
	}
	pending, err := s.pendingBatches(ctx, s.Now())
	return len(pending) > 0, err
}

// MeteringLag is how long ago the oldest hour whose records are not all
// final (billed, refused, flagged or covered) ended: 0 when every hour that
// ended more than the grace ago is done. The meter function reports it
// (MeteringLagSeconds) and the template alarms when it passes two hours.
func (s *HourStore) MeteringLag(ctx context.Context, now time.Time) (time.Duration, error) {
	c, err := s.readCursor(ctx)
	if err != nil {
		return 0, err
	}
	return max(0, now.Sub(time.Unix(c.hour+3600, 0))), nil
}

// ---- Reading ----

// MeterRecordsFor reads a buyer's records of a dimension for the hours
// from..to (consistent reads).
func (s *HourStore) MeterRecordsFor(ctx context.Context, subscriberKey, dimension string, from, to time.Time) ([]mpsaas.MeterRecord, error) {
	var flats []string
	for h := from; !h.After(to); h = h.Add(time.Hour) {
		flats = append(flats, itemKey{subscriberKey, dimension, h.Unix()}.flat())
	}
	items, err := s.batchItems(ctx, flats)
	if err != nil {
		return nil, err
	}
	var out []mpsaas.MeterRecord
	for _, it := range items {
		if it == nil || getS(it, "st") == "" {
			continue
		}
		r, err := recordFrom(it)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// MeterSummary counts usage by state: the counts kept in the marks of
// folded hours, and the items of the hours from the cursor on (eventually
// consistent reads: 0.5 read unit per 4 KB).
func (s *HourStore) MeterSummary(ctx context.Context) (map[string]mpsaas.StateCount, error) {
	c, err := s.readCursor(ctx)
	if err != nil {
		return nil, err
	}
	last := mpsaas.Hour(s.Now()).Unix() + maxAheadHours*3600
	metas, err := s.metas(ctx, c.floor, last)
	if err != nil {
		return nil, err
	}
	out := map[string]mpsaas.StateCount{}
	addAll := func(counts map[string]mpsaas.StateCount) {
		for st, n := range counts {
			o := out[st]
			o.Records += n.Records
			o.Quantity += n.Quantity
			o.MeterRecords += n.MeterRecords
			o.MeterQuantity += n.MeterQuantity
			out[st] = o
		}
	}
	for _, m := range metas {
		if m.done {
			addAll(m.counts)
		}
	}
	for h := c.hour; h <= last; h += 3600 {
		if metas[h].done {
			continue
		}
		counts, _, _, err := s.countHour(ctx, h, false)
		if err != nil {
			return nil, err
		}
		addAll(counts)
	}
	for st, n := range out {
		if n == (mpsaas.StateCount{}) {
			delete(out, st)
		}
	}
	return out, nil
}

// ledgerParts calls fn with the rows of every ledger part of id shard k
// whose request starts after `from`, in id order within a request.
func (s *HourStore) ledgerParts(ctx context.Context, k int, from int64, fn func(key string, rows []ledgerRow) error) error {
	return s.pages(ctx, &ddb.QueryInput{TableName: s.table(), KeyConditionExpression: aws.String("pk = :p AND sk > :from"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv(fmt.Sprintf("l#%d", k)), ":from": sv(fmt.Sprintf("%019d", from))}},
		func(it map[string]types.AttributeValue) error {
			first, _ := strconv.ParseInt(strings.SplitN(getS(it, "sk"), "#", 2)[0], 10, 64)
			rows, err := decodeRows(getS(it, "rows"), first)
			if err != nil {
				return fmt.Errorf("ledger part %s: %w", getS(it, "sk"), err)
			}
			return fn(getS(it, "key"), rows)
		})
}

// resolver finds the item a usage record is in now, following moves
// (a replayed item points at the hour its usage moved to).
type resolver struct {
	s     *HourStore
	items map[itemKey]map[string]types.AttributeValue
}

func (r *resolver) load(ctx context.Context, keys []itemKey) error {
	var flats []string
	var want []itemKey
	for _, k := range keys {
		if _, ok := r.items[k]; !ok {
			flats = append(flats, k.flat())
			want = append(want, k)
		}
	}
	if len(flats) == 0 {
		return nil
	}
	items, err := r.s.batchItems(ctx, flats)
	if err != nil {
		return err
	}
	for i, it := range items {
		r.items[want[i]] = it
	}
	return nil
}

// loadRows reads the items of a ledger part's records, 100 a request.
func (r *resolver) loadRows(ctx context.Context, rows []ledgerRow) error {
	keys := make([]itemKey, len(rows))
	for i, row := range rows {
		keys[i] = itemKey{row.Sub, row.Dim, row.MeterHour}
	}
	return r.load(ctx, keys)
}

// final returns the item holding the usage of k now (nil: none).
func (r *resolver) final(ctx context.Context, k itemKey) (itemKey, map[string]types.AttributeValue, error) {
	for range 100 {
		if err := r.load(ctx, []itemKey{k}); err != nil {
			return k, nil, err
		}
		it := r.items[k]
		if it == nil {
			return k, nil, nil
		}
		to, moved := it["to"]
		if !moved {
			return k, it, nil
		}
		n, _ := strconv.ParseInt(to.(*types.AttributeValueMemberN).Value, 10, 64)
		k.hour = n
	}
	return k, nil, fmt.Errorf("usage of %s moved too often", k.flat())
}

// Ledger lists usage records and their fate, by id. Ids are ordered by
// request shard, then sequence. Filtering by buyer or state reads every
// record after AfterID until Limit entries match.
func (s *HourStore) Ledger(ctx context.Context, f mpsaas.LedgerFilter) ([]mpsaas.LedgerEntry, error) {
	if f.Limit <= 0 || f.Limit > 10000 {
		f.Limit = 1000
	}
	res := &resolver{s: s, items: map[itemKey]map[string]types.AttributeValue{}}
	var out []mpsaas.LedgerEntry
	errFull := errors.New("full")
	for k := int(f.AfterID >> 40); k < hourShards && len(out) < f.Limit; k++ {
		from := int64(k) << 40
		if int(f.AfterID>>40) == k {
			from = max(from, f.AfterID-maxRequestRecords) // the request holding AfterID starts here or later
		}
		var page []mpsaas.LedgerEntry
		err := s.ledgerParts(ctx, k, from-1, func(key string, rows []ledgerRow) error {
			if err := res.loadRows(ctx, rows); err != nil {
				return err
			}
			for _, r := range rows {
				if r.ID <= f.AfterID || (f.SubscriberKey != "" && r.Sub != f.SubscriberKey) {
					continue
				}
				e := mpsaas.LedgerEntry{ID: r.ID, SubscriberKey: r.Sub, Dimension: r.Dim, Quantity: r.Quantity, Time: fromN(r.Time),
					Hour: time.Unix(r.MeterHour, 0).UTC(), State: mpsaas.UsagePending, RequestKey: key}
				fk, it, err := res.final(ctx, itemKey{r.Sub, r.Dim, r.MeterHour})
				if err != nil {
					return err
				}
				e.Hour = time.Unix(fk.hour, 0).UTC()
				if r.MeterHour != fk.hour || r.MeterHour != mpsaas.Hour(e.Time).Unix() {
					e.Reason = mpsaas.LateReason(mpsaas.Hour(e.Time), e.Hour)
				}
				if it != nil && getS(it, "st") != "" {
					e.State, e.BatchID, e.MeteringRecordID, e.MeterQuantity = getS(it, "st"), getN(it, "batch"), getS(it, "mrid"), getN(it, "bq")
					if rs := getS(it, "reason"); rs != "" {
						e.Reason = rs
					}
				}
				if f.State != "" && e.State != f.State {
					continue
				}
				page = append(page, e)
			}
			if len(out)+len(page) >= f.Limit {
				return errFull // parts come in id order
			}
			if len(res.items) > 50000 {
				clear(res.items)
			}
			return nil
		})
		if err != nil && !errors.Is(err, errFull) {
			return nil, err
		}
		sort.Slice(page, func(i, j int) bool { return page[i].ID < page[j].ID })
		out = append(out, page...)
	}
	if len(out) > f.Limit {
		out = out[:f.Limit]
	}
	return out, nil
}

// Replay moves the usage of flagged records (all, or those of the given
// usage ids) to hour: each flagged item's usage moves as a whole, so
// every record of its hour's meter record is replayed with it.
func (s *HourStore) Replay(ctx context.Context, ids []int64, hour time.Time) (int, error) {
	var flagged []map[string]types.AttributeValue
	c, err := s.readCursor(ctx)
	if err != nil {
		return 0, err
	}
	if len(ids) == 0 {
		last := mpsaas.Hour(s.Now()).Unix() + maxAheadHours*3600
		metas, err := s.metas(ctx, c.floor, last)
		if err != nil {
			return 0, err
		}
		for h := c.floor; h <= last; h += 3600 {
			if m, ok := metas[h]; h < c.hour && (!ok || m.counts[mpsaas.UsageFlagged].MeterRecords == 0) {
				continue
			}
			for k := range hourShards {
				err := s.pages(ctx, &ddb.QueryInput{TableName: s.table(), ConsistentRead: aws.Bool(true),
					KeyConditionExpression: aws.String("pk = :p"), FilterExpression: aws.String("#st = :f AND attribute_not_exists(#to)"),
					ExpressionAttributeNames:  map[string]string{"#st": "st", "#to": "to"},
					ExpressionAttributeValues: map[string]types.AttributeValue{":p": sv(fmt.Sprintf("u#%d#%d", h, k)), ":f": sv(mpsaas.UsageFlagged)}},
					func(it map[string]types.AttributeValue) error { flagged = append(flagged, it); return nil })
				if err != nil {
					return 0, err
				}
			}
		}
	} else {
		want := map[int64]bool{}
		for _, id := range ids {
			want[id] = true
		}
		res := &resolver{s: s, items: map[itemKey]map[string]types.AttributeValue{}}
		seen := map[itemKey]bool{}
		shards := map[int]bool{}
		for _, id := range ids {
			shards[int(id>>40)] = true
		}
		for k := range shards {
			err := s.ledgerParts(ctx, k, int64(k)<<40-1, func(_ string, rows []ledgerRow) error {
				for _, r := range rows {
					if !want[r.ID] {
						continue
					}
					fk, it, err := res.final(ctx, itemKey{r.Sub, r.Dim, r.MeterHour})
					if err != nil {
						return err
					}
					if it != nil && getS(it, "st") == mpsaas.UsageFlagged && !seen[fk] {
						seen[fk] = true
						flagged = append(flagged, it)
					}
				}
				return nil
			})
			if err != nil {
				return 0, err
			}
		}
	}
	moved := 0
	for _, it := range flagged {
		n, err := s.moveItem(ctx, it, hour.Unix(), c)
		if err != nil {
			return moved, err
		}
		moved += n
	}
	return moved, nil
}

// moveItem moves a flagged item's usage into the buyer's item of hour to
// (or the first later hour whose item is not sealed), in one transaction
// that marks the flagged item moved and, if its hour is folded, takes its
// counts out of the hour mark.
func (s *HourStore) moveItem(ctx context.Context, it map[string]types.AttributeValue, to int64, c cursor) (int, error) {
	k := keyOfItem(it)
	n, q, bq := getN(it, "n"), getN(it, "q"), getN(it, "bq")
	metas, err := s.metas(ctx, k.hour, k.hour)
	if err != nil {
		return 0, err
	}
	adds, sets := map[string]types.AttributeValue{}, map[string]types.AttributeValue{}
	for name, v := range it {
		switch {
		case strings.HasPrefix(name, "u:") || strings.HasPrefix(name, "r:"):
			adds[name] = v
		case strings.HasPrefix(name, "g:"):
			sets[name] = v
		}
	}
	for target := to; target < to+maxAheadHours*3600; target += 3600 {
		tx := []types.TransactWriteItem{
			{Update: &types.Update{TableName: s.table(), Key: k.key(), UpdateExpression: aws.String("SET #to = :to"),
				ConditionExpression:       aws.String("#st = :f AND attribute_not_exists(#to)"),
				ExpressionAttributeNames:  map[string]string{"#to": "to", "#st": "st"},
				ExpressionAttributeValues: map[string]types.AttributeValue{":to": nv(target), ":f": sv(mpsaas.UsageFlagged)}}},
			{Update: s.addToHour(itemKey{k.sub, k.dim, target}, q, n, adds, sets)},
		}
		if metas[k.hour].done {
			f := mpsaas.UsageFlagged
			tx = append(tx, types.TransactWriteItem{Update: &types.Update{TableName: s.table(), Key: hkey(metaPK, metaSK(k.hour)),
				UpdateExpression:          aws.String("ADD #r :r, #q :q, #m :m, #mq :mq"),
				ExpressionAttributeNames:  map[string]string{"#r": f + ":r", "#q": f + ":q", "#m": f + ":m", "#mq": f + ":mq"},
				ExpressionAttributeValues: map[string]types.AttributeValue{":r": nv(-n), ":q": nv(-q), ":m": nv(-1), ":mq": nv(-bq)}}})
		}
		_, err := s.client.TransactWriteItems(ctx, &ddb.TransactWriteItemsInput{TransactItems: tx})
		if err == nil {
			return int(n), nil
		}
		var tc *types.TransactionCanceledException
		if !errors.As(err, &tc) {
			return 0, fmt.Errorf("replay %s: %w", k.flat(), err)
		}
		if len(tc.CancellationReasons) > 0 && aws.ToString(tc.CancellationReasons[0].Code) == "ConditionalCheckFailed" {
			return 0, nil // replayed already
		}
		if len(tc.CancellationReasons) > 1 && aws.ToString(tc.CancellationReasons[1].Code) == "ConditionalCheckFailed" {
			continue // that hour's item is sealed: the next one
		}
		return 0, fmt.Errorf("replay %s: %w", k.flat(), err)
	}
	return 0, fmt.Errorf("replay %s: no open hour to move it to", k.flat())
}

// VerifyMetering checks, over the whole store, that every acknowledged
// record is in an item whose records and quantity are exactly the sum of
// the records in it, and that every billed record has a MeteringRecordId.
// It holds one entry per item in memory (a tool for `mpsaas meter
// verify`). A scoped check (after a metering pass) has nothing to check:
// an item's sums change only in the transaction that adds the record.
func (s *HourStore) VerifyMetering(ctx context.Context, scope mpsaas.VerifyScope, limit int) ([]mpsaas.MeterViolation, error) {
	if scope != (mpsaas.VerifyScope{}) {
		return nil, nil
	}
	type sum struct{ n, q int64 }
	sums := map[itemKey]*sum{}
	res := &resolver{s: s, items: map[itemKey]map[string]types.AttributeValue{}}
	var out []mpsaas.MeterViolation
	full := func() bool { return limit > 0 && len(out) >= limit }
	for k := 0; k < hourShards && !full(); k++ {
		err := s.ledgerParts(ctx, k, int64(k)<<40-1, func(_ string, rows []ledgerRow) error {
			if err := res.loadRows(ctx, rows); err != nil {
				return err
			}
			for _, r := range rows {
				fk, it, err := res.final(ctx, itemKey{r.Sub, r.Dim, r.MeterHour})
				if err != nil {
					return err
				}
				if it == nil {
					out = append(out, mpsaas.MeterViolation{Kind: mpsaas.ViolationSealedWithoutRecord, MeterKey: mpsaas.MeterKey{SubscriberKey: r.Sub, Dimension: r.Dim,
						Hour: time.Unix(fk.hour, 0).UTC()}, UsageIDs: []int64{r.ID}, Got: r.Quantity})
					continue
				}
				x := sums[fk]
				if x == nil {
					x = &sum{}
					sums[fk] = x
				}
				x.n++
				x.q += r.Quantity
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	keys := make([]itemKey, 0, len(sums))
	for k := range sums {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].flat() < keys[j].flat() })
	for _, k := range keys {
		if full() {
			break
		}
		it, x := res.items[k], sums[k]
		mk := mpsaas.MeterKey{SubscriberKey: k.sub, Dimension: k.dim, Hour: time.Unix(k.hour, 0).UTC()}
		var partQ int64
		for _, p := range itemParts(it) {
			partQ += p.q
		}
		if q := getN(it, "q"); q != x.q || getN(it, "n") != x.n || partQ != q {
			out = append(out, mpsaas.MeterViolation{Kind: mpsaas.ViolationSumMismatch, MeterKey: mk, Want: q, Got: x.q})
		}
		if getS(it, "st") == mpsaas.UsageBilled && getS(it, "mrid") == "" {
			out = append(out, mpsaas.MeterViolation{Kind: mpsaas.ViolationBilledWithoutID, MeterKey: mk})
		}
	}
	return out, nil
}

// parallel calls fn(0..n-1), at most workers at a time, and returns the
// first error (the calls not yet started are skipped).
func parallel(ctx context.Context, n, workers int, fn func(i int) error) error {
	if n == 0 {
		return nil
	}
	if workers <= 1 || n == 1 {
		for i := range n {
			if err := fn(i); err != nil {
				return err
			}
		}
		return nil
	}
	sem := make(chan struct{}, workers)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for i := range n {
		mu.Lock()
		stop := first != nil
		mu.Unlock()
		if stop || ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// ProductUsage returns the usage and billed quantity of each product in
// the done hours from..to (those whose records are all final and counted:
// the hour marks keep the totals, so this reads one item an hour).
func (s *HourStore) ProductUsage(ctx context.Context, from, to time.Time) ([]mpsaas.ProductHour, error) {
	metas, err := s.metas(ctx, mpsaas.Hour(from).Unix(), mpsaas.Hour(to).Unix())
	if err != nil {
		return nil, err
	}
	var out []mpsaas.ProductHour
	for h := mpsaas.Hour(from).Unix(); h <= to.Unix(); h += 3600 {
		m, ok := metas[h]
		if !ok || !m.done {
			continue
		}
		for _, code := range slices.Sorted(maps.Keys(m.products)) {
			p := m.products[code]
			out = append(out, mpsaas.ProductHour{ProductCode: code, Hour: time.Unix(h, 0).UTC(), Usage: p[0], Billed: p[1]})
		}
	}
	return out, nil
}

package dynamodb

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go/middleware"
)

// CapacityMeter counts what a client costs: the read and write units
// DynamoDB reports consumed (it asks for them on every call), requests by
// operation, and writes per partition key of each table and index, to find
// hot keys. Install it with Option; take a Snapshot before and after the
// work to measure. For `mpsaas bench dynamodb`; it keeps a counter per key
// written, so it is not for production.
type CapacityMeter struct {
	mu       sync.Mutex
	read     float64
	write    float64
	requests map[string]int64
	// writes per "table[/index]" per partition key value.
	writes map[string]map[string]int64
	// schema: partition key attribute of each table and of its indexes.
	schema map[string]tableKeys
	client *ddb.Client
}

type tableKeys struct {
	pk      string
	indexes map[string]string // index name -> partition key attribute
}

// NewCapacityMeter returns a meter; describe is a client for DescribeTable
// (the key schemas), usually one without the meter installed.
func NewCapacityMeter(describe *ddb.Client) *CapacityMeter {
	return &CapacityMeter{requests: map[string]int64{}, writes: map[string]map[string]int64{}, schema: map[string]tableKeys{}, client: describe}
}

// Option installs the meter on a client.
func (m *CapacityMeter) Option(o *ddb.Options) {
	o.APIOptions = append(o.APIOptions, func(s *middleware.Stack) error {
		return s.Initialize.Add(middleware.InitializeMiddlewareFunc("capacityMeter", m.handle), middleware.After)
	})
}

// Capacity is a snapshot of a meter.
type Capacity struct {
	ReadUnits, WriteUnits float64
	Requests              map[string]int64
	// HotKeys is, per table or index, the partition key that received the
	// most writes, its count and the table's total writes.
	HotKeys map[string]HotKey
}

// HotKey is the busiest partition key of a table or index.
type HotKey struct {
	Key           string
	Writes, Total int64
}

// Sub is what happened between an earlier snapshot and c (hot keys are
// those of c: they count from the meter's start).
func (c Capacity) Sub(earlier Capacity) Capacity {
	out := Capacity{ReadUnits: c.ReadUnits - earlier.ReadUnits, WriteUnits: c.WriteUnits - earlier.WriteUnits, Requests: map[string]int64{}, HotKeys: c.HotKeys}
	for k, v := range c.Requests {
		if d := v - earlier.Requests[k]; d != 0 {
			out.Requests[k] = d
		}
	}
	return out
}

// Snapshot reads the counters.
func (m *CapacityMeter) Snapshot() Capacity {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := Capacity{ReadUnits: m.read, WriteUnits: m.write, Requests: map[string]int64{}, HotKeys: map[string]HotKey{}}
	for k, v := range m.requests {
		c.Requests[k] = v
	}
	for t, keys := range m.writes {
		var hot HotKey
		for k, n := range keys {
			hot.Total += n
			if n > hot.Writes || (n == hot.Writes && k < hot.Key) {
				hot.Key, hot.Writes = k, n
			}
		}
		c.HotKeys[t] = hot
	}
	return c
}

// Reset forgets the per-key write counts (units and requests keep counting).
func (m *CapacityMeter) Reset() {
	m.mu.Lock()
	m.writes = map[string]map[string]int64{}
	m.mu.Unlock()
}

// String lists the hot keys, busiest share first.
func (c Capacity) String() string {
	names := make([]string, 0, len(c.HotKeys))
	for t := range c.HotKeys {
		names = append(names, t)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, t := range names {
		h := c.HotKeys[t]
		fmt.Fprintf(&b, "%s: %d of %d writes (%.1f%%) to key %q\n", t, h.Writes, h.Total, 100*float64(h.Writes)/float64(max(h.Total, 1)), h.Key)
	}
	return b.String()
}

func (m *CapacityMeter) handle(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
	op := middleware.GetOperationName(ctx)
	indexes := types.ReturnConsumedCapacityIndexes
	var writes []write
	switch p := in.Parameters.(type) {
	case *ddb.PutItemInput:
		p.ReturnConsumedCapacity = indexes
		writes = append(writes, write{aws.ToString(p.TableName), p.Item, nil})
	case *ddb.UpdateItemInput:
		p.ReturnConsumedCapacity = indexes
		writes = append(writes, write{aws.ToString(p.TableName), p.Key, setValues(p)})
	case *ddb.DeleteItemInput:
		p.ReturnConsumedCapacity = indexes
		writes = append(writes, write{aws.ToString(p.TableName), p.Key, nil})
	case *ddb.BatchWriteItemInput:
		p.ReturnConsumedCapacity = indexes
		for t, reqs := range p.RequestItems {
			for _, r := range reqs {
				if r.PutRequest != nil {
					writes = append(writes, write{t, r.PutRequest.Item, nil})
				} else if r.DeleteRequest != nil {
					writes = append(writes, write{t, r.DeleteRequest.Key, nil})
				}
			}
		}
	case *ddb.TransactWriteItemsInput:
		p.ReturnConsumedCapacity = indexes
		for _, it := range p.TransactItems {
			switch {
			case it.Put != nil:
				writes = append(writes, write{aws.ToString(it.Put.TableName), it.Put.Item, nil})
			case it.Update != nil:
				writes = append(writes, write{aws.ToString(it.Update.TableName), it.Update.Key, nil})
			case it.Delete != nil:
				writes = append(writes, write{aws.ToString(it.Delete.TableName), it.Delete.Key, nil})
			}
		}
	case *ddb.GetItemInput:
		p.ReturnConsumedCapacity = indexes
	case *ddb.BatchGetItemInput:
		p.ReturnConsumedCapacity = indexes
	case *ddb.QueryInput:
		p.ReturnConsumedCapacity = indexes
	case *ddb.ScanInput:
		p.ReturnConsumedCapacity = indexes
	case *ddb.TransactGetItemsInput:
		p.ReturnConsumedCapacity = indexes
	}
	for _, w := range writes {
		m.countWrite(ctx, w)
	}
	out, md, err := next.HandleInitialize(ctx, in)
	var consumed []types.ConsumedCapacity
	switch r := out.Result.(type) {
	case *ddb.PutItemOutput:
		consumed = one(r.ConsumedCapacity)
	case *ddb.UpdateItemOutput:
		consumed = one(r.ConsumedCapacity)
	case *ddb.DeleteItemOutput:
		consumed = one(r.ConsumedCapacity)
	case *ddb.GetItemOutput:
		consumed = one(r.ConsumedCapacity)
	case *ddb.QueryOutput:
		consumed = one(r.ConsumedCapacity)
	case *ddb.ScanOutput:
		consumed = one(r.ConsumedCapacity)
	case *ddb.BatchWriteItemOutput:
		consumed = r.ConsumedCapacity
	case *ddb.BatchGetItemOutput:
		consumed = r.ConsumedCapacity
	case *ddb.TransactWriteItemsOutput:
		consumed = r.ConsumedCapacity
	case *ddb.TransactGetItemsOutput:
		consumed = r.ConsumedCapacity
	}
	if tx, ok := in.Parameters.(*ddb.TransactWriteItemsInput); ok {
		// DynamoDB charges 2 write units per KB of every item a transaction
		// writes or checks (whether it commits or is cancelled); DynamoDB
		// Local reports far less, so the meter works it out from the items.
		consumed = []types.ConsumedCapacity{{CapacityUnits: aws.Float64(m.transactUnits(ctx, tx))}}
	}
	isWrite := strings.HasPrefix(op, "Put") || strings.HasPrefix(op, "Update") || strings.HasPrefix(op, "Delete") ||
		op == "BatchWriteItem" || op == "TransactWriteItems"
	m.mu.Lock()
	m.requests[op]++
	for _, c := range consumed {
		u := aws.ToFloat64(c.CapacityUnits)
		if isWrite {
			m.write += u
		} else {
			m.read += u
		}
	}
	m.mu.Unlock()
	// A conditional write that fails still consumes write units, but
	// DynamoDB does not return them with the error: count one unit for it.
	if err != nil && isWrite && len(consumed) == 0 && strings.Contains(err.Error(), "ConditionalCheckFailed") {
		m.mu.Lock()
		m.write++
		m.mu.Unlock()
	}
	return out, md, err
}

// transactUnits is what a transaction costs: 2 units per KB (rounded up)
// of each item, as large as it is after the transaction (items only grow
// in mpsaas's transactions).
func (m *CapacityMeter) transactUnits(ctx context.Context, tx *ddb.TransactWriteItemsInput) float64 {
	var units float64
	for _, it := range tx.TransactItems {
		var table *string
		var key map[string]types.AttributeValue
		switch {
		case it.Put != nil:
			units += 2 * kb(itemSize(it.Put.Item))
			continue
		case it.Update != nil:
			table, key = it.Update.TableName, it.Update.Key
		case it.Delete != nil:
			table, key = it.Delete.TableName, it.Delete.Key
		case it.ConditionCheck != nil:
			table, key = it.ConditionCheck.TableName, it.ConditionCheck.Key
		}
		size := itemSize(key)
		if out, err := m.client.GetItem(ctx, &ddb.GetItemInput{TableName: table, Key: key, ConsistentRead: aws.Bool(true)}); err == nil && out.Item != nil {
			size = itemSize(out.Item)
		}
		units += 2 * kb(size)
	}
	return units
}

func kb(size int) float64 { return float64(max(1, (size+1023)/1024)) }

// itemSize is an item's size as DynamoDB counts it: names and values.
func itemSize(item map[string]types.AttributeValue) int {
	n := 0
	for name, v := range item {
		n += len(name) + valueSize(v)
	}
	return n
}

func valueSize(v types.AttributeValue) int {
	switch a := v.(type) {
	case *types.AttributeValueMemberS:
		return len(a.Value)
	case *types.AttributeValueMemberN:
		return (len(strings.TrimLeft(a.Value, "-0"))+1)/2 + 1
	case *types.AttributeValueMemberB:
		return len(a.Value)
	case *types.AttributeValueMemberL:
		n := 3
		for _, e := range a.Value {
			n += 1 + valueSize(e)
		}
		return n
	case *types.AttributeValueMemberM:
		return 3 + itemSize(a.Value) + len(a.Value)
	case *types.AttributeValueMemberSS:
		n := 0
		for _, e := range a.Value {
			n += len(e)
		}
		return n
	case *types.AttributeValueMemberNS:
		n := 0
		for _, e := range a.Value {
			n += (len(e)+1)/2 + 1
		}
		return n
	default:
		return 1
	}
}

func one(c *types.ConsumedCapacity) []types.ConsumedCapacity {
	if c == nil {
		return nil
	}
	return []types.ConsumedCapacity{*c}
}

type write struct {
	table string
	item  map[string]types.AttributeValue
	// set are the attributes an update sets to a value (index keys it may
	// move the item to).
	set map[string]types.AttributeValue
}

var setClause = regexp.MustCompile(`([#\w]+)\s*=\s*(:\w+)`)

// setValues reads "SET a = :v" assignments of an update (an
// approximation: enough to see which index partition an update writes).
func setValues(p *ddb.UpdateItemInput) map[string]types.AttributeValue {
	expr := aws.ToString(p.UpdateExpression)
	out := map[string]types.AttributeValue{}
	for _, m := range setClause.FindAllStringSubmatch(expr, -1) {
		name := m[1]
		if n, ok := p.ExpressionAttributeNames[name]; ok {
			name = n
		}
		if v, ok := p.ExpressionAttributeValues[m[2]]; ok {
			out[name] = v
		}
	}
	return out
}

func (m *CapacityMeter) keysOf(ctx context.Context, table string) tableKeys {
	m.mu.Lock()
	k, ok := m.schema[table]
	m.mu.Unlock()
	if ok {
		return k
	}
	k = tableKeys{indexes: map[string]string{}}
	if out, err := m.client.DescribeTable(ctx, &ddb.DescribeTableInput{TableName: aws.String(table)}); err == nil {
		for _, e := range out.Table.KeySchema {
			if e.KeyType == types.KeyTypeHash {
				k.pk = aws.ToString(e.AttributeName)
			}
		}
		for _, g := range out.Table.GlobalSecondaryIndexes {
			for _, e := range g.KeySchema {
				if e.KeyType == types.KeyTypeHash {
					k.indexes[aws.ToString(g.IndexName)] = aws.ToString(e.AttributeName)
				}
			}
		}
	}
	m.mu.Lock()
	m.schema[table] = k
	m.mu.Unlock()
	return k
}

func (m *CapacityMeter) countWrite(ctx context.Context, w write) {
	k := m.keysOf(ctx, w.table)
	m.mu.Lock()
	defer m.mu.Unlock()
	add := func(name string, v types.AttributeValue) {
		if v == nil {
			return
		}
		if m.writes[name] == nil {
			m.writes[name] = map[string]int64{}
		}
		m.writes[name][attrString(v)]++
	}
	add(w.table, w.item[k.pk])
	for idx, attr := range k.indexes {
		v := w.item[attr]
		if sv, ok := w.set[attr]; ok {
			v = sv
		}
		add(w.table+"/"+idx, v)
	}
}

func attrString(v types.AttributeValue) string {
	switch a := v.(type) {
	case *types.AttributeValueMemberS:
		return a.Value
	case *types.AttributeValueMemberN:
		return a.Value
	default:
		return fmt.Sprintf("%T", v)
	}
}

// Package dynamodb implements the mpsaas stores on Amazon DynamoDB, in the
// tables of the AWS sample stack so that sellers can migrate in place:
//
//   - Subscribers (default AWSMarketplaceSubscribers), partition key
//     customerIdentifier, with the sample's attributes (productCode,
//     companyName, contactPerson, contactPhone, contactEmail, created,
//     successfully_subscribed, subscription_expired,
//     is_free_trial_term_present, entitlement, CustomerAWSAccountId) and
//     mpsaas's own (licenseArn, licenseId, status, access, version, ...).
//     Buyers of products with no CustomerIdentifier are stored under
//     "license:<license id>".
//   - Events (default MpsaasEvents): subscription events by id, with indexes
//     on customerIdentifier, licenseId and agreementId for correlation.
//   - Outbox (default MpsaasOutbox): access changes per channel until delivered.
//
// Every state change is a conditional write: a subscriber is saved only if
// its version is still the one that was read, so concurrent Lambdas never
// lose an update.
package dynamodb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/mpsaas/mpsaas"
)

// Tables names the tables.
type Tables struct {
	Subscribers string
	Events      string
	Outbox      string
	// MeterHours is the metering table (HourStore, docs/dynamodb.md): usage
	// per buyer, dimension and hour, requests, batches, progress, the lease.
	MeterHours string
}

// DefaultTables are the sample stack's subscriber table and mpsaas's own.
func DefaultTables() Tables {
	return Tables{Subscribers: "AWSMarketplaceSubscribers", Events: "MpsaasEvents", Outbox: "MpsaasOutbox",
		MeterHours: "MpsaasMeterHours"}
}

// Index names.
const (
	indexLicense   = "licenseId-index"
	indexCI        = "customerIdentifier-index"
	indexAgreement = "agreementId-index"
	indexDue       = "pending-due-index"
	indexOutbox    = "outboxPending-index"
	// indexEnding holds only buyers whose subscription is ending or ended
	// (attribute ending), by their last event: the meter's flushing reads
	// the recent ones instead of scanning every buyer.
	indexEnding = "ending-index"
	indexLinked = "linkedAccountId-index"
)

// Store is the DynamoDB store.
type Store struct {
	client *ddb.Client
	tables Tables
	Now    func() time.Time
	// Retention, when positive, is how long items that are done are kept:
	// the idempotency keys of usage requests, delivered access changes and
	// finished BatchMeterUsage batches get a "ttl" attribute (epoch
	// seconds) that DynamoDB's time to live deletes them at. Usage, meter
	// records, subscribers and events (whose fold is the subscriber's
	// state) are kept. A usage request resent with the same key after its
	// key expired is taken as new.
	Retention time.Duration
}

// TTLAttribute is the attribute DynamoDB's time to live reads.
const TTLAttribute = "ttl"

// expiry is the ttl value of an item done at t (0: none).
func (s *Store) expiry(t time.Time) int64 {
	if s.Retention <= 0 {
		return 0
	}
	return t.Add(s.Retention).Unix()
}

var (
	_ mpsaas.SubscriberStore = (*Store)(nil)
	_ mpsaas.Outbox          = (*Store)(nil)
)

// New returns a store on client.
func New(client *ddb.Client, tables Tables) *Store {
	return &Store{client: client, tables: tables, Now: func() time.Time { return time.Now().UTC() }}
}

// CreateTables creates the tables and their indexes if they do not exist
// (for tests, local use and `mpsaas` tooling; the SAM template creates them
// on AWS).
func (s *Store) CreateTables(ctx context.Context) error {
	str := func(n string) types.AttributeDefinition {
		return types.AttributeDefinition{AttributeName: aws.String(n), AttributeType: types.ScalarAttributeTypeS}
	}
	num := func(n string) types.AttributeDefinition {
		return types.AttributeDefinition{AttributeName: aws.String(n), AttributeType: types.ScalarAttributeTypeN}
	}
	hash := func(n string) []types.KeySchemaElement {
		return []types.KeySchemaElement{{AttributeName: aws.String(n), KeyType: types.KeyTypeHash}}
	}
	gsi := func(name string, keys []types.KeySchemaElement) types.GlobalSecondaryIndex {
		return types.GlobalSecondaryIndex{IndexName: aws.String(name), KeySchema: keys, Projection: &types.Projection{ProjectionType: types.ProjectionTypeAll}}
	}
	if err := s.createTables(ctx, []*ddb.CreateTableInput{
		{
			TableName:              aws.String(s.tables.Subscribers),
			AttributeDefinitions:   subscriberAttributes(),
			KeySchema:              hash("customerIdentifier"),
			GlobalSecondaryIndexes: subscriberIndexes(),
		},
		{
			TableName:            aws.String(s.tables.Events),
			AttributeDefinitions: []types.AttributeDefinition{str("id"), str("customerIdentifier"), str("licenseId"), str("agreementId")},
			KeySchema:            hash("id"),
			GlobalSecondaryIndexes: []types.GlobalSecondaryIndex{
				gsi(indexCI, hash("customerIdentifier")),
				gsi(indexLicense, hash("licenseId")),
				gsi(indexAgreement, hash("agreementId")),
			},
		},
		{
			TableName:            aws.String(s.tables.Outbox),
			AttributeDefinitions: []types.AttributeDefinition{str("id"), str("pending"), num("nextAttemptAt")},
			KeySchema:            hash("id"),
			GlobalSecondaryIndexes: []types.GlobalSecondaryIndex{
				gsi(indexDue, []types.KeySchemaElement{
					{AttributeName: aws.String("pending"), KeyType: types.KeyTypeHash},
					{AttributeName: aws.String("nextAttemptAt"), KeyType: types.KeyTypeRange},
				}),
			},
		},
	}); err != nil {
		return err
	}
	if s.tables.MeterHours == "" {
		return nil // a store without metering
	}
	return s.createHoursTable(ctx)
}

func (s *Store) createTables(ctx context.Context, inputs []*ddb.CreateTableInput) error {
	for _, in := range inputs {
		in.BillingMode = types.BillingModePayPerRequest
		if _, err := s.client.CreateTable(ctx, in); err != nil {
			var inUse *types.ResourceInUseException
			if errors.As(err, &inUse) {
				continue
			}
			return fmt.Errorf("create table %s: %w", aws.ToString(in.TableName), err)
		}
		w := ddb.NewTableExistsWaiter(s.client, func(o *ddb.TableExistsWaiterOptions) { o.MinDelay = 50 * time.Millisecond; o.MaxDelay = time.Second })
		if err := w.Wait(ctx, &ddb.DescribeTableInput{TableName: in.TableName}, 2*time.Minute); err != nil {
			return fmt.Errorf("wait for table %s: %w", aws.ToString(in.TableName), err)
		}
		if s.expires(aws.ToString(in.TableName)) {
			if _, err := s.client.UpdateTimeToLive(ctx, &ddb.UpdateTimeToLiveInput{TableName: in.TableName,
				TimeToLiveSpecification: &types.TimeToLiveSpecification{AttributeName: aws.String(TTLAttribute), Enabled: aws.Bool(true)}}); err != nil {
				return fmt.Errorf("time to live of table %s: %w", aws.ToString(in.TableName), err)
			}
		}
	}
	return nil
}

// expires reports whether table has items that expire (template.yaml
// enables time to live on the same tables).
func (s *Store) expires(table string) bool {
	return table == s.tables.Outbox || table == s.tables.MeterHours
}

// subscriberIndexes are the indexes mpsaas adds to the subscribers table
// (the sample stack's has none): buyers by license id, subscribers with
// access changes not yet copied to the outbox, buyers by the seller's
// account id they are linked to, and ending buyers by their last event.
func subscriberIndexes() []types.GlobalSecondaryIndex {
	var out []types.GlobalSecondaryIndex
	for _, ix := range [][3]string{{indexLicense, "licenseId"}, {indexOutbox, "outboxPending"}, {indexLinked, "linkedAccountId"}, {indexEnding, "ending", "lastEventAt"}} {
		keys := []types.KeySchemaElement{{AttributeName: aws.String(ix[1]), KeyType: types.KeyTypeHash}}
		if ix[2] != "" {
			keys = append(keys, types.KeySchemaElement{AttributeName: aws.String(ix[2]), KeyType: types.KeyTypeRange})
		}
		out = append(out, types.GlobalSecondaryIndex{IndexName: aws.String(ix[0]), Projection: &types.Projection{ProjectionType: types.ProjectionTypeAll},
			KeySchema: keys})
	}
	return out
}

// subscriberAttributes are the subscribers table's key attributes (the
// table's and its indexes').
func subscriberAttributes() []types.AttributeDefinition {
	out := []types.AttributeDefinition{{AttributeName: aws.String("customerIdentifier"), AttributeType: types.ScalarAttributeTypeS}}
	for _, ix := range subscriberIndexes() {
		for _, k := range ix.KeySchema {
			typ := types.ScalarAttributeTypeS
			if aws.ToString(k.AttributeName) == "lastEventAt" {
				typ = types.ScalarAttributeTypeN
			}
			out = append(out, types.AttributeDefinition{AttributeName: k.AttributeName, AttributeType: typ})
		}
	}
	return out
}

// attributesOf are the definitions of an index's key attributes.
func attributesOf(ix types.GlobalSecondaryIndex) []types.AttributeDefinition {
	var out []types.AttributeDefinition
	for _, d := range subscriberAttributes() {
		for _, k := range ix.KeySchema {
			if aws.ToString(k.AttributeName) == aws.ToString(d.AttributeName) {
				out = append(out, d)
			}
		}
	}
	return out
}

// SubscriberIndexNames are the names of the subscribers table's indexes
// (template.yaml must declare the same).
func SubscriberIndexNames() []string {
	var out []string
	for _, ix := range subscriberIndexes() {
		out = append(out, aws.ToString(ix.IndexName))
	}
	return out
}

// PrepareSubscribersTable adds the indexes mpsaas needs to an existing
// subscribers table (the sample stack's, when a seller migrates and keeps
// it), one at a time, waiting for each to become active; it reports each
// step to progress and returns the indexes it added. Existing items are
// kept; DynamoDB fills the new indexes from them.
func (s *Store) PrepareSubscribersTable(ctx context.Context, progress io.Writer) ([]string, error) {
	var added []string
	for _, ix := range subscriberIndexes() {
		name := aws.ToString(ix.IndexName)
		desc, err := s.client.DescribeTable(ctx, &ddb.DescribeTableInput{TableName: aws.String(s.tables.Subscribers)})
		if err != nil {
			return added, fmt.Errorf("subscribers table %s: %w", s.tables.Subscribers, err)
		}
		if pk := keyAttr(desc.Table.KeySchema); pk != "customerIdentifier" {
			return added, fmt.Errorf("subscribers table %s: its partition key is %q, not the sample stack's customerIdentifier", s.tables.Subscribers, pk)
		}
		if hasIndex(desc.Table, name) {
			fmt.Fprintf(progress, "%s: index %s exists\n", s.tables.Subscribers, name)
			continue
		}
		create := &types.CreateGlobalSecondaryIndexAction{IndexName: ix.IndexName, KeySchema: ix.KeySchema, Projection: ix.Projection}
		if desc.Table.BillingModeSummary == nil || desc.Table.BillingModeSummary.BillingMode != types.BillingModePayPerRequest {
			// A provisioned table needs the index's throughput: the table's.
			if pt := desc.Table.ProvisionedThroughput; pt != nil && aws.ToInt64(pt.ReadCapacityUnits) > 0 {
				create.ProvisionedThroughput = &types.ProvisionedThroughput{ReadCapacityUnits: pt.ReadCapacityUnits, WriteCapacityUnits: pt.WriteCapacityUnits}
			}
		}
		fmt.Fprintf(progress, "%s: adding index %s...\n", s.tables.Subscribers, name)
		if _, err := s.client.UpdateTable(ctx, &ddb.UpdateTableInput{TableName: aws.String(s.tables.Subscribers),
			AttributeDefinitions:        attributesOf(ix),
			GlobalSecondaryIndexUpdates: []types.GlobalSecondaryIndexUpdate{{Create: create}}}); err != nil {
			return added, fmt.Errorf("add index %s to %s: %w", name, s.tables.Subscribers, err)
		}
		for wait := time.Second; ; wait = min(2*wait, 15*time.Second) {
			desc, err := s.client.DescribeTable(ctx, &ddb.DescribeTableInput{TableName: aws.String(s.tables.Subscribers)})
			if err != nil {
				return added, fmt.Errorf("subscribers table %s: %w", s.tables.Subscribers, err)
			}
			if indexActive(desc.Table, name) {
				break
			}
			fmt.Fprintf(progress, "%s: index %s is being built from the existing items...\n", s.tables.Subscribers, name)
			if err := sleepCtx(ctx, wait); err != nil {
				return added, err
			}
		}
		added = append(added, name)
	}
	return added, nil
}

func keyAttr(ks []types.KeySchemaElement) string {
	for _, k := range ks {
		if k.KeyType == types.KeyTypeHash {
			return aws.ToString(k.AttributeName)
		}
	}
	return ""
}

func hasIndex(t *types.TableDescription, name string) bool {
	for _, g := range t.GlobalSecondaryIndexes {
		if aws.ToString(g.IndexName) == name {
			return true
		}
	}
	return false
}

func indexActive(t *types.TableDescription, name string) bool {
	for _, g := range t.GlobalSecondaryIndexes {
		if aws.ToString(g.IndexName) == name {
			return g.IndexStatus == types.IndexStatusActive && !aws.ToBool(g.Backfilling)
		}
	}
	return false
}

// Attribute helpers.

func sv(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }
func nv(v int64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
}
func bv(v bool) types.AttributeValue { return &types.AttributeValueMemberBOOL{Value: v} }

// putS sets a string attribute unless it is empty (DynamoDB index keys may
// not be empty strings, and absent attributes keep items out of indexes).
func putS(item map[string]types.AttributeValue, name, v string) {
	if v != "" {
		item[name] = sv(v)
	}
}

func getS(item map[string]types.AttributeValue, name string) string {
	if v, ok := item[name].(*types.AttributeValueMemberS); ok {
		return v.Value
	}
	return ""
}

func getN(item map[string]types.AttributeValue, name string) int64 {
	if v, ok := item[name].(*types.AttributeValueMemberN); ok {
		n, _ := strconv.ParseInt(v.Value, 10, 64)
		return n
	}
	return 0
}

func getB(item map[string]types.AttributeValue, name string) bool {
	if v, ok := item[name].(*types.AttributeValueMemberBOOL); ok {
		return v.Value
	}
	return false
}

func timeN(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromN(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// isConditionFailed reports whether err is a failed condition check.
func isConditionFailed(err error) bool {
	var ccf *types.ConditionalCheckFailedException
	return errors.As(err, &ccf)
}

package dynamodb

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// SampleMeteringIndex is the sample stack's index of pending metering records.
const SampleMeteringIndex = "PendingMeteringRecordsIndex"

// SampleMeteringTable reads the sample stack's metering records table
// (default AWSMarketplaceMeteringRecords: partition key customerIdentifier,
// sort key create_timestamp), where existing SaaS applications write their
// usage as {"customerIdentifier", "create_timestamp", "dimension_usage":
// [{"dimension", "value"}], "metering_pending": "true"}.
type SampleMeteringTable struct {
	Client *ddb.Client
	Table  string
}

// SampleItem is one pending item of the sample table, as plain JSON (the
// format POST /v1/usage/sample-stack accepts) and its key.
type SampleItem struct {
	CustomerIdentifier string
	CreateTimestamp    int64
	JSON               []byte
}

// Pending returns the items still marked metering_pending = "true".
func (t *SampleMeteringTable) Pending(ctx context.Context) ([]SampleItem, error) {
	p := ddb.NewQueryPaginator(t.Client, &ddb.QueryInput{
		TableName: aws.String(t.Table), IndexName: aws.String(SampleMeteringIndex),
		KeyConditionExpression:    aws.String("metering_pending = :t"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":t": sv("true")},
	})
	var out []SampleItem
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("pending sample metering records: %w", err)
		}
		for _, it := range page.Items {
			plain, err := json.Marshal(plainValue(&types.AttributeValueMemberM{Value: it}))
			if err != nil {
				return nil, err
			}
			out = append(out, SampleItem{CustomerIdentifier: getS(it, "customerIdentifier"), CreateTimestamp: getN(it, "create_timestamp"), JSON: plain})
		}
	}
	return out, nil
}

// Done records an item's fate the way the sample stack does: the item
// leaves the pending index and gets metering_failed and metering_response.
func (t *SampleMeteringTable) Done(ctx context.Context, it SampleItem, failed bool, response string) error {
	_, err := t.Client.UpdateItem(ctx, &ddb.UpdateItemInput{
		TableName: aws.String(t.Table),
		Key: map[string]types.AttributeValue{
			"customerIdentifier": sv(it.CustomerIdentifier), "create_timestamp": nv(it.CreateTimestamp),
		},
		UpdateExpression:          aws.String("SET metering_failed = :f, metering_response = :r REMOVE metering_pending"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":f": bv(failed), ":r": sv(response)},
	})
	if err != nil {
		return fmt.Errorf("mark sample metering record %s/%d: %w", it.CustomerIdentifier, it.CreateTimestamp, err)
	}
	return nil
}

// plainValue converts a DynamoDB attribute value to plain JSON values.
func plainValue(v types.AttributeValue) any {
	switch x := v.(type) {
	case *types.AttributeValueMemberS:
		return x.Value
	case *types.AttributeValueMemberN:
		return json.Number(x.Value)
	case *types.AttributeValueMemberBOOL:
		return x.Value
	case *types.AttributeValueMemberL:
		out := make([]any, len(x.Value))
		for i, e := range x.Value {
			out[i] = plainValue(e)
		}
		return out
	case *types.AttributeValueMemberM:
		out := make(map[string]any, len(x.Value))
		for k, e := range x.Value {
			out[k] = plainValue(e)
		}
		return out
	case *types.AttributeValueMemberNULL:
		return nil
	}
	return fmt.Sprint(v)
}

// Create creates the sample stack's table and index (for
// tests and fresh installs; the SAM template does it on AWS).
func (t *SampleMeteringTable) Create(ctx context.Context) error {
	s := &Store{client: t.Client}
	return s.createTables(ctx, []*ddb.CreateTableInput{{
		TableName: aws.String(t.Table),
		AttributeDefinitions: []types.AttributeDefinition{
			{AttributeName: aws.String("customerIdentifier"), AttributeType: types.ScalarAttributeTypeS},
			{AttributeName: aws.String("create_timestamp"), AttributeType: types.ScalarAttributeTypeN},
			{AttributeName: aws.String("metering_pending"), AttributeType: types.ScalarAttributeTypeS},
		},
		KeySchema: []types.KeySchemaElement{
			{AttributeName: aws.String("customerIdentifier"), KeyType: types.KeyTypeHash},
			{AttributeName: aws.String("create_timestamp"), KeyType: types.KeyTypeRange},
		},
		GlobalSecondaryIndexes: []types.GlobalSecondaryIndex{{
			IndexName:  aws.String(SampleMeteringIndex),
			KeySchema:  []types.KeySchemaElement{{AttributeName: aws.String("metering_pending"), KeyType: types.KeyTypeHash}},
			Projection: &types.Projection{ProjectionType: types.ProjectionTypeAll},
		}},
	}})
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// fakeDynamoDB answers DescribeTable and UpdateTable for one table, the
// way DynamoDB does when an index is added: the index is CREATING and
// backfilling for a while, then ACTIVE. (DynamoDB Local cannot add an
// index to an existing table: its later requests fail.)
type fakeDynamoDB struct {
	mu      sync.Mutex
	table   string
	pk      string
	indexes map[string]int // name -> DescribeTable calls left before ACTIVE
	updates []string       // "index:attribute" of each UpdateTable
}

func (f *fakeDynamoDB) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var in struct {
		TableName                   string
		AttributeDefinitions        []struct{ AttributeName, AttributeType string }
		GlobalSecondaryIndexUpdates []struct {
			Create struct {
				IndexName string
				KeySchema []struct{ AttributeName, KeyType string }
			}
		}
	}
	_ = json.NewDecoder(r.Body).Decode(&in)
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	if in.TableName != f.table {
		w.WriteHeader(400)
		fmt.Fprint(w, `{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException","message":"Requested resource not found"}`)
		return
	}
	switch op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "DynamoDB_20120810."); op {
	case "UpdateTable":
		for _, u := range in.GlobalSecondaryIndexUpdates {
			// DynamoDB wants a definition of each key attribute, no more.
			defined := map[string]bool{}
			for _, d := range in.AttributeDefinitions {
				defined[d.AttributeName] = true
			}
			match := len(in.AttributeDefinitions) == len(u.Create.KeySchema)
			for _, k := range u.Create.KeySchema {
				match = match && defined[k.AttributeName]
			}
			if !match {
				w.WriteHeader(400)
				fmt.Fprint(w, `{"__type":"com.amazon.coral.validate#ValidationException","message":"attribute definitions do not match"}`)
				return
			}
			f.indexes[u.Create.IndexName] = 2
			f.updates = append(f.updates, u.Create.IndexName+":"+u.Create.KeySchema[0].AttributeName)
		}
		fmt.Fprint(w, `{"TableDescription":{}}`)
	case "DescribeTable":
		var gsis []string
		for name, left := range f.indexes {
			status, backfilling := "ACTIVE", false
			if left > 0 {
				status, backfilling = "CREATING", true
				f.indexes[name] = left - 1
			}
			gsis = append(gsis, fmt.Sprintf(`{"IndexName":%q,"IndexStatus":%q,"Backfilling":%v}`, name, status, backfilling))
		}
		fmt.Fprintf(w, `{"Table":{"TableName":%q,"KeySchema":[{"AttributeName":%q,"KeyType":"HASH"}],"BillingModeSummary":{"BillingMode":"PAY_PER_REQUEST"},"GlobalSecondaryIndexes":[%s]}}`,
			f.table, f.pk, strings.Join(gsis, ","))
	default:
		w.WriteHeader(400)
		fmt.Fprintf(w, `{"__type":"com.amazon.coral.service#UnknownOperationException","message":"%s"}`, op)
	}
}

// TestDynamoDBPrepare (issue 8): a seller keeps the sample stack's
// subscribers table (no indexes): "mpsaas dynamodb prepare" adds the two
// indexes mpsaas queries, one at a time, waits until each is built, and a
// second run changes nothing. A table with another key is refused.
func TestDynamoDBPrepare(t *testing.T) {
	ctx := context.Background()
	fake := &fakeDynamoDB{table: "AWSMarketplaceSubscribers", pk: "customerIdentifier", indexes: map[string]int{}}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	env := func(string) string { return "" }
	var out strings.Builder
	args := []string{"dynamodb", "prepare", "--subscribers-table", "AWSMarketplaceSubscribers", "--endpoint", srv.URL}
	if err := run(ctx, args, env, &out, io.Discard); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if got := fmt.Sprint(fake.updates); got != "[licenseId-index:licenseId outboxPending-index:outboxPending linkedAccountId-index:linkedAccountId ending-index:ending]" {
		t.Errorf("indexes added: %s", got)
	}
	for _, want := range []string{"adding index licenseId-index", "being built", "added licenseId-index, outboxPending-index, linkedAccountId-index, ending-index"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := run(ctx, args, env, &out, io.Discard); err != nil || !strings.Contains(out.String(), "nothing to add") || len(fake.updates) != 4 {
		t.Errorf("second run: %v, %d updates\n%s", err, len(fake.updates), out.String())
	}
	fake.pk = "id"
	if err := run(ctx, args, env, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "partition key") {
		t.Errorf("a table keyed by id: %v", err)
	}
	if err := run(ctx, []string{"dynamodb", "prepare", "--endpoint", srv.URL}, env, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "--subscribers-table") {
		t.Errorf("no table: %v", err)
	}
	if err := run(ctx, []string{"dynamodb", "frobnicate"}, env, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "prepare") {
		t.Errorf("unknown subcommand: %v", err)
	}
}

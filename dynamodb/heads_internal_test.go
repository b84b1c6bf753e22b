package dynamodb

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/mpsaas/mpsaas"
)

// TestBatchHeads: looking for due batches reads the heads of pending
// batches, not every batch item of the hour. A retry moves the head's next
// attempt; a batch's head goes when the batch ends; a head whose batch ended or was never written (a crash
// between the two writes) is dropped by the next look. A table metered by a
// version without heads keeps its pending batches found: buckets before
// the first one trusted to have heads (two hours on) are read whole.
func TestBatchHeads(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 2, 10, 30, 0, 0, time.UTC)
	st := newLocalStore(t, "Heads")
	st.Now = func() time.Time { return now }
	hs := NewHourStore(st)
	rec := func(sub string) []mpsaas.MeterRecord {
		return []mpsaas.MeterRecord{{SubscriberKey: sub, Dimension: "users", Hour: mpsaas.Hour(now).Add(-time.Hour), Quantity: 1,
			CustomerAWSAccountID: "111122223333", LicenseArn: "arn:aws:license-manager::1:license:l-" + sub}}
	}
	heads := func() []int64 {
		t.Helper()
		var ids []int64
		out, err := hs.client.Scan(ctx, &ddb.ScanInput{TableName: hs.table(), ConsistentRead: aws.Bool(true),
			FilterExpression: aws.String("begins_with(pk, :d)"), ExpressionAttributeValues: map[string]types.AttributeValue{":d": sv("d#")}})
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range out.Items {
			ids = append(ids, getN(it, "id"))
		}
		slices.Sort(ids)
		return ids
	}
	due := func() []int64 {
		t.Helper()
		bs, err := hs.DueBatches(ctx, now, 100)
		if err != nil {
			t.Fatal(err)
		}
		var ids []int64
		for _, b := range bs {
			ids = append(ids, b.ID)
		}
		slices.Sort(ids)
		return ids
	}
	sorted := func(ids ...int64) []int64 { slices.Sort(ids); return ids }

	a, err := hs.putBatch(ctx, rec("A"), now)
	if err != nil {
		t.Fatal(err)
	}
	b, err := hs.putBatch(ctx, rec("B"), now)
	if err != nil {
		t.Fatal(err)
	}
	if got := heads(); !slices.Equal(got, sorted(a, b)) {
		t.Fatalf("heads %v, want %v", got, sorted(a, b))
	}
	if got := due(); !slices.Equal(got, sorted(a, b)) {
		t.Errorf("due %v, want %v", got, sorted(a, b))
	}
	if err := hs.endBatch(ctx, a, "done", now); err != nil {
		t.Fatal(err)
	}
	if got := heads(); !slices.Equal(got, []int64{b}) {
		t.Errorf("heads after batch %d ended: %v, want only %d", a, got, b)
	}
	// A retry: the head carries the batch's next attempt, so the batch is
	// not due before it (its attempts are counted on the batch).
	if err := hs.FinishBatches(ctx, []mpsaas.BatchOutcome{{BatchID: b, Retry: now.Add(5 * time.Minute), LastError: "throttled"}}); err != nil {
		t.Fatal(err)
	}
	if got := due(); len(got) != 0 {
		t.Errorf("due before the retry: %v, want none", got)
	}
	now = now.Add(5 * time.Minute)
	if bs, err := hs.DueBatches(ctx, now, 100); err != nil || len(bs) != 1 || bs[0].ID != b || bs[0].Attempts != 1 {
		t.Errorf("due at the retry: %+v, %v; want batch %d on attempt 1", bs, err, b)
	}
	// Stale heads: one whose batch ended (a crash before the head was
	// deleted), one whose batch was never written.
	stale := a + 1
	for _, id := range []int64{a, stale} {
		if _, err := hs.client.PutItem(ctx, &ddb.PutItemInput{TableName: hs.table(), Item: map[string]types.AttributeValue{
			"pk": sv(headPK(id)), "sk": sv(batchSK(id)), "id": nv(id), "next": nv(timeN(now))}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := due(); !slices.Equal(got, []int64{b}) {
		t.Errorf("due with stale heads: %v, want only %d", got, b)
	}
	if got := heads(); !slices.Equal(got, []int64{b}) {
		t.Errorf("heads after the look: %v, want the stale ones dropped", got)
	}

	// A table from a version without heads: its cursor has none, and its
	// pending batch no head.
	if _, err := hs.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: hs.table(), Key: hkey(metaPK, cursorSK),
		UpdateExpression: aws.String("REMOVE heads")}); err != nil {
		t.Fatal(err)
	}
	old, err := hs.putBatch(ctx, rec("C"), now)
	if err != nil {
		t.Fatal(err)
	}
	if err := hs.dropHead(ctx, old); err != nil {
		t.Fatal(err)
	}
	if got := due(); !slices.Equal(got, sorted(b, old)) {
		t.Errorf("due after the upgrade: %v, want %v (the batch without a head too)", got, sorted(b, old))
	}
	c, err := hs.readCursor(ctx)
	if err != nil || c.heads != mpsaas.Hour(now).Add(2*time.Hour).Unix() {
		t.Errorf("cursor %+v, %v; want heads trusted from 12:00", c, err)
	}
	// Two hours on, the old batch's bucket is still read whole while the
	// cursor has not passed it.
	now = now.Add(2 * time.Hour)
	if got := due(); !slices.Contains(got, old) {
		t.Errorf("due two hours on: %v, want the old batch %d", got, old)
	}
}

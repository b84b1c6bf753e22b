package dynamodb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// The metering lease: one item of the meter table ("m" / "lease"). A metering run
// (or replay) takes it with a conditional write that succeeds only when
// nobody holds it or the holder's lease has expired, so two meter
// invocations never overlap, even when the function's reserved concurrency
// is changed or someone invokes it by hand. It expires on its own: a run
// whose Lambda invocation was cut off frees it at most leaseSlack after
// the invocation's deadline.
// leaseNoDeadline is the lease of a holder without a deadline; it is
// renewed every third of it while held.
const leaseNoDeadline = 2 * time.Minute

// leaseItem is the table and key of the lease item.
func (s *Store) leaseItem() (string, map[string]types.AttributeValue) {
	return s.tables.MeterHours, hkey(metaPK, "lease")
}

// leaseSlack is how long past its holder's deadline a lease lasts (a
// variable for tests).
var leaseSlack = 30 * time.Second

// LockMetering takes the metering lease, waiting (until ctx is done) while
// another run holds it. epoch counts every taking of the lease.
func (s *Store) LockMetering(ctx context.Context) (unlock func(), epoch int64, err error) {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	owner := hex.EncodeToString(b)
	until := func() time.Time {
		if dl, ok := ctx.Deadline(); ok {
			return dl.Add(leaseSlack)
		}
		return time.Now().Add(leaseNoDeadline)
	}
	table, key := s.leaseItem()
	wait := 50 * time.Millisecond
	for {
		// The lease is judged by wall time, not the store's clock (a test
		// clock may stand still or jump): it is about real processes.
		now := time.Now()
		out, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: aws.String(table), Key: key,
			UpdateExpression: aws.String("SET #o = :o, expiresAt = :exp, epoch = if_not_exists(epoch, :zero) + :one"),
			// "Or it is mine": when DynamoDB took the lease but its answer was
			// lost, the SDK's retry finds this run's own owner id.
			ConditionExpression:      aws.String("attribute_not_exists(#o) OR expiresAt < :now OR #o = :o"),
			ExpressionAttributeNames: map[string]string{"#o": "owner"},
			ExpressionAttributeValues: map[string]types.AttributeValue{":o": sv(owner), ":exp": nv(until().UnixMilli()), ":now": nv(now.UnixMilli()),
				":zero": nv(0), ":one": nv(1)},
			ReturnValues: types.ReturnValueAllNew})
		if err == nil {
			epoch = getN(out.Attributes, "epoch")
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() { // renew a lease without a deadline while it is held
				defer close(done)
				if _, ok := ctx.Deadline(); ok {
					return
				}
				t := time.NewTicker(leaseNoDeadline / 3)
				defer t.Stop()
				for {
					select {
					case <-stop:
						return
					case <-t.C:
						_, _ = s.client.UpdateItem(context.WithoutCancel(ctx), &ddb.UpdateItemInput{TableName: aws.String(table), Key: key,
							UpdateExpression: aws.String("SET expiresAt = :exp"), ConditionExpression: aws.String("#o = :o"),
							ExpressionAttributeNames:  map[string]string{"#o": "owner"},
							ExpressionAttributeValues: map[string]types.AttributeValue{":o": sv(owner), ":exp": nv(until().UnixMilli())}})
					}
				}
			}()
			unlock = func() {
				close(stop)
				<-done
				// Only the holder frees it; a failure leaves it to expire.
				_, _ = s.client.UpdateItem(context.WithoutCancel(ctx), &ddb.UpdateItemInput{TableName: aws.String(table), Key: key,
					UpdateExpression: aws.String("REMOVE #o, expiresAt"), ConditionExpression: aws.String("#o = :o"),
					ExpressionAttributeNames:  map[string]string{"#o": "owner"},
					ExpressionAttributeValues: map[string]types.AttributeValue{":o": sv(owner)}})
			}
			return unlock, epoch, nil
		}
		if !isConditionFailed(err) {
			return nil, 0, fmt.Errorf("metering lease: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("metering lease: another run is metering: %w", ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// HeartbeatMark is the end of the last completed heartbeat pass: every
// buyer then subscribed has its hourly zero records for the hours before
// it (zero time: none yet). It lives in the lease item.
func (s *Store) HeartbeatMark(ctx context.Context) (time.Time, error) {
	table, key := s.leaseItem()
	out, err := s.client.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(table), ConsistentRead: aws.Bool(true),
		Key: key, ProjectionExpression: aws.String("heartbeatsTo")})
	if err != nil {
		return time.Time{}, fmt.Errorf("heartbeat mark: %w", err)
	}
	if n := getN(out.Item, "heartbeatsTo"); n > 0 {
		return time.Unix(n, 0).UTC(), nil
	}
	return time.Time{}, nil
}

// SetHeartbeatMark records the end of a completed heartbeat pass.
func (s *Store) SetHeartbeatMark(ctx context.Context, end time.Time) error {
	table, key := s.leaseItem()
	_, err := s.client.UpdateItem(ctx, &ddb.UpdateItemInput{TableName: aws.String(table),
		Key: key, UpdateExpression: aws.String("SET heartbeatsTo = :h"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":h": nv(end.Unix())}})
	if err != nil {
		return fmt.Errorf("heartbeat mark: %w", err)
	}
	return nil
}

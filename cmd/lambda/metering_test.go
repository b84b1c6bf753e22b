package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/smithy-go/logging"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/subscription"
)

// TestMeteringFaultsThroughLambda meters usage with the meter function's
// handler on DynamoDB Local while the emulator throttles, fails before and
// after processing, delays and leaves records unprocessed, while 10% of the
// meter's DynamoDB requests fail (half of them after DynamoDB applied them:
// a lost response the SDK retries), and while invocations are cut off at
// random moments (a Lambda timeout). Every (buyer, dimension, hour) must be
// billed exactly the ingested quantity.
func TestMeteringFaultsThroughLambda(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t,
		emulator.Product{Code: "fault-legacy", Type: emulator.ProductSubscription, Dimensions: []emulator.Dimension{{Name: "users"}, {Name: "requests"}}},
		emulator.Product{Code: "fault-license", Type: emulator.ProductSubscription, LicenseBased: true, Dimensions: []emulator.Dimension{{Name: "users"}, {Name: "requests"}}},
	)
	em, store := f.em, f.store
	faults := &dynamoFaults{rng: rand.New(rand.NewPCG(7, 9)), rate: 0.1}
	// The SDK retries as in production, with short waits (faults are many).
	fastRetries := awsconfig.WithRetryer(func() aws.Retryer {
		return retry.NewStandard(func(o *retry.StandardOptions) { o.Backoff = retry.NewExponentialJitterBackoff(20 * time.Millisecond) })
	})
	// (The SDK's warnings about the injected answers are not wanted here.)
	app := f.build(t, "meter", awsconfig.WithHTTPClient(faults), fastRetries, awsconfig.WithLogger(logging.Nop{}))
	app.meter.MaxBackoff = time.Millisecond // retries are due by the next invocation
	var emf lockedBuffer
	app.metrics.W = &emf

	// 30 buyers, registered through the subscription workflow on DynamoDB.
	subs := &subscription.Service{Store: store, Marketplace: app.svc.Marketplace, Listing: mpsaas.ListingSubscriptions}
	var keys []string
	account := map[string]string{}
	for i := 0; i < 30; i++ {
		b, err := em.AddBuyer(emulator.Buyer{})
		if err != nil {
			t.Fatal(err)
		}
		res, err := em.Subscribe(emulator.SubscribeOptions{StartedAt: em.Clock.Now().Add(-24 * time.Hour), ProductCode: []string{"fault-legacy", "fault-license"}[i%2], BuyerAccountID: b.AccountID})
		if err != nil {
			t.Fatal(err)
		}
		sub, err := subs.RegisterWithToken(ctx, res.Token, mpsaas.Contact{CompanyName: "C", ContactPerson: "P", ContactPhone: "+1 555 0100", ContactEmail: "p@c.example"})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, sub.Key)
		account[sub.Key] = b.AccountID
	}
	// 1,500 usage records over three closed hours.
	rng := rand.New(rand.NewPCG(3, 5))
	ingest := &metering.Service{Store: store, Subscribers: store}
	want := map[string]int64{}
	var recs []mpsaas.Usage
	for i := 0; i < 1500; i++ {
		k := keys[rng.IntN(len(keys))]
		dim := []string{"users", "requests"}[rng.IntN(2)]
		ts := mpsaas.Hour(time.Now()).Add(-time.Duration(2+rng.IntN(3)) * time.Hour).Add(time.Duration(rng.IntN(3600)) * time.Second)
		q := int64(rng.IntN(50))
		recs = append(recs, mpsaas.Usage{Customer: k, Dimension: dim, Quantity: q, Time: ts})
		want[fmt.Sprintf("%s/%s/%d", account[k], dim, mpsaas.Hour(ts).Unix())] += q
	}
	for i := 0; i < len(recs); i += 500 {
		if _, err := ingest.Ingest(ctx, mpsaas.UsageRequest{IdempotencyKey: fmt.Sprint("load-", i), Records: recs[i : i+500]}); err != nil {
			t.Fatal(err)
		}
	}
	em.Faults.Seed(11)
	for _, f := range []emulator.Fault{
		{Operation: "BatchMeterUsage", Error: "ThrottlingException", Rate: 0.15},
		{Operation: "BatchMeterUsage", Error: "InternalServiceErrorException", Rate: 0.1, AfterProcessing: true},
		{Operation: "BatchMeterUsage", Error: "ServiceUnavailable", Rate: 0.05},
		{Operation: "BatchMeterUsage", Latency: emulator.Duration(20 * time.Millisecond), Rate: 0.2},
		{Operation: "BatchMeterUsage", UnprocessedRate: 0.05},
	} {
		if err := em.Faults.Add(f); err != nil {
			t.Fatal(err)
		}
	}
	handler := app.handler().(func(context.Context, events.EventBridgeEvent) error)
	cutoffs, failed := 0, 0
	for invocation := 0; invocation < 200; invocation++ {
		ictx, cancel := context.WithCancel(ctx)
		if invocation < 8 { // the first invocations time out at random moments
			time.AfterFunc(time.Duration(50+rng.IntN(400))*time.Millisecond, cancel)
		}
		err := handler(ictx, events.EventBridgeEvent{DetailType: "Scheduled Event"})
		cancel()
		switch {
		case errors.Is(err, context.Canceled) || (err != nil && strings.Contains(err.Error(), "context canceled")):
			cutoffs++
		case err != nil && strings.Contains(err.Error(), injectedFault):
			failed++ // DynamoDB failed after the SDK's retries: the next invocation carries on
		case err != nil:
			t.Fatalf("invocation %d: %v", invocation, err)
		}
		more, err := app.meter.Outstanding(ctx)
		for err != nil && strings.Contains(err.Error(), injectedFault) {
			more, err = app.meter.Outstanding(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		if !more && invocation >= 8 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	vs, err := app.meter.Verify(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Errorf("metering invariant: %s", v)
	}
	got := map[string]int64{}
	resent, answers := 0, 0
	for _, b := range em.Billed("") {
		answers += b.Calls // every call AWS answered for the key (a resend after a lost answer is one more)
		k := fmt.Sprintf("%s/%s/%d", b.BuyerAccountID, b.Dimension, b.Hour.Unix())
		if _, dup := got[k]; dup {
			t.Errorf("%s billed twice", k)
		}
		got[k] = b.Quantity
		if b.Calls > 1 {
			resent++
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("billed %d keys, ingested %d keys; they differ:\n got %v\nwant %v", len(got), len(want), got, want)
	}
	// Every run reported its metrics in EMF; none found a violation, and
	// what they say was billed adds up.
	var runs, billedRecords int64
	for _, line := range strings.Split(strings.TrimSpace(emf.String()), "\n") {
		var m struct {
			Function                    string
			MeteringInvariantViolations *int64
			MeterRecordsBilled          int64
			MeteringLagSeconds          *int64
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil || m.Function != "meter" || (m.MeteringInvariantViolations == nil) == (m.MeteringLagSeconds == nil) {
			t.Fatalf("EMF line %q: %v", line, err)
		}
		if m.MeteringLagSeconds != nil {
			continue // the invocation's lag line
		}
		if *m.MeteringInvariantViolations != 0 {
			t.Errorf("a run reported %d violations", *m.MeteringInvariantViolations)
		}
		runs++
		billedRecords += m.MeterRecordsBilled
	}
	// MeterRecordsBilled counts AWS's Success answers: a key resent after
	// a lost answer or a store failure is counted again, never more often
	// than AWS answered for it.
	if runs == 0 || billedRecords > int64(answers) {
		t.Errorf("EMF: %d runs reported %d billed records; AWS answered %d times for %d keys", runs, billedRecords, answers, len(got))
	}
	requests, before, after := faults.counts()
	if share := float64(before+after) / float64(max(requests, 1)); share < 0.09 || after == 0 {
		t.Errorf("DynamoDB faults: %d before and %d after processing in %d requests; want about 10%%, some after", before, after, requests)
	}
	t.Logf("lambda metering under faults: %d usage records, %d keys billed exactly, %d invocations cut off, %d failed, %d BatchMeterUsage calls, %d keys resent and deduplicated; DynamoDB: %d requests, %d failed before and %d after processing",
		len(recs), len(got), cutoffs, failed, em.Calls()["BatchMeterUsage"], resent, requests, before, after)
}

const injectedFault = "injected fault"

// dynamoFaults is an HTTP client that fails a share of DynamoDB requests
// with a 500 (which the SDK retries): half before sending them, half after
// DynamoDB answered (the request took effect, the answer is lost).
type dynamoFaults struct {
	mu                      sync.Mutex
	rng                     *rand.Rand
	rate                    float64
	requests, before, after int
}

func (d *dynamoFaults) counts() (requests, before, after int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.requests, d.before, d.after
}

func (d *dynamoFaults) Do(req *http.Request) (*http.Response, error) {
	if !strings.HasPrefix(req.Header.Get("X-Amz-Target"), "DynamoDB_") {
		return http.DefaultClient.Do(req)
	}
	d.mu.Lock()
	d.requests++
	fault, first := d.rng.Float64() < d.rate, d.rng.IntN(2) == 0
	if fault && first {
		d.before++
	} else if fault {
		d.after++
	}
	d.mu.Unlock()
	fail := func() *http.Response {
		body := `{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"` + injectedFault + `"}`
		return &http.Response{StatusCode: 500, Status: "500 Internal Server Error", Header: http.Header{"Content-Type": {"application/x-amz-json-1.0"},
			"X-Amz-Crc32": {strconv.FormatUint(uint64(crc32.ChecksumIEEE([]byte(body))), 10)}},
			Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Request: req}
	}
	if fault && first {
		return fail(), nil
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil || !fault {
		return resp, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return fail(), nil
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

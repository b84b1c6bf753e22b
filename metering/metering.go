// Package metering is the usage workflow: ingest usage records with
// idempotency keys, aggregate them per buyer, dimension and usage hour, and
// send them to AWS Marketplace with BatchMeterUsage so that usage is never
// lost and never billed twice.
//
// Exactly-once effect rests on three rules:
//  1. Aggregation ("sealing") fixes a meter record's quantity and hour once,
//     in one transaction; later usage for that hour goes to a later open hour.
//  2. A batch is stored, with its exact records and timestamps, before the
//     call; after a crash the same records are sent again, and AWS's per-hour
//     dedupe answers Success with the original MeteringRecordId.
//  3. A record leaves its batch only with AWS's final answer for it; throttling,
//     5xx, timeouts and UnprocessedRecords keep it for a retry with backoff.
package metering

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mpsaas/mpsaas"
)

// Subscribers finds the buyers usage is reported for.
type Subscribers interface {
	GetSubscriber(ctx context.Context, key string) (*mpsaas.Subscriber, error)
	FindSubscriber(ctx context.Context, id mpsaas.Identity) (*mpsaas.Subscriber, error)
}

// Service runs ingestion and metering. Set the fields, then use it.
type Service struct {
	Store       mpsaas.MeterStore
	Subscribers Subscribers
	Meterer     mpsaas.Meterer
	Clock       mpsaas.Clock
	Logger      *slog.Logger
	// Listing is the TypeOfSaaSListing. Contracts bill only usage above the
	// entitlement of a dimension.
	Listing string
	// HeartbeatDimension, when set, gets a zero-quantity record every hour
	// for every subscribed buyer with no record of it (AWS requires hourly
	// records for every subscription customer).
	HeartbeatDimension string
	// SealGrace is how long after an hour ends usage for it is still
	// collected before it is sealed (default 5 minutes).
	SealGrace time.Duration
	// Concurrency is how many BatchMeterUsage calls run at once (default 4).
	Concurrency int
	// MaxBackoff caps the retry delay of a batch (default 5 minutes).
	MaxBackoff time.Duration

	mu sync.Mutex // one metering run at a time

	// customers caches customer → subscriber key: the mapping never changes.
	customers sync.Map
	cached    atomic.Int64
}

// maxCachedCustomers bounds the customer cache (about 100 bytes an entry).
const maxCachedCustomers = 500000

func (s *Service) now() time.Time {
	if s.Clock == nil {
		return time.Now().UTC()
	}
	return s.Clock.Now().UTC()
}

func (s *Service) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// MaxRecordsPerRequest bounds one ingestion request.
const MaxRecordsPerRequest = 10000

// Ingest validates and stores a usage request. A retried request with the
// same idempotency key is counted once; the key reused with other records
// is a conflict. Every record must name a known buyer.
func (s *Service) Ingest(ctx context.Context, req mpsaas.UsageRequest) (mpsaas.UsageReceipt, error) {
	if n := len(req.IdempotencyKey); n < 1 || n > 256 {
		return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.EINVALID, "idempotencyKey is required (1 to 256 characters)")
	}
	if len(req.Records) == 0 || len(req.Records) > MaxRecordsPerRequest {
		return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.EINVALID, "a request carries 1 to %d records (got %d)", MaxRecordsPerRequest, len(req.Records))
	}
	now := s.now()
	rows := make([]mpsaas.UsageRow, len(req.Records))
	keys := map[string]string{}
	for i, u := range req.Records {
		if err := u.Validate(now); err != nil {
			return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.EINVALID, "record %d: %s", i+1, mpsaas.ErrorMessage(err))
		}
		key, ok := keys[u.Customer]
		if !ok {
			if v, hit := s.customers.Load(u.Customer); hit {
				key = v.(string)
			} else {
				sub, err := s.findSubscriber(ctx, u.Customer)
				if err != nil {
					if mpsaas.ErrorCode(err) == mpsaas.ENOTFOUND {
						return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.EINVALID, "record %d: unknown customer %q", i+1, u.Customer)
					}
					return mpsaas.UsageReceipt{}, err
				}
				key = sub.Key
				if s.cached.Load() < maxCachedCustomers {
					s.customers.Store(u.Customer, key)
					s.cached.Add(1)
				}
			}
			keys[u.Customer] = key
		}
		rows[i] = mpsaas.UsageRow{SubscriberKey: key, Dimension: u.Dimension, Quantity: u.Quantity, Time: u.Time.UTC(), TagSig: mpsaas.TagSignature(u.Tags)}
	}
	return s.Store.AddUsage(ctx, req.IdempotencyKey, req.Hash(), rows, mpsaas.Hour(now), now)
}

// findSubscriber accepts a subscriber key, a CustomerIdentifier, or a
// license ARN or id.
func (s *Service) findSubscriber(ctx context.Context, customer string) (*mpsaas.Subscriber, error) {
	sub, err := s.Subscribers.GetSubscriber(ctx, customer)
	if mpsaas.ErrorCode(err) != mpsaas.ENOTFOUND {
		return sub, err
	}
	id := mpsaas.Identity{CustomerIdentifier: customer}
	if lid := mpsaas.LicenseID(customer); lid != "" {
		id = mpsaas.Identity{LicenseID: lid}
	}
	return s.Subscribers.FindSubscriber(ctx, id)
}

// RunResult summarizes one metering run.
type RunResult struct {
	Sealed      int `json:"sealed"`      // meter records created from usage
	Heartbeats  int `json:"heartbeats"`  // zero records added
	Batches     int `json:"batches"`     // batches created
	Calls       int `json:"calls"`       // BatchMeterUsage calls made
	Billed      int `json:"billed"`      // records AWS accepted
	Rejected    int `json:"rejected"`    // records AWS refused for good
	Flagged     int `json:"flagged"`     // records that need the seller
	Retrying    int `json:"retrying"`    // batches waiting for a retry
	Unprocessed int `json:"unprocessed"` // records AWS returned unprocessed
}

// Run seals closed hours (and the usage of cancelling buyers), adds the
// hourly zero records, creates batches and sends every due batch.
func (s *Service) Run(ctx context.Context) (RunResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var res RunResult
	var err error
	if res.Sealed, err = s.seal(ctx); err != nil {
		return res, err
	}
	if res.Heartbeats, err = s.heartbeats(ctx); err != nil {
		return res, err
	}
	if res.Batches, err = s.Store.CreateBatches(ctx, s.now()); err != nil {
		return res, err
	}
	err = s.send(ctx, &res)
	return res, err
}

func (s *Service) sealBefore() time.Time {
	grace := s.SealGrace
	if grace == 0 {
		grace = 5 * time.Minute
	}
	return mpsaas.Hour(s.now().Add(-grace))
}

// seal aggregates pending usage into meter records, a chunk at a time.
func (s *Service) seal(ctx context.Context) (int, error) {
	flush, err := s.flushing(ctx)
	if err != nil {
		return 0, err
	}
	const chunk = 20000
	total := 0
	for {
		readUpTo, err := s.Store.MaxUsageID(ctx)
		if err != nil {
			return total, err
		}
		groups, err := s.Store.PendingUsage(ctx, s.sealBefore(), flush, chunk)
		if err != nil {
			return total, err
		}
		if len(groups) == 0 {
			return total, nil
		}
		full := len(groups) == chunk
		if full {
			// The last key may continue in the next chunk: leave it for then.
			last := groups[len(groups)-1]
			cut := len(groups)
			for cut > 0 && sameKey(groups[cut-1], last) {
				cut--
			}
			if cut > 0 {
				groups = groups[:cut]
			}
		}
		aggs, err := s.aggregate(ctx, groups)
		if err != nil {
			return total, err
		}
		if err := s.Store.Seal(ctx, aggs, readUpTo, mpsaas.Hour(s.now())); err != nil {
			return total, err
		}
		total += len(aggs)
		if !full {
			return total, nil
		}
	}
}

func sameKey(a, b mpsaas.UsageGroup) bool {
	return a.SubscriberKey == b.SubscriberKey && a.Dimension == b.Dimension && a.Hour.Equal(b.Hour)
}

// flushing returns buyers whose subscription is ending: their usage is sealed
// and sent at once, even for the current hour, so the final usage reaches
// AWS within the final metering window.
func (s *Service) flushing(ctx context.Context) ([]string, error) {
	subs, err := s.Store.ActiveSubscribers(ctx, []mpsaas.Status{mpsaas.StatusUnsubscribePending, mpsaas.StatusCancelled, mpsaas.StatusFailed})
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, sub := range subs {
		if sub.Status == mpsaas.StatusUnsubscribePending || s.now().Sub(sub.LastEventAt) < 2*mpsaas.FinalMeteringWindow {
			keys = append(keys, sub.Key)
		}
	}
	return keys, nil
}

// aggregate turns usage groups into meter records: one per (buyer,
// dimension, hour), with allocations by tag set, contract entitlements
// deducted, and the buyer identity AWS expects.
func (s *Service) aggregate(ctx context.Context, groups []mpsaas.UsageGroup) ([]mpsaas.Aggregate, error) {
	subs := map[string]*mpsaas.Subscriber{}
	var aggs []mpsaas.Aggregate
	for i := 0; i < len(groups); {
		j := i + 1
		for j < len(groups) && sameKey(groups[i], groups[j]) {
			j++
		}
		gs := groups[i:j]
		i = j
		g := gs[0]
		sub, ok := subs[g.SubscriberKey]
		if !ok {
			var err error
			sub, err = s.Subscribers.GetSubscriber(ctx, g.SubscriberKey)
			if err != nil && mpsaas.ErrorCode(err) != mpsaas.ENOTFOUND {
				return nil, err
			}
			subs[g.SubscriberKey] = sub
		}
		rec := mpsaas.MeterRecord{SubscriberKey: g.SubscriberKey, Dimension: g.Dimension, Hour: g.Hour, State: mpsaas.UsageSealed}
		var total int64
		alloc := map[string]int64{}
		tagged := false
		for _, x := range gs {
			total += x.Quantity
			alloc[x.TagSig] += x.Quantity
			if x.TagSig != "" {
				tagged = true
			}
		}
		rec.Quantity = total
		if tagged {
			rec.Allocations = alloc
		}
		switch {
		case sub == nil:
			rec.State, rec.Reason = mpsaas.UsageFlagged, "unknown subscriber"
		default:
			s.identify(&rec, sub)
			if rec.CustomerIdentifier == "" && (rec.CustomerAWSAccountID == "" || rec.LicenseArn == "") {
				rec.State, rec.Reason = mpsaas.UsageFlagged, "subscriber has neither a CustomerIdentifier nor a CustomerAWSAccountId with a LicenseArn"
			}
			s.deductEntitlement(&rec, sub)
		}
		if rec.State == mpsaas.UsageSealed && rec.Quantity > mpsaas.MaxQuantity {
			rec.State, rec.Reason = mpsaas.UsageFlagged, fmt.Sprintf("hourly quantity %d exceeds AWS's maximum of %d", rec.Quantity, mpsaas.MaxQuantity)
		}
		aggs = append(aggs, mpsaas.Aggregate{Record: rec, Groups: gs})
	}
	return aggs, nil
}

// identify sets the buyer identity: CustomerIdentifier + ProductCode for
// legacy listings, CustomerAWSAccountId + LicenseArn otherwise. A buyer
// always uses the same form, so one hour is never sent both ways.
func (s *Service) identify(rec *mpsaas.MeterRecord, sub *mpsaas.Subscriber) {
	rec.ProductCode = sub.ProductCode
	if sub.CustomerIdentifier != "" {
		rec.CustomerIdentifier = sub.CustomerIdentifier
		return
	}
	rec.CustomerAWSAccountID, rec.LicenseArn = sub.CustomerAWSAccountID, sub.LicenseArn
}

// deductEntitlement bills, for contracts, only the hour's usage above the
// contract's integer entitlement for the dimension. Tagged allocations are
// reduced in a fixed order: untagged first, then by tag set.
func (s *Service) deductEntitlement(rec *mpsaas.MeterRecord, sub *mpsaas.Subscriber) {
	if !mpsaas.IsContract(s.Listing) || rec.State != mpsaas.UsageSealed {
		return
	}
	var entitled int64
	for _, e := range sub.Entitlements {
		if e.Dimension != rec.Dimension {
			continue
		}
		switch v := e.Value.(type) {
		case int64:
			entitled = v
		case float64:
			entitled = int64(v)
		}
	}
	if entitled <= 0 {
		return
	}
	if rec.Quantity <= entitled {
		rec.State, rec.Quantity, rec.Allocations = mpsaas.UsageCovered, 0, nil
		rec.Reason = fmt.Sprintf("within the contract's entitlement of %d", entitled)
		return
	}
	rec.Quantity -= entitled
	if rec.Allocations == nil {
		return
	}
	sigs := make([]string, 0, len(rec.Allocations))
	for sig := range rec.Allocations {
		sigs = append(sigs, sig)
	}
	sort.Strings(sigs) // "" (untagged) sorts first
	left := entitled
	for _, sig := range sigs {
		d := min(left, rec.Allocations[sig])
		rec.Allocations[sig] -= d
		left -= d
		if rec.Allocations[sig] == 0 {
			delete(rec.Allocations, sig)
		}
	}
}

// heartbeats adds zero-quantity records for every subscribed buyer and
// closed hour (within AWS's window) that has no record of the heartbeat
// dimension.
func (s *Service) heartbeats(ctx context.Context) (int, error) {
	if s.HeartbeatDimension == "" {
		return 0, nil
	}
	subs, err := s.Store.ActiveSubscribers(ctx, []mpsaas.Status{mpsaas.StatusActive, mpsaas.StatusUnsubscribePending})
	if err != nil {
		return 0, err
	}
	now := s.now()
	end := s.sealBefore()
	earliest := mpsaas.Hour(now.Add(-mpsaas.MeteringWindow + time.Hour))
	var recs []mpsaas.MeterRecord
	added := 0
	for _, sub := range subs {
		start := mpsaas.Hour(sub.CreatedAt)
		if start.Before(earliest) {
			start = earliest
		}
		for h := start; h.Before(end); h = h.Add(time.Hour) {
			if !mpsaas.InMeteringWindow(h, now) {
				continue
			}
			rec := mpsaas.MeterRecord{SubscriberKey: sub.Key, Dimension: s.HeartbeatDimension, Hour: h}
			s.identify(&rec, sub)
			recs = append(recs, rec)
		}
		if len(recs) >= 10000 {
			n, err := s.Store.AddHeartbeats(ctx, recs)
			if err != nil {
				return added, err
			}
			added += n
			recs = recs[:0]
		}
	}
	n, err := s.Store.AddHeartbeats(ctx, recs)
	return added + n, err
}

// send makes the calls for every due batch, Concurrency at a time.
func (s *Service) send(ctx context.Context, res *RunResult) error {
	workers := s.Concurrency
	if workers <= 0 {
		workers = 4
	}
	var mu sync.Mutex
	for {
		batches, err := s.Store.DueBatches(ctx, s.now(), 200)
		if err != nil {
			return err
		}
		if len(batches) == 0 {
			return nil
		}
		jobs := make(chan mpsaas.MeterBatch)
		errc := make(chan error, workers)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for b := range jobs {
					var r RunResult
					if err := s.sendBatch(ctx, b, &r); err != nil {
						errc <- err
						return
					}
					mu.Lock()
					res.add(r)
					mu.Unlock()
				}
			})
		}
		var firstErr error
	feed:
		for _, b := range batches {
			select {
			case jobs <- b:
			case firstErr = <-errc:
				break feed
			case <-ctx.Done():
				firstErr = ctx.Err()
				break feed
			}
		}
		close(jobs)
		wg.Wait()
		close(errc)
		if firstErr == nil {
			firstErr = <-errc
		}
		if firstErr != nil {
			return firstErr
		}
	}
}

func (r *RunResult) add(o RunResult) {
	r.Calls += o.Calls
	r.Billed += o.Billed
	r.Rejected += o.Rejected
	r.Flagged += o.Flagged
	r.Retrying += o.Retrying
	r.Unprocessed += o.Unprocessed
}

// sendBatch makes one call and records what AWS said. It returns an error
// only when the store fails; AWS failures are recorded for a retry.
func (s *Service) sendBatch(ctx context.Context, b mpsaas.MeterBatch, res *RunResult) error {
	if len(b.Records) == 0 {
		return s.Store.FinishRecords(ctx, b.ID, nil)
	}
	res.Calls++
	out, err := s.Meterer.BatchMeterUsage(ctx, b.ProductCode, b.Records)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		code := mpsaas.AWSErrorCode(err)
		if mpsaas.ErrorCode(err) == mpsaas.EUNAVAILABLE || code == "" {
			// Throttling, 5xx, timeouts: the call may or may not have taken
			// effect; the identical resend is safe either way.
			res.Retrying++
			s.log().Warn("BatchMeterUsage failed; will retry", "batch", b.ID, "attempt", b.Attempts+1, "err", err)
			return s.Store.RetryBatch(ctx, b.ID, s.now().Add(s.backoff(b.Attempts+1)), err.Error())
		}
		// The whole batch was refused. Find the poison record by sending each
		// record alone; a single refused record is flagged for the seller.
		if len(b.Records) > 1 {
			s.log().Warn("BatchMeterUsage refused a batch; isolating records", "batch", b.ID, "code", code)
			return s.Store.SplitBatch(ctx, b.ID, s.now())
		}
		reason := fmt.Sprintf("%s: %s", code, mpsaas.ErrorMessage(err))
		if code == "TimestampOutOfBoundsException" {
			reason = "outside AWS's accepted time window (" + code + "). If this record was sent before, AWS may already have billed it: check before replaying."
		}
		res.Flagged++
		s.log().Error("usage record refused by AWS; flagged for the seller", "batch", b.ID, "meterRecord", b.Records[0].ID, "code", code)
		return s.Store.FinishRecords(ctx, b.ID, []mpsaas.RecordOutcome{{MeterRecordID: b.Records[0].ID, State: mpsaas.UsageFlagged, Reason: reason}})
	}
	outcomes := make([]mpsaas.RecordOutcome, 0, len(out.Results))
	for _, r := range out.Results {
		o := mpsaas.RecordOutcome{MeterRecordID: r.MeterRecordID, MeteringRecordID: r.MeteringRecordID, Response: r.Raw}
		switch r.Status {
		case "Success":
			o.State = mpsaas.UsageBilled
			res.Billed++
		case "CustomerNotSubscribed":
			o.State, o.Reason = mpsaas.UsageRejected, "CustomerNotSubscribed: the buyer has no active subscription"
			res.Rejected++
		case "DuplicateRecord":
			o.State, o.Reason = mpsaas.UsageFlagged, "DuplicateRecord: AWS already holds a different quantity for this buyer, dimension and hour (sent by another system?)"
			res.Flagged++
		default:
			o.State, o.Reason = mpsaas.UsageFlagged, "unknown status "+r.Status
			res.Flagged++
		}
		outcomes = append(outcomes, o)
	}
	if err := s.Store.FinishRecords(ctx, b.ID, outcomes); err != nil {
		return err
	}
	if len(out.Unprocessed) > 0 || len(outcomes) < len(b.Records) {
		res.Unprocessed += len(b.Records) - len(outcomes)
		res.Retrying++
		return s.Store.RetryBatch(ctx, b.ID, s.now().Add(s.backoff(b.Attempts+1)), fmt.Sprintf("%d records unprocessed", len(b.Records)-len(outcomes)))
	}
	return nil
}

// backoff is exponential with full jitter: a random delay in [0, min(cap, 1s·2^n)).
func (s *Service) backoff(attempt int) time.Duration {
	maxB := s.MaxBackoff
	if maxB == 0 {
		maxB = 5 * time.Minute
	}
	b := time.Second << min(attempt, 20)
	if b > maxB || b <= 0 {
		b = maxB
	}
	return time.Duration(rand.Int64N(int64(b))) + 100*time.Millisecond
}

// Outstanding reports whether sealed or batched records, or usage of closed
// hours, are still waiting to be sent.
func (s *Service) Outstanding(ctx context.Context) (bool, error) {
	sum, err := s.Store.MeterSummary(ctx)
	if err != nil {
		return false, err
	}
	if sum[mpsaas.UsageBatched].Records+sum[mpsaas.UsageSealed].Records > 0 {
		return true, nil
	}
	// Heartbeats have no usage rows: look at the batches too.
	batches, err := s.Store.DueBatches(ctx, s.now().Add(24*time.Hour), 1)
	if err != nil || len(batches) > 0 {
		return len(batches) > 0, err
	}
	groups, err := s.Store.PendingUsage(ctx, s.sealBefore(), nil, 1)
	return len(groups) > 0, err
}

// Replay moves flagged usage (all, or the given ledger ids) into the current
// open hour so the next run sends it again.
func (s *Service) Replay(ctx context.Context, ids []int64) (int, error) {
	return s.Store.Replay(ctx, ids, mpsaas.Hour(s.now()))
}

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
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

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
	// collected before it is sealed (default 5 minutes). Longer lets late
	// pipelines bill usage in the hour it happened; it delays every bill
	// by as much and leaves less of AWS's 24-hour window for retries.
	SealGrace time.Duration
	// Dimensions, when set, are the only dimensions usage may be reported
	// for (MPSAAS_DIMENSIONS): a typo is a 400 naming the valid ones, not
	// usage AWS refuses hours later.
	Dimensions []string
	// Products override Listing and Dimensions per product code (the
	// products file).
	Products map[string]mpsaas.Product
	// OnIngest, when set, hears of each ingestion request: the records
	// stored (0 for a replayed request) and the records refused (the whole
	// request, when it is invalid).
	OnIngest func(stored, refused int)
	// Concurrency is how many BatchMeterUsage calls run at once (default 4).
	Concurrency int
	// MaxBackoff caps the retry delay of a batch (default 5 minutes).
	MaxBackoff time.Duration

	mu sync.Mutex // one metering run at a time
	// lastSeal is the last seal pass that completed (nil: none to rely on)
	// and heartbeatsTo the end of the last heartbeat pass; both let an idle
	// run skip work an earlier run already did. Guarded by mu.
	lastSeal     *sealMark
	heartbeatsTo time.Time
	epoch        int64 // of the store's metering lock when this process last took it

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
	rec, err := s.ingest(ctx, req)
	if s.OnIngest != nil {
		switch {
		case err == nil && !rec.Replayed:
			s.OnIngest(rec.Accepted, 0)
		case mpsaas.ErrorCode(err) == mpsaas.EINVALID:
			s.OnIngest(0, len(req.Records))
		}
	}
	return rec, err
}

func (s *Service) ingest(ctx context.Context, req mpsaas.UsageRequest) (mpsaas.UsageReceipt, error) {
	if n := len(req.IdempotencyKey); n < 1 || n > 256 || !utf8.ValidString(req.IdempotencyKey) || strings.ContainsRune(req.IdempotencyKey, 0) {
		return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.EINVALID, "idempotencyKey is required (1 to 256 characters of valid UTF-8)")
	}
	if len(req.Records) == 0 || len(req.Records) > MaxRecordsPerRequest {
		return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.EINVALID, "a request carries 1 to %d records (got %d)", MaxRecordsPerRequest, len(req.Records))
	}
	now := s.now()
	rows := make([]mpsaas.UsageRow, len(req.Records))
	keys := map[string]customerRef{}
	for i, u := range req.Records {
		if err := u.Validate(now); err != nil {
			return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.EINVALID, "record %d: %s", i+1, mpsaas.ErrorMessage(err))
		}
		if len(s.Dimensions) > 0 && len(s.Products) == 0 && !slices.Contains(s.Dimensions, u.Dimension) {
			return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.EINVALID, "record %d: unknown dimension %q: the product's dimensions are %s", i+1, u.Dimension, strings.Join(s.Dimensions, ", "))
		}
		c, ok := keys[u.Customer]
		if !ok {
			if v, hit := s.customers.Load(u.Customer); hit {
				c = v.(customerRef)
			} else {
				sub, err := s.Subscriber(ctx, u.Customer)
				if err != nil {
					if mpsaas.ErrorCode(err) == mpsaas.ENOTFOUND {
						return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.EINVALID, "record %d: unknown customer %q", i+1, u.Customer)
					}
					return mpsaas.UsageReceipt{}, err
				}
				c = customerRef{key: sub.Key, product: sub.ProductCode}
				// A key, CustomerIdentifier or license always names the
				// same buyer; a linked account id may move to a new one.
				if named := sub.Key == u.Customer || sub.CustomerIdentifier == u.Customer || sub.LicenseArn == u.Customer; named && s.cached.Load() < maxCachedCustomers {
					s.customers.Store(u.Customer, c)
					s.cached.Add(1)
				}
			}
			keys[u.Customer] = c
		}
		if dims := s.dimensionsOf(c.product); len(s.Products) > 0 && len(dims) > 0 && !slices.Contains(dims, u.Dimension) {
			return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.EINVALID, "record %d: unknown dimension %q: the dimensions of product %s are %s", i+1, u.Dimension, c.product, strings.Join(dims, ", "))
		}
		rows[i] = mpsaas.UsageRow{SubscriberKey: c.key, Dimension: u.Dimension, Quantity: u.Quantity, Time: u.Time.UTC(), TagSig: mpsaas.TagSignature(u.Tags)}
	}
	return s.Store.AddUsage(ctx, req.IdempotencyKey, req.Hash(), rows, mpsaas.Hour(now), now)
}

// Subscriber finds the buyer usage names as customer: a subscriber key, a
// CustomerIdentifier, a license ARN or id, or the seller's account id the
// buyer is linked to.
func (s *Service) Subscriber(ctx context.Context, customer string) (*mpsaas.Subscriber, error) {
	sub, err := s.Subscribers.GetSubscriber(ctx, customer)
	if mpsaas.ErrorCode(err) != mpsaas.ENOTFOUND {
		return sub, err
	}
	id := mpsaas.Identity{CustomerIdentifier: customer}
	if lid := mpsaas.LicenseID(customer); lid != "" {
		id = mpsaas.Identity{LicenseID: lid}
	}
	sub, err = s.Subscribers.FindSubscriber(ctx, id)
	if mpsaas.ErrorCode(err) != mpsaas.ENOTFOUND {
		return sub, err
	}
	return s.linkedSubscriber(ctx, customer, err)
}

// LinkedLister is implemented by stores that find buyers by the seller's
// account id they were linked to (sign-up handoff).
type LinkedLister interface {
	LinkedSubscribers(ctx context.Context, accountID string) ([]*mpsaas.Subscriber, error)
}

// linkedSubscriber finds the buyer linked to the seller's account id: the
// one with access among them (the newest), when it is the only product the
// account is linked to; notFound otherwise.
func (s *Service) linkedSubscriber(ctx context.Context, accountID string, notFound error) (*mpsaas.Subscriber, error) {
	l, ok := s.Subscribers.(LinkedLister)
	if !ok {
		return nil, notFound
	}
	subs, err := l.LinkedSubscribers(ctx, accountID)
	if err != nil {
		return nil, err
	}
	var found *mpsaas.Subscriber
	for _, sub := range subs { // newest first
		if found != nil && sub.ProductCode != found.ProductCode {
			return nil, mpsaas.Errorf(mpsaas.EINVALID, "account %q is linked to subscriptions of several products; name the buyer by its subscriber key", accountID)
		}
		if found == nil {
			found = sub
		}
	}
	if found == nil {
		return nil, notFound
	}
	return found, nil
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
	// Violations of the metering invariant found in what this run sealed
	// (see mpsaas.MeterViolation); anything but 0 is a bug to report.
	Violations int `json:"violations"`
	// Paused: the run stopped its work before the deadline of a timed
	// invocation (RunWhileTime); everything done is kept and the next run
	// continues where it stopped.
	Paused bool `json:"paused,omitempty"`
}

// Run seals closed hours (and the usage of cancelling buyers), adds the
// hourly zero records, creates batches, sends every due batch, and checks
// the metering invariant on what it sealed. It reads the clock once for
// all its decisions about which hours are closed.
func (s *Service) Run(ctx context.Context) (RunResult, error) {
	return s.run(ctx, ctx)
}

// run is a metering run whose work (sealing, heartbeats, calls) stops
// when work is done; what it learnt from AWS is stored with ctx. A run
// whose work context ends while ctx has not is paused, not failed.
func (s *Service) run(work, ctx context.Context) (res RunResult, err error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return RunResult{}, err
	}
	defer unlock()
	defer func() {
		if err != nil && work.Err() != nil && ctx.Err() == nil {
			s.log().Info("metering run paused before the invocation's deadline; the next run continues", "sealed", res.Sealed, "calls", res.Calls)
			res.Paused, err = true, nil
		}
	}()
	now := s.now()
	for part := 0; ; part++ {
		// A store that seals a backlog a part at a time (scan.More) gets
		// each part sent before the next is sealed: oldest hours first.
		scan, sealed, err := s.seal(work, now)
		res.Sealed += sealed
		if err != nil {
			return res, err
		}
		if part == 0 {
			if res.Heartbeats, err = s.heartbeats(work, now); err != nil {
				return res, err
			}
		}
		batches, err := s.Store.CreateBatches(work, now)
		res.Batches += batches
		if err != nil {
			return res, err
		}
		if err = s.send(work, ctx, &res); err != nil {
			return res, err
		}
		if scan.Hi > 0 {
			v, err := s.verify(ctx, mpsaas.VerifyScope{UsageFrom: scan.Lo, UsageTo: scan.Hi, RecordsAfter: scan.Records})
			res.Violations += v
			if err != nil {
				return res, err
			}
		}
		if !scan.More {
			return res, nil
		}
		if err := work.Err(); err != nil {
			return res, err
		}
	}
}

// RunWhileTime runs metering passes while the last one sent something
// and the context's deadline leaves more than reserve: a scheduled
// invocation with a time limit (the meter Lambda function, `mpsaas bench
// dynamodb`). A pass with batches waiting for a retry ends it (the retry is
// due later). report, when set, gets every pass's result.
//
// A pass's work stops reserve before the deadline (then it is Paused),
// leaving the reserve to store what AWS answered and release the lease:
// an invocation ends on its own, however much is waiting.
func (s *Service) RunWhileTime(ctx context.Context, reserve time.Duration, report func(RunResult)) error {
	work := ctx
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		work, cancel = context.WithDeadline(ctx, dl.Add(-reserve))
		defer cancel()
	}
	for {
		res, err := s.run(work, ctx)
		if report != nil {
			report(res)
		}
		if err != nil {
			return err
		}
		if res.Paused || res.Calls == 0 || res.Retrying > 0 {
			return nil
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < reserve {
			return nil
		}
	}
}

// verify checks the invariant in scope and logs every violation.
func (s *Service) verify(ctx context.Context, scope mpsaas.VerifyScope) (int, error) {
	vs, err := s.Store.VerifyMetering(ctx, scope, 100)
	if err != nil {
		return 0, fmt.Errorf("verify metering: %w", err)
	}
	for _, v := range vs {
		s.log().Error("metering invariant violated: usage may never be billed, or be billed wrongly; run 'mpsaas meter verify'", "violation", v.String())
	}
	return len(vs), nil
}

// Verify checks the metering invariant over the whole store.
func (s *Service) Verify(ctx context.Context, limit int) ([]mpsaas.MeterViolation, error) {
	return s.Store.VerifyMetering(ctx, mpsaas.VerifyScope{}, limit)
}

// DefaultSealGrace is how long usage for an hour is collected after the
// hour ends, unless SealGrace says otherwise.
const DefaultSealGrace = 5 * time.Minute

// MaxSealGrace bounds the grace period: the last hour of a month must still
// reach AWS before 06:00 UTC on the 1st (mpsaas.MonthEndGrace), with time
// left for retries.
const MaxSealGrace = 4 * time.Hour

// ParseSealGrace reads the grace period setting (MPSAAS_METER_GRACE): a
// duration from 1s to 4h; "" is the default of 5 minutes. Both runtimes
// use it, so the setting means the same on either.
func ParseSealGrace(v string) (time.Duration, error) {
	if v == "" {
		return DefaultSealGrace, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Second || d > MaxSealGrace {
		return 0, fmt.Errorf("MPSAAS_METER_GRACE %q: want a duration from 1s to %s, such as 5m or 2h", v, MaxSealGrace)
	}
	return d, nil
}

// sealMark is what a completed seal pass decided: after it, no pending
// usage with an id up to hi is selected by the same before, flush keys and
// flushUntil.
type sealMark struct {
	before, flushUntil time.Time
	flush              string
	hi                 int64
}

// ConsistentScanner is implemented by stores whose ScanPending sees every
// committed usage row (SQLite). With such a store a pass skips the usage an
// earlier pass with the same decision already looked at, so an idle run
// reads nothing however much usage is pending in the open hour. A store
// whose pending index is eventually consistent (DynamoDB's GSI) could have
// missed a row, so every pass scans all pending usage there.
type ConsistentScanner interface {
	ConsistentPendingScan() bool
}

// Locker is implemented by stores several processes can meter at once
// (SQLite: serve, "mpsaas meter run" and "mpsaas meter replay" on one
// file). A run or replay holds the lock, so a replay in one process cannot
// move usage into what a pass in another is sealing.
type Locker interface {
	// LockMetering waits for the lock (until ctx is done). epoch counts
	// every taking of the lock, by any process.
	LockMetering(ctx context.Context) (unlock func(), epoch int64, err error)
}

// lock takes the in-process lock, then the store's, if it has one.
func (s *Service) lock(ctx context.Context) (unlock func(), err error) {
	s.mu.Lock()
	l, ok := s.Store.(Locker)
	if !ok {
		return s.mu.Unlock, nil
	}
	release, epoch, err := l.LockMetering(ctx)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	if epoch != s.epoch+1 {
		// Another process held the lock since this one did: it may have
		// replayed usage below the last seal mark, so start afresh.
		s.lastSeal, s.heartbeatsTo = nil, time.Time{}
	}
	s.epoch = epoch
	return func() { release(); s.mu.Unlock() }, nil
}

// sealBefore is the first hour still open for usage at now: hours before
// it are closed and sealed.
func (s *Service) sealBefore(now time.Time) time.Time {
	grace := s.SealGrace
	if grace == 0 {
		grace = DefaultSealGrace
	}
	return mpsaas.Hour(now.Add(-grace))
}

// seal aggregates pending usage into meter records. It streams the sums of
// pending usage in key order, stores meter records a chunk at a time (each
// remembering which usage it sums: the highest usage id on a store whose
// scan sees every committed row, the ids themselves on DynamoDB, whose
// pending index can miss a row a moment old), then marks the usage it summed
// sealed. A crash in between is safe: a record already stored for a key
// keeps what it summed, and usage it does not include moves on to a later
// open hour. Every decision uses now: which hours are closed is decided
// once for the scan and the seal.
func (s *Service) seal(ctx context.Context, now time.Time) (mpsaas.PendingScan, int, error) {
	scan, err := s.Store.PendingRange(ctx)
	if err != nil || scan.Hi == 0 {
		return scan, 0, err
	}
	if scan.Flush, err = s.flushing(ctx, now); err != nil {
		return scan, 0, err
	}
	scan.Before, scan.FlushUntil = s.sealBefore(now), mpsaas.Hour(now)
	sort.Strings(scan.Flush)
	mark := sealMark{before: scan.Before, flushUntil: scan.FlushUntil, flush: strings.Join(scan.Flush, "\x00"), hi: scan.Hi}
	if c, ok := s.Store.(ConsistentScanner); ok && c.ConsistentPendingScan() && s.lastSeal != nil {
		if last := *s.lastSeal; last.before.Equal(mark.before) && last.flushUntil.Equal(mark.flushUntil) && last.flush == mark.flush && last.hi >= scan.Lo {
			if last.hi >= scan.Hi {
				return mpsaas.PendingScan{}, 0, nil // nothing new since the last pass
			}
			scan.Lo = last.hi + 1
		}
	}
	s.lastSeal = nil
	const chunk = 10000
	total := 0
	late := lateHours{}
	var conflicts []mpsaas.MeterKey
	var keys [][]mpsaas.UsageGroup // groups of one key each
	var groups []mpsaas.UsageGroup
	store := func() error {
		if len(keys) == 0 {
			return nil
		}
		subs, err := s.subscribersOf(ctx, keys)
		if err != nil {
			return err
		}
		if (mpsaas.Catalog{Products: s.Products, Listing: s.Listing}).AnyContract() {
			if err := s.loadLate(ctx, late, keys); err != nil {
				return err
			}
		}
		recs := make([]mpsaas.MeterRecord, len(keys))
		for i, gs := range keys {
			recs[i] = s.aggregate(gs, subs[gs[0].SubscriberKey], late)
		}
		c, err := s.Store.InsertMeterRecords(ctx, recs, scan.Hi)
		if err != nil {
			return err
		}
		conflicts = append(conflicts, c...)
		total += len(recs) - len(c)
		keys, groups = keys[:0], groups[:0]
		return nil
	}
	start := 0
	err = s.Store.ScanPending(ctx, &scan, func(g mpsaas.UsageGroup) error {
		if len(groups) > start && !sameKey(groups[start], g) {
			keys = append(keys, groups[start:len(groups):len(groups)])
			start = len(groups)
			if len(keys) >= chunk {
				if err := store(); err != nil {
					return err
				}
				start = 0
			}
		}
		groups = append(groups, g)
		return nil
	})
	if err == nil && len(groups) > start {
		keys = append(keys, groups[start:])
	}
	if err == nil {
		err = store()
	}
	if err != nil {
		return scan, total, err
	}
	moved, err := s.Store.SealUsage(ctx, scan, conflicts, mpsaas.Hour(now))
	if moved > 0 {
		s.log().Info("usage for hours already metered moved to a later open hour", "records", moved)
	}
	if err == nil && moved == 0 && !scan.More {
		// Usage moved to another hour may match this decision again.
		s.lastSeal = &mark
	}
	return scan, total, err
}

// subscribersOf loads the subscribers of the keys, in one query when the
// store can.
func (s *Service) subscribersOf(ctx context.Context, keys [][]mpsaas.UsageGroup) (map[string]*mpsaas.Subscriber, error) {
	want := make([]string, 0, len(keys))
	seen := map[string]bool{}
	for _, gs := range keys {
		if k := gs[0].SubscriberKey; !seen[k] {
			seen[k] = true
			want = append(want, k)
		}
	}
	if bulk, ok := s.Subscribers.(interface {
		GetSubscribers(ctx context.Context, keys []string) (map[string]*mpsaas.Subscriber, error)
	}); ok {
		return bulk.GetSubscribers(ctx, want)
	}
	out := make(map[string]*mpsaas.Subscriber, len(want))
	for _, k := range want {
		sub, err := s.Subscribers.GetSubscriber(ctx, k)
		switch mpsaas.ErrorCode(err) {
		case "":
			out[k] = sub
		case mpsaas.ENOTFOUND:
		default:
			return nil, err
		}
	}
	return out, nil
}

// flushing returns buyers whose subscription is ending: their usage is sealed
// and sent at once, even for the current hour, so the final usage reaches
// AWS within the final metering window.
func (s *Service) flushing(ctx context.Context, now time.Time) ([]string, error) {
	var subs []*mpsaas.Subscriber
	var err error
	if el, ok := s.Store.(EndingLister); ok {
		subs, err = el.EndingSubscribers(ctx, now.Add(-mpsaas.MeteringWindow))
	} else {
		subs, err = s.Store.ActiveSubscribers(ctx, mpsaas.EndingStatuses)
	}
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, sub := range subs {
		switch {
		case sub.Status == mpsaas.StatusUnsubscribePending && !sub.FinalWindowFrom.IsZero():
			// EventBridge-only buyers stay unsubscribe-pending after their
			// window: flush them only around it.
			if now.Sub(sub.FinalWindowFrom) < 2*mpsaas.FinalMeteringWindow {
				keys = append(keys, sub.Key)
			}
		case sub.Status == mpsaas.StatusUnsubscribePending || now.Sub(sub.LastEventAt) < 2*mpsaas.FinalMeteringWindow:
			keys = append(keys, sub.Key)
		}
	}
	return keys, nil
}

// EndingLister is implemented by stores that find ending buyers without
// reading every buyer (DynamoDB's sparse ending index).
type EndingLister interface {
	// EndingSubscribers returns the buyers whose status is
	// unsubscribe-pending, cancelled or failed and whose last event is at
	// or after since. (A buyer unsubscribe-pending for longer than AWS's
	// metering window is not flushed any more: AWS takes no usage that old.)
	EndingSubscribers(ctx context.Context, since time.Time) ([]*mpsaas.Subscriber, error)
}

// lateHours holds, for one pass, what is already billed for usage hours
// that get late usage: by buyer, dimension and usage hour, the usage and
// the billed quantity of the records stored before the pass, plus what the
// pass's own records add.
type lateHours map[string]*mpsaas.HourShare

func lateKey(sub, dim string, h int64) string {
	return sub + "\x00" + dim + "\x00" + strconv.FormatInt(h, 10)
}

// loadLate reads, for the late usage hours of keys not yet known, what the
// stored records hold of them.
func (s *Service) loadLate(ctx context.Context, late lateHours, keys [][]mpsaas.UsageGroup) error {
	for _, gs := range keys {
		// Only the hours read now take the stored shares: an hour already
		// known holds them, and what this pass's records added since.
		fresh := map[int64]*mpsaas.HourShare{}
		var from time.Time
		for _, x := range gs {
			if k := lateKey(x.SubscriberKey, x.Dimension, x.UsageHour.Unix()); x.UsageHour.Before(x.Hour) && late[k] == nil {
				late[k] = &mpsaas.HourShare{}
				fresh[x.UsageHour.Unix()] = late[k]
				if from.IsZero() || x.UsageHour.Before(from) {
					from = x.UsageHour
				}
			}
		}
		if len(fresh) == 0 {
			continue
		}
		g := gs[0]
		recs, err := s.Store.MeterRecordsFor(ctx, g.SubscriberKey, g.Dimension, from, g.Hour.Add(-time.Hour))
		if err != nil {
			return err
		}
		for _, r := range recs {
			for h, sh := range r.SharesOf() {
				if t := fresh[h]; t != nil {
					t.Usage += sh.Usage
					t.Billed += sh.Billed
				}
			}
		}
	}
	return nil
}

// aggregate turns the usage groups of one (buyer, dimension, hour) into a
// meter record: allocations by tag set, contract entitlements deducted, and
// the buyer identity AWS expects. sub is nil for an unknown subscriber.
func (s *Service) aggregate(gs []mpsaas.UsageGroup, sub *mpsaas.Subscriber, late lateHours) mpsaas.MeterRecord {
	g := gs[0]
	rec := mpsaas.MeterRecord{SubscriberKey: g.SubscriberKey, Dimension: g.Dimension, Hour: g.Hour, State: mpsaas.UsageSealed}
	alloc := map[string]int64{}
	byHour := map[int64]int64{}
	tagged := false
	for _, x := range gs {
		rec.Quantity += x.Quantity
		rec.UsageQuantity += x.Quantity
		rec.UsageRecords += int64(x.Records)
		rec.UsageIDs = append(rec.UsageIDs, x.IDs...)
		rec.Version = max(rec.Version, x.Version)
		alloc[x.TagSig] += x.Quantity
		byHour[x.UsageHour.Unix()] += x.Quantity
		if x.TagSig != "" {
			tagged = true
		}
	}
	if tagged {
		rec.Allocations = alloc
	}
	slices.Sort(rec.UsageIDs)
	if sub == nil {
		rec.State, rec.Reason = mpsaas.UsageFlagged, "unknown subscriber"
		return rec
	}
	s.identify(&rec, sub)
	if rec.CustomerIdentifier == "" && (rec.CustomerAWSAccountID == "" || rec.LicenseArn == "") {
		rec.State, rec.Reason = mpsaas.UsageFlagged, "subscriber has neither a CustomerIdentifier nor a CustomerAWSAccountId with a LicenseArn"
		return rec
	}
	s.deductEntitlement(&rec, sub, byHour, late)
	if rec.State == mpsaas.UsageSealed && rec.Quantity > mpsaas.MaxQuantity {
		rec.State, rec.Reason = mpsaas.UsageFlagged, fmt.Sprintf("hourly quantity %d exceeds AWS's maximum of %d", rec.Quantity, mpsaas.MaxQuantity)
	}
	return rec
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

// deductEntitlement bills, for contracts, the overage of each usage hour:
// all its usage over the entitlement in force in that hour. Usage of the
// record's own hour bills max(0, usage - entitlement). Late usage of an
// earlier hour bills only what that hour's overage grew by over what was
// already billed for it (its own record and earlier late shares). Tagged
// allocations are reduced by what is not billed in a fixed order: untagged
// first, then by tag set.
func (s *Service) deductEntitlement(rec *mpsaas.MeterRecord, sub *mpsaas.Subscriber, byHour map[int64]int64, late lateHours) {
	if !mpsaas.IsContract(s.listingOf(sub)) || rec.State != mpsaas.UsageSealed {
		return
	}
	entitled := func(h int64) int64 {
		return mpsaas.EntitledQuantity(sub.EntitlementHistory, sub.Entitlements, rec.Dimension, time.Unix(h, 0).UTC())
	}
	own := rec.Hour.Unix()
	var billed int64
	shares := map[int64]mpsaas.HourShare{}
	var reasons []string
	hours := make([]int64, 0, len(byHour))
	for h := range byHour {
		hours = append(hours, h)
	}
	sort.Slice(hours, func(i, j int) bool { return hours[i] < hours[j] })
	for _, h := range hours {
		u := byHour[h]
		e := entitled(h)
		if h == own {
			b := max(0, u-e)
			shares[h] = mpsaas.HourShare{Usage: u, Billed: b}
			billed += b
			if e > 0 {
				reasons = append(reasons, fmt.Sprintf("within the contract's entitlement of %d", e))
			}
			continue
		}
		t := late[lateKey(rec.SubscriberKey, rec.Dimension, h)]
		if t == nil {
			t = &mpsaas.HourShare{} // not loaded (a store without the records): bill as new
		}
		b := max(0, max(0, t.Usage+u-e)-t.Billed)
		shares[h] = mpsaas.HourShare{Usage: u, Billed: b}
		t.Usage += u
		t.Billed += b
		billed += b
		reasons = append(reasons, fmt.Sprintf("late usage %d of %s: overage of that hour %d over its entitlement of %d, %d billed before",
			u, time.Unix(h, 0).UTC().Format("2006-01-02T15Z"), max(0, t.Usage-e), e, t.Billed-b))
	}
	if _, ownOnly := shares[own]; !ownOnly || len(shares) > 1 {
		rec.Shares = shares // it holds late usage of earlier hours
	}
	if billed == rec.UsageQuantity {
		return // nothing covered
	}
	rec.Reason = strings.Join(reasons, "; ")
	if billed == 0 {
		rec.State, rec.Quantity, rec.Allocations = mpsaas.UsageCovered, 0, nil
		return
	}
	rec.Quantity = billed
	if rec.Allocations == nil {
		return
	}
	sigs := make([]string, 0, len(rec.Allocations))
	for sig := range rec.Allocations {
		sigs = append(sigs, sig)
	}
	sort.Strings(sigs) // "" (untagged) sorts first
	left := rec.UsageQuantity - billed
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
func (s *Service) heartbeats(ctx context.Context, now time.Time) (int, error) {
	if s.HeartbeatDimension == "" {
		return 0, nil
	}
	end := s.sealBefore(now)
	mark := s.heartbeatsTo
	marker, persisted := s.Store.(HeartbeatMarker)
	if mark.IsZero() && persisted {
		var err error
		if mark, err = marker.HeartbeatMark(ctx); err != nil {
			return 0, err
		}
	}
	if !end.After(mark) {
		// The last pass covered every hour before end for every buyer then
		// subscribed; a buyer created since starts in an hour >= end.
		return 0, nil
	}
	s.heartbeatsTo = time.Time{}
	// Only the hours that closed since the last pass, and the one before
	// them again: a buyer created before the last pass but subscribed only
	// after it (subscribe-success came later) gets that hour too. A buyer
	// stored with a creation time further back (imported) starts there.
	earliest := mpsaas.Hour(now.Add(-mpsaas.MeteringWindow + time.Hour))
	if from := mark.Add(-time.Hour); !mark.IsZero() && from.After(earliest) {
		earliest = from
	}
	var recs []mpsaas.MeterRecord
	added := 0
	each := func(sub *mpsaas.Subscriber) error {
		if !s.heartbeatsFor(sub) {
			return nil
		}
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
			added += n
			if err != nil {
				return err
			}
			recs = recs[:0]
		}
		return nil
	}
	statuses := []mpsaas.Status{mpsaas.StatusActive, mpsaas.StatusUnsubscribePending}
	if st, ok := s.Store.(SubscriberStreamer); ok {
		if err := st.EachSubscriber(ctx, statuses, each); err != nil {
			return added, err
		}
	} else {
		subs, err := s.Store.ActiveSubscribers(ctx, statuses)
		if err != nil {
			return 0, err
		}
		for _, sub := range subs {
			if err := each(sub); err != nil {
				return added, err
			}
		}
	}
	n, err := s.Store.AddHeartbeats(ctx, recs)
	if err != nil {
		return added + n, err
	}
	if persisted {
		if err := marker.SetHeartbeatMark(ctx, end); err != nil {
			return added + n, err
		}
	}
	s.heartbeatsTo = end
	return added + n, nil
}

// SubscriberStreamer is implemented by stores that can hand out their
// subscribers a page at a time (DynamoDB), so the hourly zero records of
// 100,000 buyers do not need them all in memory at once.
type SubscriberStreamer interface {
	EachSubscriber(ctx context.Context, statuses []mpsaas.Status, fn func(*mpsaas.Subscriber) error) error
}

// LagReporter is implemented by stores that know how far metering is
// behind (DynamoDB: the oldest hour not all billed).
type LagReporter interface {
	MeteringLag(ctx context.Context, now time.Time) (time.Duration, error)
}

// Lag is how long ago the oldest hour whose usage is not all billed (or
// refused) ended; ok is false for stores that cannot tell.
func (s *Service) Lag(ctx context.Context) (lag time.Duration, ok bool, err error) {
	r, ok := s.Store.(LagReporter)
	if !ok {
		return 0, false, nil
	}
	lag, err = r.MeteringLag(ctx, s.now())
	return lag, err == nil, err
}

// HeartbeatMarker is implemented by stores that remember up to which hour
// every buyer has its hourly zero records, for processes that start often
// (a Lambda cold start): a pass then adds only the hours closed since the
// last one, in whichever process ran it.
type HeartbeatMarker interface {
	HeartbeatMark(ctx context.Context) (time.Time, error)
	SetHeartbeatMark(ctx context.Context, end time.Time) error
}

// send makes the calls for every due batch, Concurrency at a time. The
// outcomes are stored by one writer, many batches per transaction; an
// outcome lost in a crash only means an identical resend.
//
// Batches are read and sent with work; their outcomes are stored with ctx,
// so an answer AWS gave just before work ended is kept.
func (s *Service) send(work, ctx context.Context, res *RunResult) error {
	workers := s.Concurrency
	if workers <= 0 {
		workers = 4
	}
	for {
		batches, err := s.Store.DueBatches(work, s.now(), 400)
		if err != nil {
			return err
		}
		if len(batches) == 0 {
			return nil
		}
		jobs := make(chan mpsaas.MeterBatch)
		results := make(chan attempt)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for b := range jobs {
					results <- s.attempt(work, b)
				}
			})
		}
		go func() {
			defer close(jobs)
			for _, b := range batches {
				select {
				case jobs <- b:
				case <-work.Done():
					return
				}
			}
		}()
		go func() { wg.Wait(); close(results) }()
		var pending []mpsaas.BatchOutcome
		var storeErr error
		flush := func() {
			if len(pending) > 0 && storeErr == nil {
				storeErr = s.Store.FinishBatches(ctx, pending)
			}
			pending = pending[:0]
		}
		for a := range results {
			if storeErr != nil {
				continue // drain
			}
			res.add(a.stats)
			switch {
			case a.split:
				flush()
				if storeErr == nil {
					storeErr = s.Store.SplitBatch(ctx, a.outcome.BatchID, s.now())
				}
			case a.outcome.BatchID != 0:
				pending = append(pending, a.outcome)
				if len(pending) >= 50 {
					flush()
				}
			}
		}
		flush()
		if storeErr != nil {
			return storeErr
		}
		if err := work.Err(); err != nil {
			return err
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

// attempt is the result of one call for one batch.
type attempt struct {
	outcome mpsaas.BatchOutcome // BatchID 0: nothing to store (cancelled)
	split   bool                // the batch must be split to isolate a poison record
	stats   RunResult
}

// attempt makes one call and decides what to record. AWS failures become
// retries, splits or flagged records; nothing here writes to the store.
func (s *Service) attempt(ctx context.Context, b mpsaas.MeterBatch) attempt {
	a := attempt{outcome: mpsaas.BatchOutcome{BatchID: b.ID}}
	if len(b.Records) == 0 {
		return a
	}
	a.stats.Calls++
	out, err := s.Meterer.BatchMeterUsage(ctx, b.ProductCode, b.Records)
	if err != nil {
		if ctx.Err() != nil {
			return attempt{}
		}
		code := mpsaas.AWSErrorCode(err)
		if mpsaas.ErrorCode(err) == mpsaas.EUNAVAILABLE || code == "" {
			// Throttling, 5xx, timeouts: the call may or may not have taken
			// effect; the identical resend is safe either way.
			a.stats.Retrying++
			s.log().Warn("BatchMeterUsage failed; will retry", "batch", b.ID, "attempt", b.Attempts+1, "err", err)
			a.outcome.Retry, a.outcome.LastError = s.now().Add(s.backoff(b.Attempts+1)), err.Error()
			return a
		}
		// The whole batch was refused. Find the poison record by sending each
		// record alone; a single refused record is flagged for the seller.
		if len(b.Records) > 1 {
			s.log().Warn("BatchMeterUsage refused a batch; isolating records", "batch", b.ID, "code", code)
			a.split = true
			return a
		}
		reason := fmt.Sprintf("%s: %s", code, mpsaas.ErrorMessage(err))
		if code == "TimestampOutOfBoundsException" {
			reason = "outside AWS's accepted time window (" + code + "). If this record was sent before, AWS may already have billed it: check before replaying."
		}
		a.stats.Flagged++
		s.log().Error("usage record refused by AWS; flagged for the seller", "batch", b.ID, "meterRecord", b.Records[0].ID, "code", code)
		a.outcome.Outcomes = []mpsaas.RecordOutcome{{MeterRecordID: b.Records[0].ID, State: mpsaas.UsageFlagged, Reason: reason}}
		return a
	}
	for _, r := range out.Results {
		o := mpsaas.RecordOutcome{MeterRecordID: r.MeterRecordID, MeteringRecordID: r.MeteringRecordID, Response: r.Raw}
		switch r.Status {
		case "Success":
			o.State = mpsaas.UsageBilled
			a.stats.Billed++
		case "CustomerNotSubscribed":
			o.State, o.Reason = mpsaas.UsageRejected, "CustomerNotSubscribed: the buyer has no active subscription"
			a.stats.Rejected++
		case "DuplicateRecord":
			o.State, o.Reason = mpsaas.UsageFlagged, "DuplicateRecord: AWS already holds a different quantity for this buyer, dimension and hour (sent by another system?)"
			a.stats.Flagged++
		default:
			o.State, o.Reason = mpsaas.UsageFlagged, "unknown status "+r.Status
			a.stats.Flagged++
		}
		a.outcome.Outcomes = append(a.outcome.Outcomes, o)
	}
	if missing := len(b.Records) - len(a.outcome.Outcomes); missing > 0 {
		a.stats.Unprocessed += missing
		a.stats.Retrying++
		a.outcome.Retry = s.now().Add(s.backoff(b.Attempts + 1))
		a.outcome.LastError = fmt.Sprintf("%d records unprocessed", missing)
	}
	return a
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
	return s.Store.Outstanding(ctx, s.sealBefore(s.now()))
}

// Replay moves flagged usage (all, or the given ledger ids) into the current
// open hour so the next run sends it again.
// It waits for a running metering pass: a replay in the middle of a pass
// could move usage into what the pass is sealing.
func (s *Service) Replay(ctx context.Context, ids []int64) (int, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return 0, err
	}
	defer unlock()
	s.lastSeal = nil // replayed usage is pending again below the last mark
	return s.Store.Replay(ctx, ids, mpsaas.Hour(s.now()))
}

func sameKey(a, b mpsaas.UsageGroup) bool {
	return a.SubscriberKey == b.SubscriberKey && a.Dimension == b.Dimension && a.Hour.Equal(b.Hour)
}

// ParseDimensions reads MPSAAS_DIMENSIONS: comma-separated dimension names
// ("" allows any). Both runtimes use it.
func ParseDimensions(v string) ([]string, error) {
	var out []string
	for _, d := range strings.Split(v, ",") {
		d = strings.TrimSpace(d)
		if d == "" {
			continue
		}
		if err := mpsaas.ValidateDimension(d); err != nil {
			return nil, fmt.Errorf("MPSAAS_DIMENSIONS: %q: %s", d, mpsaas.ErrorMessage(err))
		}
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out, nil
}

// customerRef is a customer usage names, resolved: the buyer's key and product.
type customerRef struct{ key, product string }

// listingOf is the listing type of a buyer's product (Listing when the
// products file does not say, or the buyer is unknown).
func (s *Service) listingOf(sub *mpsaas.Subscriber) string {
	if sub == nil {
		return s.Listing
	}
	return mpsaas.Catalog{Products: s.Products, Listing: s.Listing}.ListingOf(sub.ProductCode)
}

// dimensionsOf is the dimensions of a product: the products file's, or
// Dimensions.
func (s *Service) dimensionsOf(product string) []string {
	if p, ok := s.Products[product]; ok && len(p.Dimensions) > 0 {
		return p.Dimensions
	}
	return s.Dimensions
}

// heartbeatsFor reports whether a buyer's product gets the hourly zero
// records: not a contract-only listing (nothing is metered), and not a
// product whose dimensions (the products file) lack the heartbeat
// dimension, which AWS would refuse.
func (s *Service) heartbeatsFor(sub *mpsaas.Subscriber) bool {
	if len(s.Products) == 0 {
		return true // one product: the heartbeat dimension is its own
	}
	if s.listingOf(sub) == mpsaas.ListingContracts {
		return false
	}
	p, ok := s.Products[sub.ProductCode]
	return !ok || len(p.Dimensions) == 0 || slices.Contains(p.Dimensions, s.HeartbeatDimension)
}

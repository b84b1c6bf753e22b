// Package metermodel is a model-based test of the metering workflow that
// any store can run: random interleavings of ingestion (with retried and
// resent requests), late usage, cancellations, metering runs, crashes at
// store calls, injected AWS faults, and a clock that moves on every reading
// (forwards across hour and grace boundaries, and backwards a little). The
// invariant is checked after every step; at the end, what AWS billed is
// compared with a simple model: every acknowledged record counted once.
package metermodel

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/marketplace"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/subscription"
)

// Store is what a backend under test provides.
type Store interface {
	mpsaas.MeterStore
	mpsaas.SubscriberStore
}

// Config is one model run.
type Config struct {
	Seed  uint64
	Steps int
	// Store is an empty store; SetClock makes it tell time by the model's
	// clock (for the times it records).
	Store    Store
	SetClock func(func() time.Time)
	// StoreFaultRate is the share of store calls made by metering that
	// fail, half before and half after taking effect (a crash either side).
	StoreFaultRate float64
	// CheckEvery is how many steps pass between checks of the invariant
	// over the whole store (default 1: after every step).
	CheckEvery int
	// AWSFaultRate is the share of BatchMeterUsage calls that fail in each
	// of several ways (throttled, lost response, unavailable, unprocessed).
	AWSFaultRate float64
	// Contracts runs contract-with-consumption listings: each buyer is
	// entitled to some users (requests are all billed), and what AWS bills
	// per buyer and dimension must be, for each usage hour, its usage over
	// its entitlement, however late the usage arrived (issue 14).
	Contracts bool
	// Settle, if set, is called before the final drain: the store's
	// eventually consistent reads catch up (an index lag ends).
	Settle func()
	// Feed is which notifications reach mpsaas: "sns", "eventbridge", or
	// "" for both (the README's recommendation).
	Feed string
}

// Start is the model's first instant: 20 minutes before a grace boundary.
var Start = time.Date(2026, 11, 23, 9, 45, 0, 0, time.UTC)

type request struct {
	key  string
	recs []mpsaas.Usage
}

type buyer struct {
	key, account, agreement string
	cancelled               bool
	cancelledAt             time.Time
	users                   int64 // entitled users (contracts), at first
	license                 bool  // a license-based buyer (no SNS identity)
	changes                 []entChange
}

// entChange is a change of a buyer's entitled users at a time.
type entChange struct {
	at    time.Time
	users int64
}

// entitledIn is the largest number of users the buyer was entitled to at
// any moment of the hour h (what mpsaas measures the hour against).
func (b *buyer) entitledIn(h time.Time) int64 {
	cur, best := b.users, int64(-1)
	for _, c := range b.changes {
		if !c.at.After(h) {
			cur = c.users // in force when the hour began
			continue
		}
		if c.at.Before(h.Add(time.Hour)) {
			best = max(best, cur, c.users) // changed during the hour
		}
		cur = c.users
	}
	return max(best, entitledAt(b, h))
}

func entitledAt(b *buyer, h time.Time) int64 {
	cur := b.users
	for _, c := range b.changes {
		if !c.at.After(h) {
			cur = c.users
		}
	}
	return cur
}

// Run runs the model and fails t on any violation.
func Run(t *testing.T, cfg Config) {
	t.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x6d657465))
	em := emulator.New(emulator.DefaultConfig())
	em.Clock.Set(Start)
	srv := httptest.NewServer(em.Handler())
	t.Cleanup(srv.Close)
	dims := []emulator.Dimension{{Name: "users"}, {Name: "requests"}}
	productType, listing := emulator.ProductSubscription, mpsaas.ListingSubscriptions
	if cfg.Contracts {
		productType, listing = emulator.ProductContractWithConsumption, mpsaas.ListingContractsWithSubscription
	}
	for _, p := range []emulator.Product{
		{Code: "model-license", Type: productType, LicenseBased: true, Dimensions: dims},
		{Code: "model-legacy", Type: productType, Dimensions: dims},
	} {
		if _, err := em.AddProduct(p); err != nil {
			t.Fatal(err)
		}
	}
	awsCfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("A", "B", ""), RetryMaxAttempts: 1}
	mp := marketplace.New(awsCfg, marketplace.Options{MeteringEndpoint: srv.URL, EntitlementEndpoint: srv.URL})

	// The clock moves on every reading: mostly forwards by up to 2 s,
	// sometimes back by up to 1 s.
	var mu sync.Mutex // the rng is shared with the sending goroutines
	frozen := false
	clock := mpsaas.ClockFunc(func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		if !frozen {
			step := time.Duration(rng.IntN(2000)) * time.Millisecond
			if rng.IntN(10) == 0 {
				step = -time.Duration(rng.IntN(1000)) * time.Millisecond
			}
			em.Clock.Advance(step)
		}
		return em.Clock.Now()
	})
	if cfg.SetClock != nil {
		cfg.SetClock(em.Clock.Now)
	}
	subs := &subscription.Service{Store: cfg.Store, Marketplace: mp, Clock: clock, Listing: listing}
	faulty := &faultStore{MeterStore: cfg.Store, rng: rng, mu: &mu}
	meter := &metering.Service{Store: faulty, Subscribers: cfg.Store, Meterer: mp, Clock: clock, Listing: listing, MaxBackoff: time.Millisecond}
	if cfg.Seed%2 == 1 {
		// Hourly zero records for every buyer: AWS bills them as 0, so the
		// totals below do not change, but they go through every store call.
		meter.HeartbeatDimension = "requests"
	}

	seen := 0
	deliver := func() {
		for _, n := range em.Notifications(seen) {
			seen = n.Seq
			if eb := n.Channel == emulator.ChannelEventBridge; (cfg.Feed == "sns" && eb) || (cfg.Feed == "eventbridge" && !eb) {
				continue
			}
			if err := subs.HandleMessage(ctx, n.Body); err != nil {
				t.Fatalf("notification %d: %v", n.Seq, err)
			}
		}
	}
	var buyers []*buyer
	for i := 0; i < 5; i++ {
		b, err := em.AddBuyer(emulator.Buyer{})
		if err != nil {
			t.Fatal(err)
		}
		opts := emulator.SubscribeOptions{StartedAt: em.Clock.Now().Add(-24 * time.Hour), ProductCode: []string{"model-license", "model-legacy"}[i%2], BuyerAccountID: b.AccountID}
		users := int64(0)
		if cfg.Contracts {
			users = int64(5 + 10*i)
			opts.Entitlements = map[string]int32{"users": int32(users)}
		}
		res, err := em.Subscribe(opts)
		if err != nil {
			t.Fatal(err)
		}
		deliver()
		sub, err := subs.RegisterWithToken(ctx, res.Token, mpsaas.Contact{CompanyName: "Acme", ContactPerson: "Ann", ContactPhone: "+1 555 0100", ContactEmail: "ann@acme.example"})
		if err != nil {
			t.Fatal(err)
		}
		buyers = append(buyers, &buyer{key: sub.Key, account: b.AccountID, agreement: res.Subscription.AgreementID, users: users, license: i%2 == 0})
	}
	if cfg.AWSFaultRate > 0 {
		em.Faults.Seed(cfg.Seed)
		r := cfg.AWSFaultRate
		for _, f := range []emulator.Fault{
			{Operation: "BatchMeterUsage", Error: "ThrottlingException", Rate: r},
			{Operation: "BatchMeterUsage", Error: "InternalServiceErrorException", Rate: r, AfterProcessing: true},
			{Operation: "BatchMeterUsage", Error: "ServiceUnavailable", Rate: r / 2},
			{Operation: "BatchMeterUsage", UnprocessedRate: r},
		} {
			if err := em.Faults.Add(f); err != nil {
				t.Fatal(err)
			}
		}
	}

	want := map[string]int64{}             // buyer/dimension -> acknowledged quantity
	byHour := map[string]map[int64]int64{} // buyer/dimension -> usage hour -> acknowledged quantity
	var sent []request
	acked := 0
	// ingest sends a request until it is acknowledged, as a client with
	// an idempotency key does; faults make some attempts fail either side
	// of the store's commit.
	ingest := func(r request, fresh bool) {
		for attempt := 0; ; attempt++ {
			faulty.rate = cfg.StoreFaultRate
			rec, err := meter.Ingest(ctx, mpsaas.UsageRequest{IdempotencyKey: r.key, Records: r.recs})
			faulty.rate = 0
			if err == nil {
				// A new request counts once, even when an earlier attempt
				// was stored and only its answer was lost (then this one
				// is a replay).
				if fresh {
					for _, u := range r.recs {
						k := u.Customer + "/" + u.Dimension
						want[k] += u.Quantity
						if byHour[k] == nil {
							byHour[k] = map[int64]int64{}
						}
						byHour[k][mpsaas.Hour(u.Time).Unix()] += u.Quantity
					}
					acked += len(r.recs)
				} else if !rec.Replayed {
					t.Fatalf("request %s sent again was not recognised as a replay", r.key)
				}
				return
			}
			if !errors.Is(err, errInjected) || attempt > 50 {
				t.Fatalf("ingest %s: %v", r.key, err)
			}
		}
	}
	runs, violations := 0, 0
	for step := 0; step < cfg.Steps; step++ {
		switch op := rng.IntN(100); {
		case op < 40: // usage, some of it late for hours already sealed
			now := em.Clock.Now()
			var recs []mpsaas.Usage
			for range 1 + rng.IntN(8) {
				b := buyers[rng.IntN(len(buyers))]
				ts := now.Add(-time.Duration(rng.IntN(150)) * time.Minute)
				if ts.Before(Start) {
					ts = Start
				}
				recs = append(recs, mpsaas.Usage{Customer: b.key, Dimension: []string{"users", "requests"}[rng.IntN(2)], Quantity: int64(rng.IntN(20)), Time: ts})
			}
			r := request{key: fmt.Sprintf("req-%d", step), recs: recs}
			sent = append(sent, r)
			ingest(r, true)
		case op < 45 && len(sent) > 0: // a client resends an acknowledged request
			ingest(sent[rng.IntN(len(sent))], false)
		case op < 70: // a metering run, perhaps cut short by a crash
			faulty.rate = cfg.StoreFaultRate
			res, err := meter.Run(ctx)
			faulty.rate = 0
			runs++
			violations += res.Violations
			if err != nil && !errors.Is(err, errInjected) {
				t.Fatalf("step %d: run: %v", step, err)
			}
		case op < 73 && cfg.Contracts: // a buyer's entitlement changes (upgrade or downgrade)
			b := buyers[rng.IntN(len(buyers))]
			now := em.Clock.Now()
			// Not near the end of an hour: the change must fall in the hour
			// the model records it in, however the clock steps meanwhile.
			if b.cancelled || mpsaas.Hour(now).Add(time.Hour).Sub(now) < 3*time.Minute {
				break
			}
			// SNS cannot name a license-based buyer (marketplace-api.md
			// §4.1): with SNS alone their changes never arrive, so such a
			// listing needs EventBridge; the model does not change them.
			if b.license && cfg.Feed == "sns" {
				break
			}
			users := int64(1 + rng.IntN(40))
			if _, err := em.SetEntitlements(b.agreement, map[string]int32{"users": int32(users)}); err != nil {
				t.Fatal(err)
			}
			b.changes = append(b.changes, entChange{at: now, users: users})
			deliver()
		case op < 95: // time passes, within 12 hours so AWS's 24-hour window holds
			switch k := rng.IntN(10); {
			case em.Clock.Now().After(Start.Add(12 * time.Hour)):
				em.Clock.Advance(time.Duration(1+rng.IntN(60)) * time.Second)
			case k < 4:
				em.Clock.Advance(time.Duration(1+rng.IntN(120)) * time.Second)
			case k < 7:
				em.Clock.Advance(time.Duration(5+rng.IntN(35)) * time.Minute)
			case k < 9: // just before the end of a grace period
				now := em.Clock.Now()
				edge := mpsaas.Hour(now).Add(metering.DefaultSealGrace)
				if !edge.After(now) {
					edge = edge.Add(time.Hour)
				}
				em.Clock.Set(edge.Add(-time.Duration(1+rng.IntN(4)) * time.Second))
			default:
				em.Clock.Advance(-time.Duration(1+rng.IntN(30)) * time.Second)
			}
		default: // a buyer cancels
			b := buyers[rng.IntN(len(buyers))]
			if !b.cancelled {
				if _, err := em.Cancel(b.agreement); err != nil {
					t.Fatal(err)
				}
				b.cancelled, b.cancelledAt = true, em.Clock.Now()
				deliver()
			}
		}
		if cfg.CheckEvery <= 1 || step%cfg.CheckEvery == 0 {
			check(t, ctx, cfg.Store, fmt.Sprintf("after step %d", step))
		}
		if t.Failed() {
			return
		}
	}

	// Drain: no more faults, every hour closed (late usage may wait in an
	// hour or two ahead), everything sent.
	em.Faults.Clear()
	if cfg.Settle != nil {
		cfg.Settle()
	}
	em.Clock.Advance(4 * time.Hour)
	mu.Lock()
	frozen = true
	mu.Unlock()
	for round := 0; ; round++ {
		for i := 0; ; i++ {
			res, err := meter.Run(ctx)
			if err != nil {
				t.Fatalf("drain: %v", err)
			}
			violations += res.Violations
			more, err := meter.Outstanding(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !more {
				break
			}
			if i > 100 {
				t.Fatal("metering did not finish")
			}
			em.Clock.Advance(time.Second)
		}
		// Usage the drain itself moved on to the open hour (its hour was
		// sent while a lagging index hid it) waits for that hour to close.
		pending, err := cfg.Store.Ledger(ctx, mpsaas.LedgerFilter{State: mpsaas.UsagePending, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(pending) == 0 {
			break
		}
		if round > 3 {
			t.Fatal("usage still pending after the drain")
		}
		em.Clock.Advance(2 * time.Hour)
	}
	check(t, ctx, cfg.Store, "at the end")
	if violations > 0 {
		t.Errorf("metering runs reported %d invariant violations", violations)
	}

	// Every acknowledged record is in a final state, and per buyer and
	// dimension what AWS billed (plus what it refused for cancelled
	// buyers) is what was acknowledged.
	ledger := map[string]map[string]int64{}
	records := 0
	for after := int64(0); ; {
		page, err := cfg.Store.Ledger(ctx, mpsaas.LedgerFilter{AfterID: after, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			records++
			k := e.SubscriberKey + "/" + e.Dimension
			if ledger[k] == nil {
				ledger[k] = map[string]int64{}
			}
			ledger[k][e.State] += e.Quantity
			switch e.State {
			case mpsaas.UsageBilled, mpsaas.UsageRejected:
			case mpsaas.UsageCovered:
				if !cfg.Contracts {
					t.Errorf("usage record %d (%s) covered on a subscription listing", e.ID, k)
				}
			default:
				t.Errorf("usage record %d (%s) ended %s: %s", e.ID, k, e.State, e.Reason)
			}
		}
		after = page[len(page)-1].ID
	}
	if records != acked {
		t.Errorf("the ledger holds %d usage records, %d were acknowledged", records, acked)
	}
	billed := map[string]int64{}
	keys := map[string]bool{}
	for _, b := range em.Billed("") {
		k := fmt.Sprintf("%s/%s/%d", b.BuyerAccountID, b.Dimension, b.Hour.Unix())
		if keys[k] {
			t.Errorf("%s billed twice", k)
		}
		keys[k] = true
		billed[b.BuyerAccountID+"/"+b.Dimension] += b.Quantity
	}
	var problems []string
	for _, b := range buyers {
		if !cfg.Contracts {
			break
		}
		// Contracts: for each usage hour, its usage over the entitlement in
		// force then (none after a cancellation's hour); exactly for buyers
		// who never cancelled, at most that for those who did (usage after
		// the final window is refused).
		for _, d := range []string{"users", "requests"} {
			k := b.key + "/" + d
			var owed int64
			for h, u := range byHour[k] {
				e := int64(0)
				if d == "users" && (!b.cancelled || h <= mpsaas.Hour(b.cancelledAt).Unix()) {
					e = b.entitledIn(time.Unix(h, 0).UTC())
				}
				owed += max(0, u-e)
			}
			got := billed[b.account+"/"+d]
			switch {
			case !b.cancelled && got != owed:
				problems = append(problems, fmt.Sprintf("%s: AWS billed %d, the hours' overage is %d (usage by hour %v, entitled %d users, then %v)\n%s", k, got, owed, byHour[k], b.users, b.changes, hourly(ctx, em, cfg.Store, b.key, b.account, d)))
			case b.cancelled && got > owed:
				problems = append(problems, fmt.Sprintf("%s: AWS billed %d, more than the hours' overage %d (cancelled buyer)", k, got, owed))
			}
		}
	}
	for _, b := range buyers {
		if cfg.Contracts {
			break
		}
		for _, d := range []string{"users", "requests"} {
			k := b.key + "/" + d
			got, ok := billed[b.account+"/"+d], ledger[k][mpsaas.UsageBilled]+ledger[k][mpsaas.UsageRejected]
			switch {
			case got != ledger[k][mpsaas.UsageBilled]:
				problems = append(problems, fmt.Sprintf("%s: AWS billed %d, the ledger says %d billed (%v)\n%s", k, got, ledger[k][mpsaas.UsageBilled], ledger[k], hourly(ctx, em, cfg.Store, b.key, b.account, d)))
			case ok != want[k]:
				problems = append(problems, fmt.Sprintf("%s: %d acknowledged, %d billed or refused", k, want[k], ok))
			case !b.cancelled && ledger[k][mpsaas.UsageRejected] != 0:
				problems = append(problems, fmt.Sprintf("%s: %d refused for a buyer who never cancelled", k, ledger[k][mpsaas.UsageRejected]))
			}
		}
	}
	// The status's billed meter quantity is what AWS billed (stores that
	// report meter quantities).
	if sum, err := cfg.Store.MeterSummary(ctx); err != nil {
		t.Error(err)
	} else if b := sum[mpsaas.UsageBilled]; b.MeterRecords > 0 {
		var total int64
		for _, q := range billed {
			total += q
		}
		if b.MeterQuantity != total {
			problems = append(problems, fmt.Sprintf("status: billed meter quantity %d, AWS billed %d", b.MeterQuantity, total))
		}
	}
	sort.Strings(problems)
	if len(problems) > 0 {
		t.Errorf("billing differs from the model:\n%s", strings.Join(problems, "\n"))
	}
	t.Logf("seed %d: %d steps, %d records acknowledged, %d runs, %d store faults injected, %d BatchMeterUsage calls, %d hourly records billed",
		cfg.Seed, cfg.Steps, acked, runs, faulty.injected, em.Calls()["BatchMeterUsage"], len(keys))
}

// check fails t on any violation of the metering invariant in the store.
func check(t *testing.T, ctx context.Context, st Store, when string) {
	t.Helper()
	vs, err := st.VerifyMetering(ctx, mpsaas.VerifyScope{}, 20)
	if err != nil {
		t.Fatalf("verify %s: %v", when, err)
	}
	for _, v := range vs {
		t.Errorf("%s: %s", when, v)
	}
	// The status (running totals on SQLite) agrees with the ledger.
	sum, err := st.MeterSummary(ctx)
	if err != nil {
		t.Fatalf("meter summary %s: %v", when, err)
	}
	want := map[string]mpsaas.StateCount{}
	for after := int64(0); ; {
		page, err := st.Ledger(ctx, mpsaas.LedgerFilter{AfterID: after, Limit: 10000})
		if err != nil {
			t.Fatalf("ledger %s: %v", when, err)
		}
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			c := want[e.State]
			c.Records++
			c.Quantity += e.Quantity
			want[e.State] = c
		}
		after = page[len(page)-1].ID
	}
	for s, c := range sum {
		if w := want[s]; c.Records != w.Records || c.Quantity != w.Quantity {
			t.Errorf("%s: status says %s %d records of quantity %d, the ledger %d of %d", when, s, c.Records, c.Quantity, w.Records, w.Quantity)
		}
	}
	for s, w := range want {
		if _, ok := sum[s]; !ok {
			t.Errorf("%s: status has no %s, the ledger %d records of quantity %d", when, s, w.Records, w.Quantity)
		}
	}
}

var errInjected = errors.New("injected store fault")

// faultStore fails a share of calls, before or after the call takes effect
// (a crash either side of a commit).
type faultStore struct {
	mpsaas.MeterStore
	rng      *rand.Rand
	mu       *sync.Mutex
	rate     float64
	injected int
}

// ConsistentPendingScan passes the store's answer on, so the model runs
// the metering service the way the store is really used.
func (f *faultStore) ConsistentPendingScan() bool {
	c, ok := f.MeterStore.(metering.ConsistentScanner)
	return ok && c.ConsistentPendingScan()
}

func (f *faultStore) fault(call func() error) error {
	f.mu.Lock()
	fail, before := f.rate > 0 && f.rng.Float64() < f.rate, f.rng.IntN(2) == 0
	if fail {
		f.injected++
	}
	f.mu.Unlock()
	switch {
	case !fail:
		return call()
	case before:
		return errInjected
	}
	if err := call(); err != nil {
		return err
	}
	return errInjected
}

func (f *faultStore) AddUsage(ctx context.Context, key, hash string, rows []mpsaas.UsageRow, openHour, now time.Time) (r mpsaas.UsageReceipt, err error) {
	err = f.fault(func() error { r, err = f.MeterStore.AddUsage(ctx, key, hash, rows, openHour, now); return err })
	return r, err
}

func (f *faultStore) PendingRange(ctx context.Context) (s mpsaas.PendingScan, err error) {
	err = f.fault(func() error { s, err = f.MeterStore.PendingRange(ctx); return err })
	return s, err
}

func (f *faultStore) ScanPending(ctx context.Context, scan *mpsaas.PendingScan, fn func(mpsaas.UsageGroup) error) error {
	return f.fault(func() error { return f.MeterStore.ScanPending(ctx, scan, fn) })
}

func (f *faultStore) InsertMeterRecords(ctx context.Context, recs []mpsaas.MeterRecord, upTo int64) (c []mpsaas.MeterKey, err error) {
	err = f.fault(func() error { c, err = f.MeterStore.InsertMeterRecords(ctx, recs, upTo); return err })
	return c, err
}

func (f *faultStore) SealUsage(ctx context.Context, scan mpsaas.PendingScan, conflicts []mpsaas.MeterKey, openHour time.Time) (n int, err error) {
	err = f.fault(func() error { n, err = f.MeterStore.SealUsage(ctx, scan, conflicts, openHour); return err })
	return n, err
}

func (f *faultStore) AddHeartbeats(ctx context.Context, recs []mpsaas.MeterRecord) (n int, err error) {
	err = f.fault(func() error { n, err = f.MeterStore.AddHeartbeats(ctx, recs); return err })
	return n, err
}

func (f *faultStore) CreateBatches(ctx context.Context, now time.Time) (n int, err error) {
	err = f.fault(func() error { n, err = f.MeterStore.CreateBatches(ctx, now); return err })
	return n, err
}

func (f *faultStore) DueBatches(ctx context.Context, now time.Time, limit int) (b []mpsaas.MeterBatch, err error) {
	err = f.fault(func() error { b, err = f.MeterStore.DueBatches(ctx, now, limit); return err })
	return b, err
}

func (f *faultStore) FinishBatches(ctx context.Context, results []mpsaas.BatchOutcome) error {
	return f.fault(func() error { return f.MeterStore.FinishBatches(ctx, results) })
}

func (f *faultStore) SplitBatch(ctx context.Context, id int64, now time.Time) error {
	return f.fault(func() error { return f.MeterStore.SplitBatch(ctx, id, now) })
}

// hourly lists, per hour, what AWS billed and what the ledger says: the
// detail of a difference.
func hourly(ctx context.Context, em *emulator.Server, st Store, key, account, dim string) string {
	lines := map[string]string{}
	for _, b := range em.Billed(account) {
		if b.Dimension == dim {
			h := b.Hour.Format("02T15")
			lines[h] += fmt.Sprintf(" aws=%d(calls %d)", b.Quantity, b.Calls)
		}
	}
	l, _ := st.Ledger(ctx, mpsaas.LedgerFilter{SubscriberKey: key, Limit: 10000})
	sums := map[string]int64{}
	for _, e := range l {
		if e.Dimension == dim {
			sums[e.Hour.Format("02T15")+" "+e.State+" "+e.Reason] += e.Quantity
		}
	}
	for k, q := range sums {
		h, rest, _ := strings.Cut(k, " ")
		lines[h] += fmt.Sprintf(" ledger %s=%d", rest, q)
	}
	if sub, err := st.GetSubscriber(ctx, key); err == nil {
		lines["00"] = fmt.Sprintf(" entitlements %v history %+v", sub.Entitlements, sub.EntitlementHistory)
	}
	// The meter records and how they split by usage hour.
	recs, _ := st.MeterRecordsFor(ctx, key, dim, Start.Add(-2*time.Hour), Start.Add(30*time.Hour))
	for _, r := range recs {
		var sh []string
		for h, s := range r.SharesOf() {
			sh = append(sh, fmt.Sprintf("%s:%d/%d", time.Unix(h, 0).UTC().Format("15h"), s.Usage, s.Billed))
		}
		sort.Strings(sh)
		lines[r.Hour.Format("02T15")] += fmt.Sprintf(" record#%d %s q=%d usage=%d shares[%s]", r.ID, r.State, r.Quantity, r.UsageQuantity, strings.Join(sh, " "))
	}
	var out []string
	for h, l := range lines {
		out = append(out, "  "+h+":"+l)
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// Package subscription is the workflow that turns registration tokens and
// AWS Marketplace notifications into subscribers and access decisions:
// ResolveCustomer → store the buyer → read entitlements → fold events →
// decide access → queue access changes for delivery.
//
// Both runtimes use it: `mpsaas serve` (web handlers and the local queue
// worker) and the Lambda functions.
package subscription

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/mpsaas/mpsaas"
)

// Service runs the subscription workflow. Set the fields, then use it
// concurrently.
type Service struct {
	Store       mpsaas.SubscriberStore
	Marketplace mpsaas.Marketplace
	// Agreements, when set, tells whether a buyer's agreement has a free
	// trial (without it, only SNS messages say).
	Agreements Agreements
	Clock      mpsaas.Clock
	Logger     *slog.Logger
	// Listing is the TypeOfSaaSListing: subscriptions, contracts or
	// contracts_with_subscription. Contracts read entitlements.
	Listing string
	// Products override Listing per product code (the products file).
	Products map[string]mpsaas.Product
	// OnRegister, when set, hears of each buyer's first registration
	// (metrics).
	OnRegister func(productCode string)
	// ProductCodes are the products this integration serves; tokens for
	// other products are refused. Empty accepts any product.
	ProductCodes []string
	// Channels are the outbox channels every access change is queued on.
	Channels []string
	// RevokeOnCancel revokes access when a buyer cancels rather than at the
	// end of the final metering window (MPSAAS_REVOKE_ON_CANCEL).
	RevokeOnCancel bool

	locks keyedLocks // one update of a buyer at a time in this process
}

// keyedLocks are mutexes by key, kept only while in use.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	users int
}

func (k *keyedLocks) lock(key string) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{}
		k.m[key] = l
	}
	l.users++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.users--; l.users == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

func (s *Service) now() time.Time {
	if s.Clock == nil {
		return time.Now().UTC()
	}
	return s.Clock.Now()
}

func (s *Service) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// ResolveOptions carry what the fulfillment POST says besides the token.
type ResolveOptions struct {
	// FreeTrial is set when the POST had x-amzn-marketplace-offer-type=free-trial.
	// The buyer's browser sends that POST, so it decides nothing: whether a
	// free trial applies comes from AWS (the agreement's terms, or the SNS
	// message's isFreeTrialTermPresent). A claim AWS does not back is logged.
	FreeTrial bool
}

// Agreements reads buyers' agreements (the AWS Marketplace Agreement API).
type Agreements interface {
	// FreeTrial reports whether the agreement of a license has a free
	// trial term.
	FreeTrial(ctx context.Context, licenseArn string) (bool, error)
}

// Resolve exchanges a registration token for the customer and makes sure a
// subscriber record exists for it, folding any events that arrived before.
// The token itself is never stored or logged.
func (s *Service) Resolve(ctx context.Context, token string, opts ResolveOptions) (*mpsaas.Subscriber, error) {
	if token == "" {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "The registration token is missing. Please return to AWS Marketplace and choose \"Set up your account\" again.")
	}
	if len(token) > 4096 {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "The registration token is not valid.")
	}
	cust, err := s.Marketplace.ResolveCustomer(ctx, token)
	if err != nil {
		return nil, fmt.Errorf("resolve customer: %w", err)
	}
	if err := cust.Validate(); err != nil {
		return nil, err
	}
	if len(s.ProductCodes) > 0 && !slices.Contains(s.ProductCodes, cust.ProductCode) {
		s.log().Warn("registration token for another product", "productCode", cust.ProductCode)
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "This registration is for a product (%s) that this site does not sell.", cust.ProductCode)
	}
	trial := false
	if s.Agreements != nil && cust.LicenseArn != "" {
		t, err := s.Agreements.FreeTrial(ctx, cust.LicenseArn)
		if err != nil {
			// Not fatal: the buyer registers; an SNS message may still say.
			s.log().Warn("reading the buyer's agreement terms (free trial unknown)", "productCode", cust.ProductCode, "err", err)
		}
		trial = t && err == nil
	}
	if opts.FreeTrial && !trial {
		s.log().Warn("the fulfillment POST claims a free trial that AWS does not report; ignored", "productCode", cust.ProductCode)
	}
	return s.update(ctx, cust, "", func(sub *mpsaas.Subscriber) error {
		if trial {
			sub.OfferType = mpsaas.OfferTypeFreeTrial
		}
		return nil
	})
}

// Claim redeems a sign-up handoff code for the buyer under key: the
// seller's application signed the buyer up, so the buyer counts as
// registered (access is granted as AWS confirms the subscription), and with
// accountID the buyer is linked to the seller's account. A code (claimID)
// redeems once: a second redemption is ECONFLICT with nothing changed, as
// is linking a buyer already linked to another account.
func (s *Service) Claim(ctx context.Context, key, claimID, accountID string) (*mpsaas.Subscriber, error) {
	return s.update(ctx, mpsaas.Customer{}, key, func(sub *mpsaas.Subscriber) error {
		if sub.ClaimID == claimID {
			return mpsaas.Errorf(mpsaas.ECONFLICT, "this claim code was already redeemed")
		}
		if accountID != "" && sub.LinkedAccountID != "" && sub.LinkedAccountID != accountID {
			return mpsaas.Errorf(mpsaas.ECONFLICT, "the buyer is linked to another account (%s)", sub.LinkedAccountID)
		}
		sub.ClaimID = claimID
		if accountID != "" {
			sub.LinkedAccountID = accountID
		}
		if !sub.Registered() {
			sub.RegisteredAt = s.now()
		}
		return nil
	})
}

// Register stores the buyer's contact details for the subscriber under key.
// Registering again updates the details; it never creates a second record.
func (s *Service) Register(ctx context.Context, key string, c mpsaas.Contact) (*mpsaas.Subscriber, error) {
	c = c.Normalize()
	if fe := c.Validate(); fe != nil {
		return nil, &mpsaas.Error{Code: mpsaas.EINVALID, Message: fe.Error()}
	}
	sub, err := s.Store.GetSubscriber(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("register %s: %w", key, err)
	}
	first := false
	out, err := s.update(ctx, customerOf(sub), key, func(sub *mpsaas.Subscriber) error {
		sub.Contact = c
		first = sub.RegisteredAt.IsZero()
		if first {
			sub.RegisteredAt = s.now()
		}
		return nil
	})
	if err == nil && first && s.OnRegister != nil {
		s.OnRegister(out.ProductCode)
	}
	return out, err
}

// RegisterWithToken is the sample stack's API: resolve and register in one call.
func (s *Service) RegisterWithToken(ctx context.Context, token string, c mpsaas.Contact) (*mpsaas.Subscriber, error) {
	c = c.Normalize()
	if fe := c.Validate(); fe != nil {
		return nil, &mpsaas.Error{Code: mpsaas.EINVALID, Message: fe.Error()}
	}
	sub, err := s.Resolve(ctx, token, ResolveOptions{})
	if err != nil {
		return nil, err
	}
	return s.Register(ctx, sub.Key, c)
}

// Get returns the subscriber under key.
func (s *Service) Get(ctx context.Context, key string) (*mpsaas.Subscriber, error) {
	return s.Store.GetSubscriber(ctx, key)
}

func customerOf(sub *mpsaas.Subscriber) mpsaas.Customer {
	return mpsaas.Customer{CustomerIdentifier: sub.CustomerIdentifier, CustomerAWSAccountID: sub.CustomerAWSAccountID, LicenseArn: sub.LicenseArn, ProductCode: sub.ProductCode}
}

// HandleMessage handles one notification body (SNS-in-SQS or EventBridge).
// Redelivered, reordered and early events are safe: events are stored once
// by ID and each affected subscriber's state is folded from all its events.
// A returned EINVALID error means the message can never succeed.
func (s *Service) HandleMessage(ctx context.Context, body []byte) error {
	events, err := ParseMessage(body, s.now())
	if err != nil {
		return err
	}
	for _, e := range events {
		if err := s.HandleEvent(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

// HandleEvent stores one event and updates the subscribers it belongs to.
// Handling the same event twice is harmless, so a retry after a partial
// failure is safe.
func (s *Service) HandleEvent(ctx context.Context, e mpsaas.Event) error {
	if len(s.ProductCodes) > 0 && e.ProductCode != "" && !slices.Contains(s.ProductCodes, e.ProductCode) {
		s.log().Info("ignoring event for another product", "event", e.ID, "productCode", e.ProductCode)
		return nil
	}
	added, err := s.Store.AddEvent(ctx, e)
	if err != nil {
		return fmt.Errorf("store event %s: %w", e.ID, err)
	}
	keys, err := s.Store.SubscribersFor(ctx, e)
	if err != nil {
		return err
	}
	s.log().Info("subscription event", "event", e.ID, "kind", e.Kind, "new", added, "subscribers", len(keys))
	for _, key := range keys {
		sub, err := s.Store.GetSubscriber(ctx, key)
		if err != nil {
			return fmt.Errorf("event %s: %w", e.ID, err)
		}
		if _, err := s.update(ctx, customerOf(sub), key, func(*mpsaas.Subscriber) error { return nil }); err != nil {
			return fmt.Errorf("event %s: %w", e.ID, err)
		}
	}
	return nil
}

// update loads (or creates) the subscriber for cust, applies mutate, folds
// its events, re-reads contract entitlements, decides access and saves,
// queuing an access change if the decision changed. It retries on
// concurrent updates.
func (s *Service) update(ctx context.Context, cust mpsaas.Customer, key string, mutate func(*mpsaas.Subscriber) error) (*mpsaas.Subscriber, error) {
	// Updates of one buyer queue up in this process; another process (a
	// second Lambda instance) is met by the version check and a retry
	// after a jittered wait.
	lockKey := key
	if lockKey == "" {
		lockKey = mpsaas.SubscriberKey(cust)
	}
	defer s.locks.lock(lockKey)()
	var lastErr error
	for attempt := 0; attempt < 10; attempt++ {
		if attempt > 0 {
			wait := min(5*time.Millisecond<<attempt, 500*time.Millisecond)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(wait/2 + time.Duration(rand.Int64N(int64(wait/2)+1))):
			}
		}
		sub, err := s.load(ctx, cust, key)
		if err != nil {
			return nil, err
		}
		before, wasRegistered := sub.Contact, sub.Registered()
		if err := mutate(sub); err != nil {
			return nil, err
		}
		if err := s.carryLink(ctx, sub); err != nil {
			return nil, err
		}
		events, err := s.Store.EventsFor(ctx, sub.Identity)
		if err != nil {
			return nil, err
		}
		sub.State = mpsaas.Fold(events)
		if !sub.FreeTrialKnown && sub.OfferType == mpsaas.OfferTypeFreeTrial {
			sub.FreeTrial = true
		}
		if mpsaas.IsContract(s.listingOf(sub.ProductCode)) {
			ents, raw, err := s.Marketplace.GetEntitlements(ctx, customerOf(sub))
			if err != nil {
				return nil, fmt.Errorf("entitlements of %s: %w", sub.Key, err)
			}
			sub.Entitlements, sub.EntitlementsRaw, sub.EntitlementsCheckedAt = ents, raw, s.now()
			sub.EntitlementHistory = mpsaas.RecordEntitlements(sub.EntitlementHistory, ents, s.now())
		}
		change := s.decide(sub)
		if change == nil && wasRegistered && sub.Contact != before && sub.Access != mpsaas.AccessNone {
			// The seller's systems hear of new contact details too.
			sub.AccessVersion++
			ch := mpsaas.NewAccessChange(sub, s.now())
			ch.Event = mpsaas.EventContactUpdated
			change = &ch
		}
		err = s.Store.SaveSubscriber(ctx, sub, change, s.Channels)
		if err == nil {
			if change != nil {
				s.log().Info("access changed", "subscriber", sub.Key, "access", sub.Access, "version", sub.AccessVersion)
			}
			return sub, nil
		}
		if mpsaas.ErrorCode(err) != mpsaas.ECONFLICT {
			return nil, err
		}
		lastErr = err
	}
	return nil, fmt.Errorf("update subscriber: gave up after concurrent updates: %w", lastErr)
}

// linkMemory is implemented by stores that remember the seller's account
// an AWS account's buyer of a product was linked to.
type linkMemory interface {
	LinkedAccountFor(ctx context.Context, awsAccount, product string) (string, error)
}

// carryLink links a new buyer record (a new agreement of a buyer who
// subscribed before) to the seller's account the buyer's previous
// agreement was linked to.
func (s *Service) carryLink(ctx context.Context, sub *mpsaas.Subscriber) error {
	if sub.Version != 0 || sub.LinkedAccountID != "" {
		return nil
	}
	l, ok := s.Store.(linkMemory)
	if !ok {
		return nil
	}
	id, err := l.LinkedAccountFor(ctx, sub.CustomerAWSAccountID, sub.ProductCode)
	if err != nil {
		return err
	}
	sub.LinkedAccountID = id
	return nil
}

// load returns the stored subscriber (by key, or by any identity of cust)
// merged with what cust adds, or a new one.
func (s *Service) load(ctx context.Context, cust mpsaas.Customer, key string) (*mpsaas.Subscriber, error) {
	var sub *mpsaas.Subscriber
	var err error
	if key != "" {
		sub, err = s.Store.GetSubscriber(ctx, key)
	} else {
		sub, err = s.Store.FindSubscriber(ctx, cust.Identity())
	}
	switch mpsaas.ErrorCode(err) {
	case "":
	case mpsaas.ENOTFOUND:
		if key != "" {
			return nil, err
		}
		return &mpsaas.Subscriber{Key: mpsaas.SubscriberKey(cust), Identity: cust.Identity(), LicenseArn: cust.LicenseArn, State: mpsaas.State{Status: mpsaas.StatusPending}}, nil
	default:
		return nil, err
	}
	// Fill in identity fields we did not know yet; never overwrite known ones.
	id := cust.Identity()
	fill := func(dst *string, v string) {
		if *dst == "" {
			*dst = v
		}
	}
	fill(&sub.CustomerIdentifier, id.CustomerIdentifier)
	fill(&sub.CustomerAWSAccountID, id.CustomerAWSAccountID)
	fill(&sub.LicenseID, id.LicenseID)
	fill(&sub.LicenseArn, cust.LicenseArn)
	fill(&sub.ProductCode, id.ProductCode)
	return sub, nil
}

// decide sets the subscriber's access and returns the change to deliver, or
// nil when nothing the seller's system sees has changed.
func (s *Service) decide(sub *mpsaas.Subscriber) *mpsaas.AccessChange {
	a, fp := mpsaas.DecideAccess(sub, mpsaas.AccessPolicy{Listing: s.listingOf(sub.ProductCode), RevokeOnCancel: s.RevokeOnCancel}, s.now())
	if a == mpsaas.AccessNone || fp == sub.AccessFingerprint {
		return nil
	}
	sub.Access, sub.AccessFingerprint = a, fp
	sub.AccessVersion++
	ch := mpsaas.NewAccessChange(sub, s.now())
	return &ch
}

// statusLister lists subscribers by status (both stores have it).
type statusLister interface {
	ActiveSubscribers(ctx context.Context, statuses []mpsaas.Status) ([]*mpsaas.Subscriber, error)
}

// EndFinalWindows revokes the access of cancelling buyers whose final
// metering window has passed. AWS sends no event then on the EventBridge
// path (SNS sends unsubscribe-success), so both runtimes call this on a
// schedule: serve every minute, the meter function on every run. It
// returns how many buyers lost access.
func (s *Service) EndFinalWindows(ctx context.Context) (int, error) {
	l, ok := s.Store.(statusLister)
	if !ok {
		return 0, nil
	}
	subs, err := l.ActiveSubscribers(ctx, []mpsaas.Status{mpsaas.StatusUnsubscribePending})
	if err != nil {
		return 0, fmt.Errorf("end final windows: %w", err)
	}
	now, n := s.now(), 0
	for _, sub := range subs {
		if sub.Access == mpsaas.AccessRevoked || sub.Access == mpsaas.AccessNone || !sub.FinalWindowEnded(now) {
			continue
		}
		saved, err := s.update(ctx, customerOf(sub), sub.Key, func(*mpsaas.Subscriber) error { return nil })
		if err != nil {
			return n, fmt.Errorf("end final window of %s: %w", sub.Key, err)
		}
		if saved.Access == mpsaas.AccessRevoked {
			n++
		}
	}
	return n, nil
}

// ParseRevokeOnCancel reads MPSAAS_REVOKE_ON_CANCEL: "true" or "false"
// ("" is false). Both runtimes use it.
func ParseRevokeOnCancel(v string) (bool, error) {
	switch v {
	case "", "false", "0":
		return false, nil
	case "true", "1":
		return true, nil
	}
	return false, fmt.Errorf("MPSAAS_REVOKE_ON_CANCEL %q: want true or false", v)
}

// listingOf is a product's listing type: the products file's, or Listing.
func (s *Service) listingOf(code string) string {
	return mpsaas.Catalog{Products: s.Products, Listing: s.Listing}.ListingOf(code)
}

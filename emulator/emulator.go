// Package emulator is a local, wire-compatible emulator of the AWS Marketplace
// Metering Service and Entitlement Service, plus a buyer simulator.
//
// The unmodified aws-sdk-go-v2 clients reach it through an endpoint override
// (BaseEndpoint). Metering is served over awsJson1_1; GetEntitlements over both
// awsJson1_1 and Smithy RPC v2 CBOR on the same listener.
//
// It deliberately imports nothing from mpsaas: it is written from
// shared/spec/marketplace-api.md so that it does not share the integration's
// bugs. Behaviour the specification marks as unverified is configurable and
// documented as an assumption where it is implemented.
package emulator

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"
)

// Product types, mirroring the TypeOfSaaSListing values of the sample stack.
const (
	ProductSubscription            = "subscriptions"
	ProductContract                = "contracts"
	ProductContractWithConsumption = "contracts_with_subscription"
)

// SellerAccountID is the AWS account the emulated seller publishes from.
const SellerAccountID = "111122223333"

// SNSAccountID is the account AWS Marketplace publishes its SNS topics from
// (the sample stack's SNSAccountID default).
const SNSAccountID = "287250355862"

// Config holds the emulator's tunable behaviour. The zero value is not
// useful; start from DefaultConfig.
type Config struct {
	// TokenTTL is how long a registration token resolves (AWS: 4 hours).
	TokenTTL time.Duration
	// MeteringWindow is how old a usage record may be (AWS since 2026-07: 24 hours).
	MeteringWindow time.Duration
	// MonthEndGrace is how long after midnight UTC on the 1st records for the
	// previous month are still accepted (AWS: 6 hours).
	MonthEndGrace time.Duration
	// FutureSkew is how far in the future a timestamp may be. ASSUMPTION: AWS
	// does not document future timestamps; we reject anything beyond this skew
	// with TimestampOutOfBoundsException.
	FutureSkew time.Duration
	// FinalMeteringWindow is how long after a cancellation usage is still
	// accepted, and when unsubscribe-success follows unsubscribe-pending (AWS: about 1 hour).
	FinalMeteringWindow time.Duration
	// MaxRequestBytes is the request size limit (AWS: less than 1 MB).
	MaxRequestBytes int64
	// SNSLicenseKeys adds customer-aws-account-id and license-arn to SNS
	// messages. ASSUMPTION: AWS documents no such keys; off by default.
	SNSLicenseKeys bool
	// NotificationLog is how many notifications are kept for
	// GET /emulator/api/notifications (oldest dropped first; default 10000).
	// Sinks registered with OnNotification see every one.
	NotificationLog int
	// Logger receives one line per API call; nil discards.
	Logger *slog.Logger
	// Undocumented answers (see the table in the README, "The AWS
	// Marketplace emulator"): the error code for each, easy to change.
	Answers Answers
}

// Answers are the emulator's choices where AWS documents a rule but not
// the answer that enforces it.
type Answers struct {
	// MixedProducts: a BatchMeterUsage request whose records belong to
	// more than one product ("each BatchMeterUsage request is for only one
	// product"). ASSUMPTION: ValidationException.
	MixedProducts string
	// ProductCodeWithLicense: a request-level ProductCode alongside
	// LicenseArn records ("for LicenseArn integrations, do NOT include it").
	// ASSUMPTION: ValidationException.
	ProductCodeWithLicense string
	// MissingLicense: a record without LicenseArn for a product created for
	// concurrent agreements ("new SaaS products must use
	// CustomerAWSAccountId and LicenseArn"). ASSUMPTION: ValidationException.
	MissingLicense string
	// UsageBeforeStart decides usage timestamped before the agreement
	// started: "hour" answers CustomerNotSubscribed for an hour before the
	// agreement's start hour (usage in the start hour, sent with the hour's
	// timestamp as hourly metering does, is billed); "instant" also for a
	// timestamp earlier in the start hour; "" accepts it. ASSUMPTION: "hour".
	UsageBeforeStart string
}

// DefaultConfig returns the limits documented in the specification.
func DefaultConfig() Config {
	return Config{
		TokenTTL:            4 * time.Hour,
		MeteringWindow:      24 * time.Hour,
		MonthEndGrace:       6 * time.Hour,
		FutureSkew:          5 * time.Minute,
		FinalMeteringWindow: time.Hour,
		MaxRequestBytes:     1 << 20,
		NotificationLog:     10000,
		Answers: Answers{MixedProducts: "ValidationException", ProductCodeWithLicense: "ValidationException",
			MissingLicense: "ValidationException", UsageBeforeStart: "hour"},
	}
}

// Dimension is a pricing dimension of a product.
type Dimension struct {
	Name string `json:"name"`
	// Description is shown in the buyer simulator.
	Description string `json:"description,omitempty"`
}

// Product is a SaaS listing of the emulated seller.
type Product struct {
	Code string `json:"code"`
	Name string `json:"name"`
	// Type is one of ProductSubscription, ProductContract, ProductContractWithConsumption.
	Type       string      `json:"type"`
	Dimensions []Dimension `json:"dimensions"`
	// FulfillmentURL receives the buyer's form POST.
	FulfillmentURL string `json:"fulfillmentUrl"`
	// LicenseBased marks products created since 2026-06-01: ResolveCustomer
	// returns no CustomerIdentifier and BatchMeterUsage refuses it.
	LicenseBased bool   `json:"licenseBased"`
	ProductID    string `json:"productId"`
}

func (p *Product) hasDimension(name string) bool {
	for _, d := range p.Dimensions {
		if d.Name == name {
			return true
		}
	}
	return false
}

func (p *Product) isContract() bool {
	return p.Type == ProductContract || p.Type == ProductContractWithConsumption
}

// Buyer is an AWS account that can subscribe to products.
type Buyer struct {
	AccountID string `json:"accountId"`
	Name      string `json:"name"`
}

// Subscription statuses.
const (
	StatusActive             = "active"
	StatusUnsubscribePending = "unsubscribe-pending"
	StatusCancelled          = "cancelled"
	StatusExpired            = "expired"
	StatusFailed             = "failed"
)

// Subscription is one buyer's agreement for one product.
type Subscription struct {
	AgreementID        string    `json:"agreementId"`
	OfferID            string    `json:"offerId"`
	ProductCode        string    `json:"productCode"`
	BuyerAccountID     string    `json:"buyerAccountId"`
	CustomerIdentifier string    `json:"customerIdentifier,omitempty"`
	LicenseArn         string    `json:"licenseArn"`
	Status             string    `json:"status"`
	FreeTrial          bool      `json:"freeTrial"`
	StartedAt          time.Time `json:"startedAt"`
	// EndedAt is when the subscription was cancelled, expired or failed.
	EndedAt time.Time `json:"endedAt,omitzero"`
	// Entitlements maps dimension to contracted quantity (contracts only).
	Entitlements map[string]int32 `json:"entitlements,omitempty"`
	// ExpiresAt is the contract's end (contracts only).
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
}

// startedBy reports whether usage at t falls within the agreement (rule:
// Answers.UsageBeforeStart).
func (s *Subscription) startedBy(t time.Time, rule string) bool {
	switch rule {
	case "instant":
		return !t.Before(s.StartedAt)
	case "hour":
		return !t.Truncate(time.Hour).Before(s.StartedAt.Truncate(time.Hour))
	}
	return true
}

// meteringAllowed reports whether usage at time now is still accepted.
func (s *Subscription) meteringAllowed(now time.Time, final time.Duration) bool {
	switch s.Status {
	case StatusActive:
		return true
	case StatusUnsubscribePending, StatusCancelled, StatusExpired:
		return now.Before(s.EndedAt.Add(final))
	}
	return false
}

type token struct {
	agreementID string
	issuedAt    time.Time
}

// BilledRecord is one usage record AWS would bill: the first accepted record
// for a (subscription, mode, dimension, hour) key.
type BilledRecord struct {
	MeteringRecordID string `json:"meteringRecordId"`
	AgreementID      string `json:"agreementId"`
	ProductCode      string `json:"productCode"`
	BuyerAccountID   string `json:"buyerAccountId"`
	// CustomerKey is the buyer key the record was sent with: a
	// CustomerIdentifier or a CustomerAWSAccountId.
	CustomerKey string `json:"customerKey"`
	// Mode is "product" (ProductCode-based) or "license" (LicenseArn-based).
	Mode        string            `json:"mode"`
	Dimension   string            `json:"dimension"`
	Hour        time.Time         `json:"hour"`
	Quantity    int64             `json:"quantity"`
	Allocations []UsageAllocation `json:"allocations,omitempty"`
	// Calls counts the accepted requests for this key (1 plus identical resends).
	Calls    int       `json:"calls"`
	BilledAt time.Time `json:"billedAt"`
}

type billKey struct {
	agreementID string
	mode        string
	dimension   string
	hour        int64
}

// Server is the emulator. Create it with New; it is safe for concurrent use.
type Server struct {
	cfg    Config
	log    *slog.Logger
	Clock  *Clock
	Faults *Faults

	mu            sync.Mutex
	products      map[string]*Product
	buyers        map[string]*Buyer
	subscriptions map[string]*Subscription // by agreement ID
	// Indexes over subscriptions, so metering scales to many buyers.
	byLicense     map[string]*Subscription   // license ARN
	byProductCI   map[string]*Subscription   // product code + "\x00" + CustomerIdentifier
	byProductAcc  map[string][]*Subscription // product code + "\x00" + account, oldest first
	tokens        map[string]*token
	billed        map[billKey]*BilledRecord
	meterUsage    map[string]string // MeterUsage dedupe: key -> record id
	scheduled     []scheduled
	notifications []Notification
	sinks         []func(Notification)
	// drops are how many notifications of each channel ("" any) get lost.
	drops         map[string]int
	dropped       int
	seq           int
	calls         map[string]int
	lastEventTime time.Time
}

// New returns an emulator with no products or buyers.
func New(cfg Config) *Server {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		cfg:           cfg,
		log:           log,
		Clock:         NewClock(),
		Faults:        NewFaults(),
		products:      map[string]*Product{},
		buyers:        map[string]*Buyer{},
		subscriptions: map[string]*Subscription{},
		byLicense:     map[string]*Subscription{},
		byProductCI:   map[string]*Subscription{},
		byProductAcc:  map[string][]*Subscription{},
		tokens:        map[string]*token{},
		billed:        map[billKey]*BilledRecord{},
		meterUsage:    map[string]string{},
		calls:         map[string]int{},
	}
}

// Config returns the emulator's configuration.
func (s *Server) Config() Config { return s.cfg }

// OnNotification registers fn to receive every notification, in order, as
// it is emitted. fn is called without the emulator's lock held.
func (s *Server) OnNotification(fn func(Notification)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sinks = append(s.sinks, fn)
}

// Handler serves the AWS wire protocols, the control API under
// /emulator/api/ and the buyer simulator under /emulator/.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{$}", s.serveJSON)
	mux.HandleFunc("POST /service/{service}/operation/{operation}", s.serveCBOR)
	s.controlRoutes(mux)
	s.simulatorRoutes(mux)
	return mux
}

// AddProduct creates or replaces a product.
func (s *Server) AddProduct(p Product) (Product, error) {
	if p.Code == "" {
		p.Code = randomString(25, lowerAlnum)
	}
	if !productCodeRE.MatchString(p.Code) || len(p.Code) > 255 {
		return Product{}, fmt.Errorf("%w: product code %q: must match %s and be at most 255 characters", ErrInvalid, p.Code, productCodeRE)
	}
	switch p.Type {
	case "":
		p.Type = ProductSubscription
	case ProductSubscription, ProductContract, ProductContractWithConsumption:
	default:
		return Product{}, fmt.Errorf("%w: product type %q: must be %s, %s or %s", ErrInvalid, p.Type, ProductSubscription, ProductContract, ProductContractWithConsumption)
	}
	if len(p.Dimensions) == 0 {
		return Product{}, fmt.Errorf("%w: product %s: at least one dimension is required", ErrInvalid, p.Code)
	}
	seen := map[string]bool{}
	for _, d := range p.Dimensions {
		if d.Name == "" || len(d.Name) > 255 {
			return Product{}, fmt.Errorf("%w: product %s: dimension name %q must be 1 to 255 characters", ErrInvalid, p.Code, d.Name)
		}
		if seen[d.Name] {
			return Product{}, fmt.Errorf("%w: product %s: duplicate dimension %q", ErrInvalid, p.Code, d.Name)
		}
		seen[d.Name] = true
	}
	if p.Name == "" {
		p.Name = p.Code
	}
	if p.ProductID == "" {
		p.ProductID = "prod-" + randomString(13, lowerAlnum)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := p
	cp.Dimensions = append([]Dimension(nil), p.Dimensions...)
	s.products[p.Code] = &cp
	return p, nil
}

// AddBuyer creates a buyer account; an empty AccountID gets a random 12-digit one.
func (s *Server) AddBuyer(b Buyer) (Buyer, error) {
	if b.AccountID == "" {
		b.AccountID = randomString(12, digits)
	}
	if !accountIDRE.MatchString(b.AccountID) {
		return Buyer{}, fmt.Errorf("%w: buyer account id %q: must be digits", ErrInvalid, b.AccountID)
	}
	if b.Name == "" {
		b.Name = "Buyer " + b.AccountID
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buyers[b.AccountID] = &b
	return b, nil
}

// SubscribeOptions are the choices a buyer makes on the listing page.
type SubscribeOptions struct {
	ProductCode    string           `json:"productCode"`
	BuyerAccountID string           `json:"buyerAccountId"`
	FreeTrial      bool             `json:"freeTrial"`
	Entitlements   map[string]int32 `json:"entitlements,omitempty"`
	// ContractMonths is the contract duration (contracts only; default 12).
	ContractMonths int `json:"contractMonths,omitempty"`
	// StartedAt backdates the agreement (zero: now), for usage of earlier
	// hours: usage from before an agreement started is not billed.
	StartedAt time.Time `json:"startedAt,omitzero"`
}

// SubscribeResult is what the buyer simulator needs to post to the seller.
type SubscribeResult struct {
	Subscription Subscription `json:"subscription"`
	Token        string       `json:"token"`
	// FulfillmentURL is where the buyer's browser posts the token.
	FulfillmentURL string `json:"fulfillmentUrl"`
}

// Subscribe has a buyer accept an offer. It emits the notifications AWS
// sends for a new agreement and returns a registration token.
func (s *Server) Subscribe(opts SubscribeOptions) (SubscribeResult, error) {
	s.mu.Lock()
	p, ok := s.products[opts.ProductCode]
	if !ok {
		s.mu.Unlock()
		return SubscribeResult{}, fmt.Errorf("%w: product %q", ErrNotFound, opts.ProductCode)
	}
	if _, ok := s.buyers[opts.BuyerAccountID]; !ok {
		s.mu.Unlock()
		return SubscribeResult{}, fmt.Errorf("%w: buyer %q", ErrNotFound, opts.BuyerAccountID)
	}
	for _, sub := range s.byProductAcc[p.Code+"\x00"+opts.BuyerAccountID] {
		if sub.Status == StatusActive || sub.Status == StatusUnsubscribePending {
			s.mu.Unlock()
			return SubscribeResult{}, fmt.Errorf("%w: buyer %s already has agreement %s for product %s", ErrConflict, opts.BuyerAccountID, sub.AgreementID, p.Code)
		}
	}
	now := s.Clock.Now()
	if opts.StartedAt.After(now) {
		s.mu.Unlock()
		return SubscribeResult{}, fmt.Errorf("%w: startedAt %s is in the future", ErrInvalid, opts.StartedAt.Format(time.RFC3339))
	}
	started := now
	if !opts.StartedAt.IsZero() {
		started = opts.StartedAt.UTC()
	}
	sub := &Subscription{
		AgreementID:    "agmt-" + randomString(25, lowerAlnum),
		OfferID:        "offer-" + randomString(13, lowerAlnum),
		ProductCode:    p.Code,
		BuyerAccountID: opts.BuyerAccountID,
		LicenseArn:     fmt.Sprintf("arn:aws:license-manager::%s:license:l-%s", opts.BuyerAccountID, randomString(32, hexDigits)),
		Status:         StatusActive,
		FreeTrial:      opts.FreeTrial,
		StartedAt:      started,
	}
	if !p.LicenseBased {
		sub.CustomerIdentifier = randomString(11, alnum)
	}
	if p.isContract() {
		if err := p.checkEntitlements(opts.Entitlements); err != nil {
			s.mu.Unlock()
			return SubscribeResult{}, err
		}
		sub.Entitlements = copyEntitlements(opts.Entitlements)
		if len(sub.Entitlements) == 0 {
			sub.Entitlements = map[string]int32{p.Dimensions[0].Name: 1}
		}
		months := opts.ContractMonths
		if months <= 0 {
			months = 12
		}
		sub.ExpiresAt = started.AddDate(0, months, 0)
	}
	s.subscriptions[sub.AgreementID] = sub
	s.byLicense[sub.LicenseArn] = sub
	if sub.CustomerIdentifier != "" {
		s.byProductCI[p.Code+"\x00"+sub.CustomerIdentifier] = sub
	}
	s.byProductAcc[p.Code+"\x00"+sub.BuyerAccountID] = append(s.byProductAcc[p.Code+"\x00"+sub.BuyerAccountID], sub)
	tok := s.issueTokenLocked(sub)
	out := s.emitLocked(sub, p, changeSubscribe)
	result := SubscribeResult{Subscription: *sub, Token: tok, FulfillmentURL: p.FulfillmentURL}
	s.mu.Unlock()
	s.deliver(out)
	return result, nil
}

func (p *Product) checkEntitlements(e map[string]int32) error {
	for dim, v := range e {
		if !p.hasDimension(dim) {
			return fmt.Errorf("%w: dimension %q is not a dimension of product %s", ErrInvalid, dim, p.Code)
		}
		if v < 0 {
			return fmt.Errorf("%w: entitlement for %q must not be negative", ErrInvalid, dim)
		}
	}
	return nil
}

func copyEntitlements(e map[string]int32) map[string]int32 {
	if e == nil {
		return nil
	}
	out := make(map[string]int32, len(e))
	for k, v := range e {
		out[k] = v
	}
	return out
}

// NewToken issues a fresh registration token for an existing agreement, as
// when a buyer clicks "Set up your account" again.
func (s *Server) NewToken(agreementID string) (SubscribeResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, ok := s.subscriptions[agreementID]
	if !ok {
		return SubscribeResult{}, fmt.Errorf("%w: agreement %q", ErrNotFound, agreementID)
	}
	p := s.products[sub.ProductCode]
	return SubscribeResult{Subscription: *sub, Token: s.issueTokenLocked(sub), FulfillmentURL: p.FulfillmentURL}, nil
}

func (s *Server) issueTokenLocked(sub *Subscription) string {
	// Real tokens are long opaque strings; ours carry enough entropy to be unguessable.
	tok := randomString(64, alnum)
	s.tokens[tok] = &token{agreementID: sub.AgreementID, issuedAt: s.Clock.Now()}
	return tok
}

// SetEntitlements changes a contract's entitlements (an upgrade or
// amendment) and emits entitlement-updated and the agreement/license events.
func (s *Server) SetEntitlements(agreementID string, e map[string]int32) (Subscription, error) {
	s.mu.Lock()
	sub, p, err := s.activeLocked(agreementID)
	if err == nil && !p.isContract() {
		err = fmt.Errorf("%w: product %s is not a contract", ErrInvalid, p.Code)
	}
	if err == nil {
		err = p.checkEntitlements(e)
	}
	if err != nil {
		s.mu.Unlock()
		return Subscription{}, err
	}
	sub.Entitlements = copyEntitlements(e)
	out := s.emitLocked(sub, p, changeAmend)
	res := *sub
	s.mu.Unlock()
	s.deliver(out)
	return res, nil
}

// Cancel has the buyer cancel: unsubscribe-pending and the agreement-ended
// events now, unsubscribe-success after the final metering window. Usage is
// accepted during that window; contract entitlements end at once.
func (s *Server) Cancel(agreementID string) (Subscription, error) {
	return s.end(agreementID, changeCancel)
}

// Expire ends a contract at its expiration (or now, if that is later).
func (s *Server) Expire(agreementID string) (Subscription, error) {
	return s.end(agreementID, changeExpire)
}

// FailPayment simulates a failed payment: the agreement is terminated and
// subscribe-fail is sent. ASSUMPTION: AWS documents subscribe-fail for a
// failed subscription; we use it for any payment failure.
func (s *Server) FailPayment(agreementID string) (Subscription, error) {
	return s.end(agreementID, changeFail)
}

func (s *Server) end(agreementID string, c change) (Subscription, error) {
	s.mu.Lock()
	sub, p, err := s.activeLocked(agreementID)
	if err != nil {
		s.mu.Unlock()
		return Subscription{}, err
	}
	now := s.Clock.Now()
	sub.EndedAt = now
	switch c {
	case changeCancel:
		// The final metering window runs from now; unsubscribe-success follows it.
		sub.Status = StatusUnsubscribePending
		id := sub.AgreementID
		s.scheduled = append(s.scheduled, scheduled{at: now.Add(s.cfg.FinalMeteringWindow), fn: func() []Notification {
			sub := s.subscriptions[id]
			if sub == nil || sub.Status != StatusUnsubscribePending {
				return nil
			}
			sub.Status = StatusCancelled
			return s.emitLocked(sub, s.products[sub.ProductCode], changeUnsubscribed)
		}})
	case changeExpire:
		sub.Status = StatusExpired
	case changeFail:
		sub.Status = StatusFailed
	}
	out := s.emitLocked(sub, p, c)
	res := *sub
	s.mu.Unlock()
	s.deliver(out)
	return res, nil
}

func (s *Server) activeLocked(agreementID string) (*Subscription, *Product, error) {
	sub, ok := s.subscriptions[agreementID]
	if !ok {
		return nil, nil, fmt.Errorf("%w: agreement %q", ErrNotFound, agreementID)
	}
	if sub.Status != StatusActive {
		return nil, nil, fmt.Errorf("%w: agreement %s is %s", ErrConflict, agreementID, sub.Status)
	}
	return sub, s.products[sub.ProductCode], nil
}

// RunDue fires scheduled changes (such as unsubscribe-success an hour after
// unsubscribe-pending) whose time has come by the emulator clock.
func (s *Server) RunDue() {
	s.mu.Lock()
	now := s.Clock.Now()
	var out []Notification
	var keep []scheduled
	sort.SliceStable(s.scheduled, func(i, j int) bool { return s.scheduled[i].at.Before(s.scheduled[j].at) })
	for _, sc := range s.scheduled {
		if !sc.at.After(now) {
			out = append(out, sc.fn()...)
		} else {
			keep = append(keep, sc)
		}
	}
	s.scheduled = keep
	s.mu.Unlock()
	s.deliver(out)
}

type scheduled struct {
	at time.Time
	fn func() []Notification
}

// Products lists the products, sorted by code.
func (s *Server) Products() []Product {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Product, 0, len(s.products))
	for _, p := range s.products {
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Code < out[j].Code })
	return out
}

// Buyers lists the buyers, sorted by account.
func (s *Server) Buyers() []Buyer {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Buyer, 0, len(s.buyers))
	for _, b := range s.buyers {
		out = append(out, *b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AccountID < out[j].AccountID })
	return out
}

// Subscriptions lists the agreements, oldest first.
func (s *Server) Subscriptions() []Subscription {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Subscription, 0, len(s.subscriptions))
	for _, sub := range s.subscriptions {
		out = append(out, *sub)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].StartedAt.Equal(out[j].StartedAt) {
			return out[i].StartedAt.Before(out[j].StartedAt)
		}
		return out[i].AgreementID < out[j].AgreementID
	})
	return out
}

// Billed returns the billed records, filtered by buyer account when
// account is non-empty, sorted by buyer, dimension and hour.
func (s *Server) Billed(account string) []BilledRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []BilledRecord{}
	for _, r := range s.billed {
		if account == "" || r.BuyerAccountID == account {
			cp := *r
			out = append(out, cp)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.BuyerAccountID != b.BuyerAccountID {
			return a.BuyerAccountID < b.BuyerAccountID
		}
		if a.Dimension != b.Dimension {
			return a.Dimension < b.Dimension
		}
		if !a.Hour.Equal(b.Hour) {
			return a.Hour.Before(b.Hour)
		}
		return a.Mode < b.Mode
	})
	return out
}

// Calls returns how many times each operation was called (including faulted calls).
func (s *Server) Calls() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.calls))
	for k, v := range s.calls {
		out[k] = v
	}
	return out
}

// Errors of the control API.
var (
	ErrNotFound = errorString("not found")
	ErrConflict = errorString("conflict")
	ErrInvalid  = errorString("invalid")
)

type errorString string

func (e errorString) Error() string { return string(e) }

const (
	lowerAlnum = "abcdefghijklmnopqrstuvwxyz0123456789"
	alnum      = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	digits     = "0123456789"
	hexDigits  = "0123456789abcdef"
)

func randomString(n int, alphabet string) string {
	// Rejection sampling over random bytes keeps the choice uniform.
	limit := 256 - 256%len(alphabet)
	out := make([]byte, 0, n)
	buf := make([]byte, n+n/2+8)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			panic(err) // crypto/rand never fails on supported platforms
		}
		for _, b := range buf {
			if int(b) < limit && len(out) < n {
				out = append(out, alphabet[int(b)%len(alphabet)])
			}
		}
	}
	return string(out)
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

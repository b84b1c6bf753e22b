package mpsaas

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/mail"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// Listing types, the sample stack's TypeOfSaaSListing values.
const (
	ListingSubscriptions             = "subscriptions"
	ListingContracts                 = "contracts"
	ListingContractsWithSubscription = "contracts_with_subscription"
)

// IsContract reports whether a listing type has contract entitlements.
func IsContract(listing string) bool {
	return listing == ListingContracts || listing == ListingContractsWithSubscription
}

// OfferTypeFreeTrial is the x-amzn-marketplace-offer-type of free trials.
const OfferTypeFreeTrial = "free-trial"

// Identity is everything that can identify one buyer's subscription. Legacy
// products identify a buyer by CustomerIdentifier + ProductCode; products
// created since 2026-06-01 by CustomerAWSAccountID + LicenseArn. Events carry
// only some of these fields; any one shared non-empty field links them.
type Identity struct {
	CustomerIdentifier   string `json:"customerIdentifier,omitempty"`
	CustomerAWSAccountID string `json:"customerAWSAccountId,omitempty"`
	// LicenseID is the "l-…" part of the license ARN. EventBridge events
	// write the ARN without its "arn:" prefix, so we correlate on the id.
	LicenseID   string `json:"licenseId,omitempty"`
	ProductCode string `json:"productCode,omitempty"`
	// AgreementID comes only with EventBridge events.
	AgreementID string `json:"agreementId,omitempty"`
}

// LicenseID returns the "l-…" license id of a license ARN (with or without
// the "arn:" prefix), or "" if there is none.
func LicenseID(arn string) string {
	i := strings.LastIndex(arn, "l-")
	if i < 0 || (i > 0 && arn[i-1] != '/' && arn[i-1] != ':') {
		return ""
	}
	return arn[i:]
}

// SubscriberKey returns the key a subscriber is stored under: the
// CustomerIdentifier for legacy products (the sample stack's partition key),
// otherwise "license:" + LicenseID, which is unique per agreement even when an
// account holds several concurrent agreements for one product.
func SubscriberKey(c Customer) string {
	if c.CustomerIdentifier != "" {
		return c.CustomerIdentifier
	}
	return "license:" + LicenseID(c.LicenseArn)
}

// Customer is what ResolveCustomer returns for a registration token.
type Customer struct {
	CustomerIdentifier   string `json:"customerIdentifier,omitempty"`
	CustomerAWSAccountID string `json:"customerAWSAccountId,omitempty"`
	LicenseArn           string `json:"licenseArn,omitempty"`
	ProductCode          string `json:"productCode,omitempty"`
}

// Identity returns the customer's identity.
func (c Customer) Identity() Identity {
	return Identity{
		CustomerIdentifier:   c.CustomerIdentifier,
		CustomerAWSAccountID: c.CustomerAWSAccountID,
		LicenseID:            LicenseID(c.LicenseArn),
		ProductCode:          c.ProductCode,
	}
}

// Validate checks that ResolveCustomer gave us a usable customer.
func (c Customer) Validate() error {
	if c.ProductCode == "" {
		return Errorf(EINVALID, "ResolveCustomer returned no product code")
	}
	if c.CustomerIdentifier == "" && (c.CustomerAWSAccountID == "" || LicenseID(c.LicenseArn) == "") {
		return Errorf(EINVALID, "ResolveCustomer returned neither a CustomerIdentifier nor a CustomerAWSAccountId with a LicenseArn")
	}
	return nil
}

// Contact is what a buyer enters on the registration page.
type Contact struct {
	CompanyName   string `json:"companyName"`
	ContactPerson string `json:"contactPerson"`
	ContactPhone  string `json:"contactPhone"`
	ContactEmail  string `json:"contactEmail"`
}

var phoneRE = regexp.MustCompile(`^\+?[0-9 ()./-]{6,30}$`)

// FieldErrors maps a form field to what is wrong with it.
type FieldErrors map[string]string

func (fe FieldErrors) Error() string {
	var parts []string
	for _, k := range []string{"companyName", "contactPerson", "contactPhone", "contactEmail"} {
		if m, ok := fe[k]; ok {
			parts = append(parts, m)
		}
	}
	return strings.Join(parts, " ")
}

// Normalize trims whitespace.
func (c Contact) Normalize() Contact {
	return Contact{
		CompanyName:   strings.TrimSpace(c.CompanyName),
		ContactPerson: strings.TrimSpace(c.ContactPerson),
		ContactPhone:  strings.TrimSpace(c.ContactPhone),
		ContactEmail:  strings.TrimSpace(c.ContactEmail),
	}
}

// Validate returns FieldErrors (nil if the contact is valid). Call Normalize first.
func (c Contact) Validate() FieldErrors {
	fe := FieldErrors{}
	text := func(field, label, v string, max int) {
		switch {
		case v == "":
			fe[field] = label + " is required."
		case !utf8.ValidString(v) || utf8.RuneCountInString(v) > max:
			fe[field] = fmt.Sprintf("%s must be at most %d characters.", label, max)
		case strings.ContainsAny(v, "\x00\r\n\t"):
			fe[field] = label + " must be a single line of text."
		}
	}
	text("companyName", "Company name", c.CompanyName, 200)
	text("contactPerson", "Contact person", c.ContactPerson, 200)
	switch {
	case c.ContactPhone == "":
		fe["contactPhone"] = "Phone number is required."
	case !phoneRE.MatchString(c.ContactPhone):
		fe["contactPhone"] = "Phone number may contain only digits, spaces, a leading + and ( ) . / - (6 to 30 characters)."
	}
	if c.ContactEmail == "" {
		fe["contactEmail"] = "Email address is required."
	} else if a, err := mail.ParseAddress(c.ContactEmail); err != nil || a.Address != c.ContactEmail || len(c.ContactEmail) > 254 || !strings.Contains(a.Address[strings.LastIndexByte(a.Address, '@'):], ".") {
		fe["contactEmail"] = "Email address must look like name@example.com."
	}
	if len(fe) == 0 {
		return nil
	}
	return fe
}

// Subscriber is one buyer's subscription to one product, as the seller
// knows it. It exists as soon as we hear of the buyer, from an event or a
// registration; Registered tells whether the buyer finished registration.
type Subscriber struct {
	Key string `json:"key"`
	Identity
	LicenseArn string `json:"licenseArn,omitempty"`
	Contact
	RegisteredAt time.Time `json:"registeredAt,omitzero"`
	// LinkedAccountID is the seller's own account id for the buyer, set
	// when the seller's sign-up redeems a claim code (sign-up handoff).
	LinkedAccountID string `json:"linkedAccountId,omitempty"`
	// ClaimID identifies the claim code last redeemed for the buyer: a
	// code redeems once.
	ClaimID string `json:"-"`
	// OfferType is "free-trial" when AWS reports a free trial term in the
	// buyer's agreement (Agreement API), empty otherwise. (It is not the
	// fulfillment POST's x-amzn-marketplace-offer-type, which the buyer's
	// browser could change.)
	OfferType string `json:"offerType,omitempty"`

	// State is folded from the subscription events.
	State
	// Entitlements are the contract entitlements last read from GetEntitlements.
	Entitlements []Entitlement `json:"entitlements,omitempty"`
	// EntitlementsRaw is that GetEntitlements response as JSON (the sample
	// stack's `entitlement` attribute).
	EntitlementsRaw       string    `json:"-"`
	EntitlementsCheckedAt time.Time `json:"entitlementsCheckedAt,omitzero"`
	// EntitlementHistory is every entitlement the buyer had with when it
	// was in force, so usage is measured against the entitlement of its
	// hour, not against whatever is stored when it is sealed (after a
	// cancellation, nothing). Kept by RecordEntitlements.
	EntitlementHistory []EntitlementPeriod `json:"entitlementHistory,omitempty"`

	// Access is the last access decision delivered to the seller, and
	// AccessVersion counts its changes (the idempotency key's suffix).
	Access        Access `json:"access"`
	AccessVersion int    `json:"accessVersion"`
	// AccessFingerprint identifies Access together with the entitlements it
	// was decided on, so an entitlement change is a new access change.
	AccessFingerprint string `json:"-"`

	CreatedAt time.Time `json:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt"`
	// Version guards against lost updates: a save succeeds only if the stored
	// version is still the one that was read.
	Version int `json:"-"`
}

// Registered reports whether the buyer completed registration.
func (s *Subscriber) Registered() bool { return !s.RegisteredAt.IsZero() }

// Entitlement is one contract entitlement from GetEntitlements.
type Entitlement struct {
	Dimension      string    `json:"dimension"`
	Value          any       `json:"value,omitempty"` // int64, float64, bool or string
	ExpirationDate time.Time `json:"expirationDate,omitzero"`
}

// ValidEntitlements reports whether there is at least one entitlement that
// has not expired at now. The sample stack treats no entitlements, or an
// expired one, as an expired contract.
func ValidEntitlements(es []Entitlement, now time.Time) bool {
	if len(es) == 0 {
		return false
	}
	for _, e := range es {
		if !e.ExpirationDate.IsZero() && !e.ExpirationDate.After(now) {
			return false
		}
	}
	return true
}

func fingerprint(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// EntitlementPeriod is an entitlement and when it was in force: from when
// it was first seen (zero: since the subscription began) until it was seen
// to change or end (zero: still in force), and never after its
// ExpirationDate.
type EntitlementPeriod struct {
	Entitlement
	From time.Time `json:"from,omitzero"`
	To   time.Time `json:"to,omitzero"`
}

// end is when the period stopped being in force (zero: it has not).
func (p EntitlementPeriod) end() time.Time {
	switch {
	case p.ExpirationDate.IsZero():
		return p.To
	case p.To.IsZero() || p.ExpirationDate.Before(p.To):
		return p.ExpirationDate
	}
	return p.To
}

// Entitlement history bounds: periods that ended this long ago can no
// longer decide a bill (AWS takes usage up to MeteringWindow old), and at
// most this many periods are kept.
const (
	entitlementHistoryKeep = 8 * 24 * time.Hour
	maxEntitlementPeriods  = 64
)

// RecordEntitlements returns history updated with the entitlements read
// at now: periods no longer read end at now, new ones begin at now. The
// first entitlements ever recorded count from the beginning of the
// subscription: the contract was in force before mpsaas first read it.
func RecordEntitlements(history []EntitlementPeriod, ents []Entitlement, now time.Time) []EntitlementPeriod {
	same := func(a, b Entitlement) bool {
		return a.Dimension == b.Dimension && fmt.Sprint(a.Value) == fmt.Sprint(b.Value) && a.ExpirationDate.Equal(b.ExpirationDate)
	}
	first := len(history) == 0
	out := make([]EntitlementPeriod, 0, len(history)+len(ents))
	seen := make([]bool, len(ents))
	for _, p := range history {
		if p.To.IsZero() {
			kept := false
			for i, e := range ents {
				if !seen[i] && same(p.Entitlement, e) {
					seen[i], kept = true, true
					break
				}
			}
			if !kept {
				p.To = now
			}
		}
		out = append(out, p)
	}
	for i, e := range ents {
		if !seen[i] {
			p := EntitlementPeriod{Entitlement: e, From: now}
			if first {
				p.From = time.Time{}
			}
			out = append(out, p)
		}
	}
	// Forget periods too old to matter, the oldest first past the cap.
	kept := out[:0]
	for _, p := range out {
		if e := p.end(); e.IsZero() || now.Sub(e) < entitlementHistoryKeep {
			kept = append(kept, p)
		}
	}
	if len(kept) > maxEntitlementPeriods {
		kept = kept[len(kept)-maxEntitlementPeriods:]
	}
	return kept
}

// EntitledQuantity is the whole-number entitlement for dimension during the
// hour that starts at hour: the largest in force at any moment of it (a
// buyer who had it for part of the hour is not billed for it). Without a
// history it is the current entitlement.
func EntitledQuantity(history []EntitlementPeriod, current []Entitlement, dimension string, hour time.Time) int64 {
	var best int64
	if len(history) == 0 {
		for _, e := range current {
			if e.Dimension == dimension {
				best = max(best, wholeNumber(e.Value))
			}
		}
		return best
	}
	hourEnd := hour.Add(time.Hour)
	for _, p := range history {
		if p.Dimension != dimension || !p.From.Before(hourEnd) {
			continue
		}
		if e := p.end(); !e.IsZero() && !e.After(hour) {
			continue
		}
		best = max(best, wholeNumber(p.Value))
	}
	return best
}

func wholeNumber(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case int32:
		return int64(x)
	case int:
		return int64(x)
	case float64:
		return int64(x)
	}
	return 0
}

// AccessView is a buyer's current access as the entitlements API answers
// it (GET /v1/entitlements): from the store, without calling AWS.
type AccessView struct {
	// Customer is what was asked for: a subscriber key, CustomerIdentifier
	// or LicenseArn.
	Customer             string        `json:"customer"`
	SubscriberKey        string        `json:"subscriberKey"`
	ProductCode          string        `json:"productCode,omitempty"`
	CustomerIdentifier   string        `json:"customerIdentifier,omitempty"`
	CustomerAWSAccountID string        `json:"customerAWSAccountId,omitempty"`
	LicenseArn           string        `json:"licenseArn,omitempty"`
	LinkedAccountID      string        `json:"linkedAccountId,omitempty"`
	AgreementID          string        `json:"agreementId,omitempty"`
	Access               Access        `json:"access"`
	Status               Status        `json:"status"`
	FreeTrial            bool          `json:"freeTrial"`
	Entitlements         []Entitlement `json:"entitlements"`
	// Version counts the buyer's access changes (the webhooks' version):
	// a view with a lower one is older.
	Version int `json:"version"`
}

// NewAccessView is the view of s asked for as customer.
func NewAccessView(customer string, s *Subscriber) AccessView {
	ents := s.Entitlements
	if ents == nil {
		ents = []Entitlement{}
	}
	return AccessView{Customer: customer, SubscriberKey: s.Key, ProductCode: s.ProductCode, CustomerIdentifier: s.CustomerIdentifier,
		CustomerAWSAccountID: s.CustomerAWSAccountID, LicenseArn: s.LicenseArn, LinkedAccountID: s.LinkedAccountID, AgreementID: s.AgreementID, Access: s.Access, Status: s.Status,
		FreeTrial: s.FreeTrial, Entitlements: ents, Version: s.AccessVersion}
}

// Entitled reports whether the buyer may use dimension at now: they have
// access (granted, or cancelling within the final window) and, when they
// hold contract entitlements, one for dimension that has not expired. A
// buyer without entitlements (a subscription, paid by usage) may use any
// dimension; an empty dimension asks about access alone.
func (v AccessView) Entitled(dimension string, now time.Time) bool {
	if v.Access != AccessGranted && v.Access != AccessPendingCancellation {
		return false
	}
	if dimension == "" || len(v.Entitlements) == 0 {
		return true
	}
	for _, e := range v.Entitlements {
		if e.Dimension == dimension && (e.ExpirationDate.IsZero() || now.Before(e.ExpirationDate)) {
			return true
		}
	}
	return false
}

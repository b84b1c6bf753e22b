package mpsaas

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// EventKind is a normalized subscription event, from SNS or EventBridge.
type EventKind string

// Event kinds. The SNS actions keep their names; EventBridge detail-types
// are mapped to the agreement-* and license-* kinds.
const (
	EventSubscribeSuccess     EventKind = "subscribe-success"
	EventSubscribeFail        EventKind = "subscribe-fail"
	EventUnsubscribePending   EventKind = "unsubscribe-pending"
	EventUnsubscribeSuccess   EventKind = "unsubscribe-success"
	EventEntitlementUpdated   EventKind = "entitlement-updated"
	EventAgreementCreated     EventKind = "agreement-created"
	EventAgreementAmended     EventKind = "agreement-amended"
	EventAgreementEnded       EventKind = "agreement-ended"
	EventLicenseUpdated       EventKind = "license-updated"
	EventLicenseDeprovisioned EventKind = "license-deprovisioned"
)

// rank orders events that carry the same timestamp (EventBridge times have
// one-second precision): a start comes before a change, a change before an
// end, and the final end last.
func (k EventKind) rank() int {
	switch k {
	case EventSubscribeSuccess, EventAgreementCreated:
		return 0
	case EventAgreementAmended, EventLicenseUpdated, EventEntitlementUpdated:
		return 1
	case EventSubscribeFail:
		return 2
	case EventUnsubscribePending, EventAgreementEnded:
		return 3
	case EventUnsubscribeSuccess, EventLicenseDeprovisioned:
		return 4
	}
	return 5
}

// NeedsEntitlements reports whether the event says entitlements may have
// changed, so they must be re-read with GetEntitlements.
func (k EventKind) NeedsEntitlements() bool {
	switch k {
	case EventEntitlementUpdated, EventLicenseUpdated, EventAgreementCreated, EventAgreementAmended, EventAgreementEnded, EventLicenseDeprovisioned:
		return true
	}
	return false
}

// Event is one subscription notification, normalized.
type Event struct {
	// ID deduplicates redeliveries: the SNS MessageId or the EventBridge id.
	ID     string    `json:"id"`
	Kind   EventKind `json:"kind"`
	Source string    `json:"source"` // "sns" or "eventbridge"
	// Time is when AWS emitted the event; events fold in this order.
	Time time.Time `json:"time"`
	Identity
	// FreeTrial is set by subscribe-success/-fail (isFreeTrialTermPresent).
	FreeTrial *bool  `json:"freeTrial,omitempty"`
	OfferID   string `json:"offerId,omitempty"`
	// AgreementStatus is the EventBridge agreement status (ACTIVE, CANCELLED, ...).
	AgreementStatus string    `json:"agreementStatus,omitempty"`
	ReceivedAt      time.Time `json:"receivedAt"`
	// Raw is the message as received (the SNS envelope or the EventBridge
	// event, at most 256 KB), kept for the seller console.
	Raw string `json:"-"`
}

// Status is a subscription's state.
type Status string

// Subscription states.
const (
	StatusPending            Status = "pending" // no subscription event yet
	StatusActive             Status = "active"
	StatusUnsubscribePending Status = "unsubscribe-pending"
	StatusCancelled          Status = "cancelled"
	StatusFailed             Status = "failed"
)

// Statuses are all subscription states.
var Statuses = []Status{StatusPending, StatusActive, StatusUnsubscribePending, StatusCancelled, StatusFailed}

// EndingStatuses are the states of a subscription that is ending or has
// ended: its final usage is sent at once (metering's flushing).
var EndingStatuses = []Status{StatusUnsubscribePending, StatusCancelled, StatusFailed}

// State is what the events say about a subscription.
type State struct {
	Status    Status `json:"status"`
	FreeTrial bool   `json:"freeTrial"`
	// FreeTrialKnown tells whether an event said whether a free trial applies.
	FreeTrialKnown bool   `json:"-"`
	OfferID        string `json:"offerId,omitempty"`
	// LastEventAt is the time of the newest event folded in.
	LastEventAt time.Time `json:"lastEventAt,omitzero"`
	// FinalWindowFrom is when the final metering window of a cancellation
	// began (unsubscribe-pending, or License Deprovisioned): access ends
	// FinalMeteringWindow later, or when AWS says the subscription ended.
	FinalWindowFrom time.Time `json:"finalWindowFrom,omitzero"`
}

// SortEvents orders events by time, then by kind rank, then by id, so the
// fold is the same whatever order they arrived in.
func SortEvents(events []Event) {
	sort.SliceStable(events, func(i, j int) bool {
		a, b := events[i], events[j]
		if !a.Time.Equal(b.Time) {
			return a.Time.Before(b.Time)
		}
		if a.Kind.rank() != b.Kind.rank() {
			return a.Kind.rank() < b.Kind.rank()
		}
		return a.ID < b.ID
	})
}

// Fold computes the subscription state from its events. It is a pure
// function of the set of events: duplicates (same ID) count once, and
// arrival order does not matter.
func Fold(events []Event) State {
	evs := make([]Event, 0, len(events))
	seen := map[string]bool{}
	for _, e := range events {
		if !seen[e.ID] {
			seen[e.ID] = true
			evs = append(evs, e)
		}
	}
	SortEvents(evs)
	st := State{Status: StatusPending}
	ended := func() bool { return st.Status == StatusCancelled || st.Status == StatusFailed }
	// cancelling starts (or continues) the final metering window: the SNS
	// and EventBridge paths give the same timeline. The window counts from
	// its first start (unsubscribe-pending, or License Deprovisioned, which
	// AWS documents as "the start of a 1-hour final reporting window").
	cancelling := func(windowStarts bool, at time.Time) {
		if ended() {
			return
		}
		st.Status = StatusUnsubscribePending
		if windowStarts && st.FinalWindowFrom.IsZero() {
			st.FinalWindowFrom = at
		}
	}
	for _, e := range evs {
		switch e.Kind {
		case EventSubscribeSuccess, EventAgreementCreated, EventAgreementAmended:
			st.Status, st.FinalWindowFrom = StatusActive, time.Time{}
		case EventSubscribeFail:
			st.Status = StatusFailed
		case EventUnsubscribePending, EventLicenseDeprovisioned:
			cancelling(true, e.Time)
		case EventAgreementEnded:
			switch e.AgreementStatus {
			case "EXPIRED":
				// A contract that ran out ends at once: one change, revoked.
				if !ended() {
					st.Status = StatusCancelled
				}
			case "TERMINATED":
				if !ended() {
					st.Status = StatusFailed
				}
			default: // CANCELLED (or replaced): the window starts at Deprovisioned
				cancelling(false, e.Time)
			}
		case EventUnsubscribeSuccess:
			if st.Status != StatusFailed {
				st.Status = StatusCancelled
			}
		}
		if e.FreeTrial != nil {
			st.FreeTrial, st.FreeTrialKnown = *e.FreeTrial, true
		}
		if e.OfferID != "" {
			st.OfferID = e.OfferID
		}
		st.LastEventAt = e.Time
	}
	return st
}

// Access is the access decision delivered to the seller's system.
type Access string

// Access decisions.
const (
	AccessNone                Access = ""                     // nothing to deliver (not registered, or not yet confirmed)
	AccessGranted             Access = "granted"              // give the buyer access
	AccessPendingCancellation Access = "pending-cancellation" // cancelling: access ends soon; final usage is being metered
	AccessRevoked             Access = "revoked"              // take access away
)

// AccessPolicy is what the access decision depends on besides the
// subscriber.
type AccessPolicy struct {
	// Listing is the TypeOfSaaSListing; contracts need valid entitlements.
	Listing string
	// RevokeOnCancel revokes access as soon as a buyer cancels, instead of
	// keeping it (pending-cancellation) through the final metering window.
	RevokeOnCancel bool
}

// FinalWindowEnded reports whether the final metering window of a
// cancelling subscription has passed at now.
func (s *Subscriber) FinalWindowEnded(now time.Time) bool {
	return s.Status == StatusUnsubscribePending && !s.FinalWindowFrom.IsZero() && !now.Before(s.FinalWindowFrom.Add(FinalMeteringWindow))
}

// DecideAccess returns the access a subscriber should have at now, and a
// fingerprint of everything the decision depends on (so an entitlement
// change under unchanged access still counts as a change).
func DecideAccess(s *Subscriber, p AccessPolicy, now time.Time) (Access, string) {
	if !s.Registered() {
		return AccessNone, ""
	}
	contract := IsContract(p.Listing)
	valid := ValidEntitlements(s.Entitlements, now)
	var a Access
	switch s.Status {
	case StatusActive:
		a = AccessGranted
		if contract && !valid && !s.EntitlementsCheckedAt.IsZero() {
			a = AccessRevoked // the contract expired or was cancelled
		}
	case StatusPending:
		// Contracts are confirmed by their entitlements even before an event.
		if contract && valid {
			a = AccessGranted
		}
	case StatusUnsubscribePending:
		a = AccessPendingCancellation
		if p.RevokeOnCancel || s.FinalWindowEnded(now) {
			a = AccessRevoked
		}
	case StatusCancelled, StatusFailed:
		a = AccessRevoked
	}
	if (a == AccessRevoked || a == AccessPendingCancellation) && s.Access == AccessNone {
		// Never granted: nothing to revoke, nor to warn of.
		return AccessNone, ""
	}
	if a == AccessNone {
		return a, ""
	}
	var ents []string
	for _, e := range s.Entitlements {
		ents = append(ents, fmt.Sprintf("%s=%v@%d", e.Dimension, e.Value, e.ExpirationDate.Unix()))
	}
	sort.Strings(ents)
	return a, fingerprint(string(a), strings.Join(ents, ","), fmt.Sprint(s.FreeTrial))
}

// AccessChange is one change of a buyer's access, delivered at least once
// to every configured channel (webhook, notification).
type AccessChange struct {
	// IdempotencyKey is stable across redeliveries: subscriber key + version.
	IdempotencyKey string `json:"idempotencyKey"`
	// Event is what happened: "access.changed", or "contact.updated" when
	// a registered buyer changed their contact details (access unchanged).
	Event      string        `json:"event"`
	Access     Access        `json:"access"`
	Version    int           `json:"version"`
	Subscriber SubscriberDTO `json:"subscriber"`
	OccurredAt time.Time     `json:"occurredAt"`
}

// SubscriberDTO is the subscriber as sent to the seller's systems.
type SubscriberDTO struct {
	Key                  string `json:"key"`
	CustomerIdentifier   string `json:"customerIdentifier,omitempty"`
	CustomerAWSAccountID string `json:"customerAWSAccountId,omitempty"`
	LicenseArn           string `json:"licenseArn,omitempty"`
	ProductCode          string `json:"productCode"`
	// LinkedAccountID is the seller's account id for the buyer (sign-up handoff).
	LinkedAccountID string `json:"linkedAccountId,omitempty"`
	Contact
	Status       Status        `json:"status"`
	FreeTrial    bool          `json:"freeTrial"`
	Entitlements []Entitlement `json:"entitlements,omitempty"`
}

// NewAccessChange builds the change record for the subscriber's current access.
func NewAccessChange(s *Subscriber, now time.Time) AccessChange {
	return AccessChange{
		IdempotencyKey: fmt.Sprintf("%s:%d", s.Key, s.AccessVersion),
		Event:          EventAccessChanged,
		Access:         s.Access,
		Version:        s.AccessVersion,
		OccurredAt:     now,
		Subscriber: SubscriberDTO{
			Key: s.Key, CustomerIdentifier: s.CustomerIdentifier, CustomerAWSAccountID: s.CustomerAWSAccountID,
			LicenseArn: s.LicenseArn, ProductCode: s.ProductCode, LinkedAccountID: s.LinkedAccountID, Contact: s.Contact,
			Status: s.Status, FreeTrial: s.FreeTrial, Entitlements: s.Entitlements,
		},
	}
}

// Kinds of change delivered (AccessChange.Event).
const (
	EventAccessChanged  = "access.changed"
	EventContactUpdated = "contact.updated"
)

// Outbound delivery channels for access changes.
const (
	ChannelWebhook = "webhook"
	ChannelNotify  = "notify"
	ChannelSNS     = "sns" // the access-change SNS topic
)

// OutboxMessage is an access change waiting for delivery on one channel.
type OutboxMessage struct {
	ID             string // opaque, store-specific
	Channel        string
	IdempotencyKey string
	Payload        json.RawMessage
	Attempts       int
	NextAttemptAt  time.Time
	LastError      string
	// SubscriberKey, CreatedAt and DeliveredAt (zero: not delivered) are
	// filled by the console's reads (DeliveriesFor, FailedDeliveries).
	SubscriberKey string
	CreatedAt     time.Time
	DeliveredAt   time.Time
	// History is the delivery attempts, oldest first (the console's
	// reads; SQLite keeps the last 20).
	History []DeliveryAttempt
}

// DeliveryAttempt is one attempt to deliver an access change.
type DeliveryAttempt struct {
	At time.Time `json:"at"`
	// Error is the channel's answer to a failed attempt ("" delivered).
	Error string `json:"error,omitempty"`
}

package mpsaas

import (
	"context"
	"sort"
	"strings"
	"time"
)

// ConsoleStore is what the seller console reads and changes beyond the
// workflows' ports. Both stores implement it.
type ConsoleStore interface {
	// ListSubscribers returns a page of the subscribers that match f, and
	// the cursor of the next page ("" after the last).
	ListSubscribers(ctx context.Context, f SubscriberFilter) (SubscriberPage, error)
	// DeliveriesFor returns the access changes queued for s on channels
	// (newest first, at most its last 50 access versions), with their
	// delivery state.
	DeliveriesFor(ctx context.Context, s *Subscriber, channels []string) ([]OutboxMessage, error)
	// FailedDeliveries returns undelivered access changes whose delivery
	// failed at least once, oldest first, at most limit.
	FailedDeliveries(ctx context.Context, limit int) ([]OutboxMessage, error)
	// RetryDelivery makes an undelivered message due at now (ENOTFOUND if
	// there is no such undelivered message).
	RetryDelivery(ctx context.Context, id string, now time.Time) error
}

// SubscriberFilter selects subscribers for the console. Empty fields do
// not filter.
type SubscriberFilter struct {
	// Query matches, without regard to case, a substring of the company,
	// contact email or person, AWS account id, customer identifier, license
	// ARN or key.
	Query       string
	ProductCode string
	Status      Status
	// FreeTrial keeps only buyers with a free trial term.
	FreeTrial bool
	// Unregistered keeps only buyers who have not completed registration.
	Unregistered bool
	// After is the cursor a previous page returned.
	After string
	// Limit is the page size (default 50, at most 500).
	Limit int
}

// PageSize is the filter's page size after defaults and bounds.
func (f SubscriberFilter) PageSize() int {
	switch {
	case f.Limit <= 0:
		return 50
	case f.Limit > 500:
		return 500
	}
	return f.Limit
}

// Match reports whether s passes the filter (not the cursor). Both stores
// use it, so a search finds the same buyers on either.
func (f SubscriberFilter) Match(s *Subscriber) bool {
	if f.ProductCode != "" && s.ProductCode != f.ProductCode ||
		f.Status != "" && s.Status != f.Status ||
		f.FreeTrial && !s.FreeTrial ||
		f.Unregistered && s.Registered() {
		return false
	}
	q := strings.ToLower(strings.TrimSpace(f.Query))
	if q == "" {
		return true
	}
	for _, v := range []string{s.CompanyName, s.ContactEmail, s.ContactPerson, s.CustomerAWSAccountID, s.CustomerIdentifier, s.LicenseArn, s.Key, s.LinkedAccountID} {
		if strings.Contains(strings.ToLower(v), q) {
			return true
		}
	}
	return false
}

// SubscriberPage is one page of ListSubscribers.
type SubscriberPage struct {
	Subscribers []*Subscriber
	// Next is the cursor of the next page, "" when this is the last.
	Next string
	// Scanned counts the subscribers read to fill the page (the cost of a
	// search).
	Scanned int
}

// UsageHistory is a buyer's usage by dimension and hour, for the console's
// chart. Both metering stores implement it.
type UsageHistory interface {
	// UsageHistory returns the buyer's usage of every dimension in the hours
	// from..to (inclusive), by hour then dimension: sealed hours from their
	// meter records, open hours from the pending usage.
	UsageHistory(ctx context.Context, subscriberKey string, from, to time.Time) ([]HourUsage, error)
}

// HourUsage is a buyer's usage of one dimension in one hour and what
// became of it.
type HourUsage struct {
	Dimension string    `json:"dimension"`
	Hour      time.Time `json:"hour"`
	// Usage is the usage reported; Quantity what the hour's meter record
	// carries to AWS (less what a contract's entitlement covers).
	Usage    int64 `json:"usage"`
	Quantity int64 `json:"quantity"`
	// State is the meter record's (UsagePending when not sealed yet).
	State            string `json:"state"`
	BatchID          int64  `json:"batchId,omitempty"`
	MeteringRecordID string `json:"meteringRecordId,omitempty"`
	Reason           string `json:"reason,omitempty"`
}

// SortHourUsage orders usage by hour, then dimension.
func SortHourUsage(u []HourUsage) {
	sort.Slice(u, func(i, j int) bool {
		if !u[i].Hour.Equal(u[j].Hour) {
			return u[i].Hour.Before(u[j].Hour)
		}
		return u[i].Dimension < u[j].Dimension
	})
}

// ProductHour is the usage of one product in one hour, and what AWS billed
// for it (sealed hours).
type ProductHour struct {
	ProductCode string    `json:"productCode"`
	Hour        time.Time `json:"hour"`
	Usage       int64     `json:"usage"`
	Billed      int64     `json:"billed"`
}

// DeadNotification is an incoming notification (SNS message or EventBridge
// event) that could not be handled and was set aside.
type DeadNotification struct {
	ID       int64     `json:"id"`
	Body     string    `json:"body"`
	Attempts int       `json:"attempts"`
	Reason   string    `json:"reason"`
	DeadAt   time.Time `json:"deadAt"`
}

// HourSummary is what became of one hour's usage, for the console.
type HourSummary struct {
	Hour time.Time `json:"hour"`
	// Counts are the hour's usage by state (the states of MeterSummary);
	// nil when the store has not counted an hour still being metered.
	Counts map[string]StateCount `json:"counts,omitempty"`
	// Late counts the hour's meter records that carry late usage of
	// earlier hours (-1: not known).
	Late int64 `json:"late"`
	// Done: every record of the hour reached a final state.
	Done bool `json:"done"`
	// Sealed is how many of the hour's parts are sealed, of Parts (stores
	// that seal an hour in parts; 0 of 0 otherwise).
	Sealed int `json:"sealed,omitempty"`
	Parts  int `json:"parts,omitempty"`
}

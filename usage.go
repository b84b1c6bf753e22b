package mpsaas

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// AWS limits for metering (marketplace-api.md §2.1, §2.3).
const (
	MaxBatchRecords     = 25
	MaxQuantity         = 2147483647
	MaxTagsPerRecord    = 5
	MaxDimensionLength  = 255
	MeteringWindow      = 24 * time.Hour // records older than this are refused
	MonthEndGrace       = 6 * time.Hour  // previous month accepted until 06:00 UTC on the 1st
	FinalMeteringWindow = time.Hour      // after cancellation
)

// tagRE is the service model's tag pattern taken literally ("+ -=" is a range).
var tagRE = regexp.MustCompile(`^[a-zA-Z0-9+ -=._:\/@]+$`)

// Usage is one usage record as a seller's application reports it.
type Usage struct {
	// Customer identifies the buyer: a subscriber key (as in webhooks), a
	// CustomerIdentifier, or a license ARN or id.
	Customer  string            `json:"customer"`
	Dimension string            `json:"dimension"`
	Quantity  int64             `json:"quantity"`
	Time      time.Time         `json:"time"`
	Tags      map[string]string `json:"tags,omitempty"`
}

// Validate checks one record against AWS's limits at now. Future times
// beyond 5 minutes are refused; old times are accepted (and flagged later if
// AWS will not take them).
func (u Usage) Validate(now time.Time) error {
	switch {
	case strings.TrimSpace(u.Customer) == "":
		return Errorf(EINVALID, "customer is required")
	case len(u.Customer) > 2048 || !cleanText(u.Customer):
		return Errorf(EINVALID, "customer must be at most 2048 characters of valid UTF-8 text without control characters")
	}
	if err := ValidateDimension(u.Dimension); err != nil {
		return err
	}
	switch {
	case u.Quantity < 0 || u.Quantity > MaxQuantity:
		return Errorf(EINVALID, "quantity must be between 0 and %d", MaxQuantity)
	case u.Time.IsZero():
		return Errorf(EINVALID, "time is required")
	case u.Time.After(now.Add(5 * time.Minute)):
		return Errorf(EINVALID, "time %s is in the future", u.Time.UTC().Format(time.RFC3339))
	case len(u.Tags) > MaxTagsPerRecord:
		return Errorf(EINVALID, "at most %d tags are allowed", MaxTagsPerRecord)
	}
	for k, v := range u.Tags {
		if len(k) < 1 || len(k) > 100 || !tagRE.MatchString(k) {
			return Errorf(EINVALID, "tag key %q must be 1 to 100 characters of letters, digits and + - = . _ : / @ space", k)
		}
		if len(v) < 1 || len(v) > 256 || !tagRE.MatchString(v) {
			return Errorf(EINVALID, "tag value %q must be 1 to 256 characters of letters, digits and + - = . _ : / @ space", v)
		}
	}
	return nil
}

// TagSignature is a canonical encoding of a tag set ("" for no tags).
func TagSignature(tags map[string]string) string {
	if len(tags) == 0 {
		return ""
	}
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(tags[k])
		b.WriteByte(0)
	}
	return b.String()
}

// ParseTagSignature inverts TagSignature.
func ParseTagSignature(sig string) map[string]string {
	if sig == "" {
		return nil
	}
	parts := strings.Split(strings.TrimSuffix(sig, "\x00"), "\x00")
	out := make(map[string]string, len(parts)/2)
	for i := 0; i+1 < len(parts); i += 2 {
		out[parts[i]] = parts[i+1]
	}
	return out
}

// UsageRequest is one ingestion request.
type UsageRequest struct {
	// IdempotencyKey makes a retried request count once.
	IdempotencyKey string
	Records        []Usage
}

// Hash fingerprints the request's records so a reused idempotency key with
// different records can be refused.
func (r UsageRequest) Hash() string {
	h := sha256.New()
	for _, u := range r.Records {
		fmt.Fprintf(h, "%s\x00%s\x00%d\x00%d\x00%s\x01", u.Customer, u.Dimension, u.Quantity, u.Time.UnixNano(), TagSignature(u.Tags))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// UsageReceipt is the answer to an ingestion request.
type UsageReceipt struct {
	IdempotencyKey string    `json:"idempotencyKey"`
	Accepted       int       `json:"accepted"`
	ReceivedAt     time.Time `json:"receivedAt"`
	// Replayed is true when the key was seen before and nothing was added.
	Replayed bool `json:"replayed"`
	// FirstID is the ledger id of the first record; ids are consecutive.
	FirstID int64 `json:"firstId"`
}

// UsageRow is a validated usage record bound to a subscriber, as stored.
type UsageRow struct {
	SubscriberKey string
	Dimension     string
	Quantity      int64
	Time          time.Time
	TagSig        string
}

// Hour returns the start of the hour containing t (UTC).
func Hour(t time.Time) time.Time { return t.UTC().Truncate(time.Hour) }

// InMeteringWindow reports whether AWS accepts a record for hour at now:
// less than 24 hours old, and for a previous month only until 06:00 UTC on
// the 1st.
func InMeteringWindow(hour, now time.Time) bool {
	if now.Sub(hour) >= MeteringWindow || hour.After(now) {
		return false
	}
	monthStart := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	return !hour.Before(monthStart) || now.Before(monthStart.Add(MonthEndGrace))
}

// Metering record and usage states, as shown in the ledger.
const (
	UsagePending  = "pending"  // waiting for its hour to close
	UsageSealed   = "sealed"   // aggregated into a meter record
	UsageBatched  = "batched"  // its meter record is in a batch being sent
	UsageBilled   = "billed"   // AWS accepted it (MeteringRecordId)
	UsageRejected = "rejected" // AWS refused it for good (reason)
	UsageFlagged  = "flagged"  // needs the seller: outside the window, duplicate, ...; replayable
	UsageCovered  = "covered"  // within a contract's entitlement: nothing to bill
)

// MeterRecord is the aggregate of one buyer's usage of one dimension in one
// hour: exactly one BatchMeterUsage record.
type MeterRecord struct {
	ID            int64
	SubscriberKey string
	Dimension     string
	Hour          time.Time
	Quantity      int64
	// UsageQuantity is the sum of the usage the record includes, before a
	// contract's entitlement is deducted (Quantity is what is billed).
	UsageQuantity int64
	// UsageRecords is how many usage records the record includes.
	UsageRecords int64
	// UsageIDs are the ids of that usage, in order, when the store's scan
	// gave them (UsageGroup.IDs).
	UsageIDs []int64
	// Shares splits the record by the hour its usage happened in, when it
	// includes late usage of earlier hours (by UNIX hour); nil means all of
	// it is usage of its own hour. Contracts bill, for each usage hour,
	// the overage of all its usage over that hour's entitlement: a late
	// share bills only what the hour's overage grew by.
	Shares map[int64]HourShare
	// Version is the store's version of the usage the record sums, for
	// stores that seal a record only if its usage did not change since it
	// was read (DynamoDB: UsageGroup.Version).
	Version int64
	// Allocations by tag signature; nil when no usage was tagged.
	Allocations map[string]int64
	// Buyer identity sent to AWS: CustomerIdentifier + ProductCode, or
	// CustomerAWSAccountID + LicenseArn.
	CustomerIdentifier   string
	CustomerAWSAccountID string
	LicenseArn           string
	ProductCode          string
	State                string
	BatchID              int64
	MeteringRecordID     string
	Reason               string
}

// LicenseMode reports whether the record is sent with LicenseArn (and no
// ProductCode) rather than CustomerIdentifier + ProductCode.
func (m MeterRecord) LicenseMode() bool { return m.CustomerIdentifier == "" }

// BatchGroup is what records must share to go in one BatchMeterUsage call:
// "each BatchMeterUsage request is for only one product", whether the
// request names it (ProductCode, with CustomerIdentifier records) or not
// (LicenseArn records: each license is for one product).
func BatchGroup(r MeterRecord) string {
	if r.LicenseMode() {
		return "license:" + r.ProductCode
	}
	return "product:" + r.ProductCode
}

// MeterBatch is one BatchMeterUsage call, stored before it is made.
type MeterBatch struct {
	ID          int64
	ProductCode string // "" for license-based batches
	Records     []MeterRecord
	Attempts    int
	NextAttempt time.Time
}

// RecordOutcome is what AWS said about one record.
type RecordOutcome struct {
	MeterRecordID    int64
	State            string // UsageBilled, UsageRejected or UsageFlagged
	MeteringRecordID string
	Reason           string
	Response         string // the result as JSON, for the record
}

// BatchOutcome is the result of one BatchMeterUsage attempt for a batch.
type BatchOutcome struct {
	BatchID  int64
	Outcomes []RecordOutcome
	// Retry, when set, schedules another attempt for the records that have
	// no outcome yet.
	Retry     time.Time
	LastError string
}

// MeterKey identifies a meter record: one buyer, dimension and hour.
type MeterKey struct {
	SubscriberKey string    `json:"customer"`
	Dimension     string    `json:"dimension"`
	Hour          time.Time `json:"hour"`
}

// LedgerEntry is one usage record and its fate.
type LedgerEntry struct {
	ID               int64     `json:"id"`
	SubscriberKey    string    `json:"customer"`
	Dimension        string    `json:"dimension"`
	Quantity         int64     `json:"quantity"`
	Time             time.Time `json:"time"`
	Hour             time.Time `json:"meterHour"`
	State            string    `json:"state"`
	BatchID          int64     `json:"batchId,omitempty"`
	MeteringRecordID string    `json:"meteringRecordId,omitempty"`
	Reason           string    `json:"reason,omitempty"`
	RequestKey       string    `json:"idempotencyKey"`
	// LinkedAccountID is the seller's account id the buyer is linked to
	// (sign-up handoff), set by the ledger API.
	LinkedAccountID string `json:"linkedAccountId,omitempty"`
	// MeterQuantity is what the entry's hourly meter record carries to AWS
	// (for billed: what AWS billed for the whole record, which may be less
	// than its usage when a contract's entitlement covers part of it).
	MeterQuantity int64 `json:"meterQuantity"`
}

// LedgerFilter selects ledger entries.
type LedgerFilter struct {
	SubscriberKey string
	State         string
	AfterID       int64
	Limit         int
}

// MeterStore persists usage, meter records and batches. Each method is one
// transaction, so a crash leaves either the old or the new state.
type MeterStore interface {
	// AddUsage stores a request's rows under its idempotency key. A key seen
	// before with the same hash returns the original receipt (Replayed); with
	// another hash, ECONFLICT. Rows whose (subscriber, dimension, hour) was
	// already sealed are moved to openHour, the current, still open hour.
	AddUsage(ctx context.Context, key, hash string, rows []UsageRow, openHour, now time.Time) (UsageReceipt, error)
	// PendingRange starts a sealing pass: the lowest id of pending usage,
	// the highest usage id that is committed, and the highest meter record
	// id so far (a zero Hi: nothing is pending). The caller sets Before and
	// Flush (and FlushUntil) once for the whole pass.
	PendingRange(ctx context.Context) (PendingScan, error)
	// ScanPending calls fn, in (hour, subscriber, dimension, tag set) order,
	// with the sum of the pending usage scan selects. A store that cannot
	// select the same usage again exactly records what it summed in scan.
	ScanPending(ctx context.Context, scan *PendingScan, fn func(UsageGroup) error) error
	// InsertMeterRecords stores meter records that sum the pending usage of
	// their key with id at most upTo. A key that already has a record keeps
	// it (and its own upTo); such keys are returned.
	InsertMeterRecords(ctx context.Context, recs []MeterRecord, upTo int64) (conflicts []MeterKey, err error)
	// SealUsage marks exactly the usage ScanPending summed for scan as
	// sealed into its key's meter record. Usage of a conflicting key that
	// its record does not include moves first to the first free hour from
	// openHour on; it returns how many records moved.
	SealUsage(ctx context.Context, scan PendingScan, conflicts []MeterKey, openHour time.Time) (moved int, err error)
	// VerifyMetering checks the metering invariant (see MeterViolation) for
	// the usage and meter records in scope and returns what violates it, at
	// most limit violations (all when limit <= 0).
	VerifyMetering(ctx context.Context, scope VerifyScope, limit int) ([]MeterViolation, error)
	// AddHeartbeats stores zero-quantity meter records for keys that have
	// none; it returns how many it added.
	AddHeartbeats(ctx context.Context, records []MeterRecord) (int, error)
	// CreateBatches puts sealed meter records into batches of at most 25,
	// one product code (or license mode) per batch, storing the exact request.
	CreateBatches(ctx context.Context, now time.Time) (int, error)
	// DueBatches returns unfinished batches whose next attempt is due.
	DueBatches(ctx context.Context, now time.Time, limit int) ([]MeterBatch, error)
	// FinishBatches stores what AWS said about batches, in one transaction:
	// each batch is done when all its records are; the others get their next
	// attempt.
	FinishBatches(ctx context.Context, results []BatchOutcome) error
	// Outstanding reports whether meter records wait to be sent, or pending
	// usage of hours before `before` waits to be sealed.
	Outstanding(ctx context.Context, before time.Time) (bool, error)
	// SplitBatch replaces a batch with one single-record batch per record.
	SplitBatch(ctx context.Context, batchID int64, now time.Time) error
	// Ledger lists usage records and their fate.
	Ledger(ctx context.Context, f LedgerFilter) ([]LedgerEntry, error)
	// MeterSummary counts usage records and quantities by state.
	MeterSummary(ctx context.Context) (map[string]StateCount, error)
	// MeterRecordsFor returns the meter records of a buyer and dimension
	// for the hours from..to (inclusive), with their shares: what earlier
	// passes billed for those hours.
	MeterRecordsFor(ctx context.Context, subscriberKey, dimension string, from, to time.Time) ([]MeterRecord, error)
	// Replay moves flagged usage records (all when ids is empty) back to
	// pending in hour; it returns how many moved.
	Replay(ctx context.Context, ids []int64, hour time.Time) (int, error)
	// ActiveSubscribers returns subscribers whose status is in statuses.
	ActiveSubscribers(ctx context.Context, statuses []Status) ([]*Subscriber, error)
}

// PendingScan is one sealing pass: it selects the pending usage with id in
// [Lo, Hi] whose meter hour is before Before, or whose subscriber is in
// Flush and whose meter hour is not after FlushUntil (the current hour: an
// hour that has not begun cannot be sent). Before, Flush and FlushUntil
// are decided once, from one reading of the clock, so the usage a pass
// sums and the usage it seals are the same.
type PendingScan struct {
	Lo, Hi int64
	// Records is the highest meter record id before the pass: records it
	// creates have higher ids.
	Records    int64
	Before     time.Time
	Flush      []string
	FlushUntil time.Time
	// Summed holds the ids ScanPending summed, for stores whose second
	// reading could differ from the first (an eventually consistent index).
	Summed []int64
	// Read lists the partitions ScanPending read in full, for stores that
	// record sealing progress by partition (DynamoDB's usage hours).
	Read []string
	// More reports that ScanPending stopped at its budget before reading
	// every closed hour (it reads the oldest first). The caller seals and
	// sends what it read, then scans again: a backlog of hours (a meter
	// that was down) is billed oldest hour first, within AWS's window,
	// instead of being sealed whole before anything is sent.
	More bool
}

// VerifyScope limits a check of the metering invariant. The zero value
// checks everything.
type VerifyScope struct {
	// UsageFrom and UsageTo bound the usage ids checked (0: no bound).
	UsageFrom, UsageTo int64
	// RecordsAfter checks the sums of only the meter records with a higher
	// id (records a pass created: all their usage is in the usage range).
	RecordsAfter int64
}

// Kinds of metering invariant violations.
const (
	// ViolationSealedWithoutRecord: usage marked sealed whose (subscriber,
	// dimension, hour) has no meter record. It will never be sent.
	ViolationSealedWithoutRecord = "sealed-without-record"
	// ViolationSumMismatch: a meter record's usage quantity differs from
	// the sum of the usage it includes.
	ViolationSumMismatch = "sum-mismatch"
	// ViolationBilledWithoutID: a record AWS billed has no MeteringRecordId.
	ViolationBilledWithoutID = "billed-without-id"
	// ViolationTotalsDrift: the running totals the status reads differ from
	// the records they sum (checked by a whole-store verify). Nothing is
	// billed wrongly, but the status misreports.
	ViolationTotalsDrift = "totals-drift"
)

// MeterViolation is one breach of the metering invariant: every
// acknowledged usage record is either pending, or included in exactly one
// meter record (sealed, batched, billed, rejected, flagged or covered), and
// each meter record's usage quantity is the sum of the usage it includes.
// A meter record includes the usage of its (subscriber, dimension, hour)
// that is sealed, or pending with an id up to its MaxUsageID (a pass
// stopped between storing the record and sealing the usage).
type MeterViolation struct {
	Kind string `json:"kind"`
	MeterKey
	MeterRecordID int64   `json:"meterRecordId,omitempty"`
	UsageIDs      []int64 `json:"usageIds,omitempty"` // up to 10 of them
	Want          int64   `json:"want"`               // the record's usage quantity
	Got           int64   `json:"got"`                // the sum of the usage
	// Total names the running total that drifted (ViolationTotalsDrift).
	Total string `json:"total,omitempty"`
}

func (v MeterViolation) String() string {
	k := fmt.Sprintf("%s/%s/%s", v.SubscriberKey, v.Dimension, v.Hour.UTC().Format(time.RFC3339))
	switch v.Kind {
	case ViolationSealedWithoutRecord:
		return fmt.Sprintf("%s: usage %v (quantity %d) is sealed but %s has no meter record", v.Kind, v.UsageIDs, v.Got, k)
	case ViolationSumMismatch:
		if v.Total != "" {
			return fmt.Sprintf("%s: meter record %d of %s says %d, its %s sum to %d", v.Kind, v.MeterRecordID, k, v.Want, v.Total, v.Got)
		}
		return fmt.Sprintf("%s: meter record %d of %s holds usage quantity %d, its usage sums to %d", v.Kind, v.MeterRecordID, k, v.Want, v.Got)
	case ViolationTotalsDrift:
		return fmt.Sprintf("%s: the running total %s is %d, the records sum to %d", v.Kind, v.Total, v.Want, v.Got)
	default:
		return fmt.Sprintf("%s: meter record %d of %s", v.Kind, v.MeterRecordID, k)
	}
}

// StateCount is a count of usage records and their total quantity.
type StateCount struct {
	Records  int64 `json:"records"`
	Quantity int64 `json:"quantity"`
	// For the states of sealed usage: the hourly meter records the usage is
	// in, and the quantity they carry to AWS, which is the usage less what a
	// contract's entitlement covers (for billed: what AWS billed).
	MeterRecords  int64 `json:"meterRecords,omitempty"`
	MeterQuantity int64 `json:"meterQuantity,omitempty"`
}

// UsageGroup is pending usage summed per subscriber, dimension, hour and tag set.
type UsageGroup struct {
	SubscriberKey string
	Dimension     string
	Hour          time.Time // the meter hour
	// UsageHour is the hour the usage happened in: Hour, or an earlier hour
	// for late usage placed in a later open hour.
	UsageHour time.Time
	TagSig    string
	Quantity  int64
	Records   int64
	// IDs are the usage ids summed, for stores that record exactly which
	// usage a meter record includes (DynamoDB, whose pending index may miss
	// a row a moment old); nil from stores that do not need them.
	IDs []int64
	// Version is the version of the stored usage the group was read from,
	// for stores that aggregate usage at ingestion (DynamoDB): a record is
	// sealed only if the version is unchanged. 0 from other stores.
	Version int64
}

// MeterHour decides the hour usage of hour h is metered in: h itself,
// unless h already has a meter record for the buyer and dimension (sealed
// reports that); then the first hour from openHour on that has none. Late
// usage thus goes into a later open hour instead of becoming a
// DuplicateRecord.
func MeterHour(h, openHour time.Time, sealed func(time.Time) (bool, error)) (time.Time, error) {
	done, err := sealed(h)
	if err != nil || !done {
		return h, err
	}
	for h = openHour; ; h = h.Add(time.Hour) {
		if done, err := sealed(h); err != nil || !done {
			return h, err
		}
	}
}

// HourShare is what a meter record holds of one usage hour: the usage, and
// the quantity it billed for that hour.
type HourShare struct {
	Usage  int64 `json:"usage"`
	Billed int64 `json:"billed"`
}

// SharesOf returns the record's shares by usage hour (its own hour alone
// when it has no late usage).
func (m MeterRecord) SharesOf() map[int64]HourShare {
	if m.Shares != nil {
		return m.Shares
	}
	return map[int64]HourShare{m.Hour.Unix(): {Usage: m.UsageQuantity, Billed: m.Quantity}}
}

// LateReason explains why usage of hour usage is metered in hour meter.
func LateReason(usage, meter time.Time) string {
	return fmt.Sprintf("late usage: hour %s was already metered, so it is metered with hour %s (contracts: it bills what it adds to its own hour's overage)",
		usage.UTC().Format("2006-01-02 15:00Z"), meter.UTC().Format("2006-01-02 15:00Z"))
}

// cleanText reports whether s is valid UTF-8 without control characters
// (NUL, newlines, escapes): what AWS and every log can take as is.
func cleanText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// ValidateDimension checks a dimension name: 1 to MaxDimensionLength
// characters of valid UTF-8 text without control characters.
func ValidateDimension(d string) error {
	switch {
	case d == "" || len(d) > MaxDimensionLength:
		return Errorf(EINVALID, "dimension must be 1 to %d characters", MaxDimensionLength)
	case !cleanText(d):
		return Errorf(EINVALID, "dimension must be valid UTF-8 text without control characters")
	}
	return nil
}

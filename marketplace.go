package mpsaas

import (
	"context"
	"errors"
	"time"
)

// Marketplace is the part of the AWS Marketplace APIs the registration and
// lifecycle workflows use. Package marketplace implements it with the AWS
// SDK; errors carry EINVALID for bad or expired tokens and EUNAVAILABLE for
// throttling and service faults that are worth retrying.
type Marketplace interface {
	ResolveCustomer(ctx context.Context, token string) (Customer, error)
	// GetEntitlements returns every entitlement (all pages) of the customer
	// for its product code, and the response as JSON for the record.
	GetEntitlements(ctx context.Context, c Customer) ([]Entitlement, string, error)
}

// Meterer sends usage to AWS Marketplace (BatchMeterUsage).
type Meterer interface {
	// BatchMeterUsage sends at most 25 records in one call: with productCode
	// for CustomerIdentifier records, without it for LicenseArn records.
	// Errors carry EUNAVAILABLE when the call is worth retrying; other AWS
	// error answers are EINVALID with AWSErrorCode set.
	BatchMeterUsage(ctx context.Context, productCode string, records []MeterRecord) (BatchResult, error)
}

// BatchResult is AWS's answer to one BatchMeterUsage call, mapped back to
// meter record ids.
type BatchResult struct {
	Results []RecordResult
	// Unprocessed lists records AWS did not process (retry them).
	Unprocessed []int64
}

// RecordResult is AWS's status for one record.
type RecordResult struct {
	MeterRecordID    int64
	Status           string // Success, CustomerNotSubscribed, DuplicateRecord
	MeteringRecordID string
	Raw              string // the result as JSON
}

// AWSErrorCode returns the AWS error code (such as
// "TimestampOutOfBoundsException") carried by err, or "".
func AWSErrorCode(err error) string {
	var c interface{ AWSErrorCode() string }
	if errors.As(err, &c) {
		return c.AWSErrorCode()
	}
	return ""
}

// Agreement is what the AWS Marketplace Agreement API says about one
// purchase agreement (reconciliation compares buyers with it).
type Agreement struct {
	ID                string
	Status            string // ACTIVE, CANCELLED, EXPIRED, TERMINATED, ...
	AcceptorAccountID string
	Resource          string // the product's resource id
	Start, End        time.Time
}

package mpsaas

import "context"

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

// Package marketplace implements mpsaas.Marketplace with the AWS SDK for Go
// v2 metering and entitlement clients. Point it at the emulator or at AWS
// with Config.MeteringEndpoint / EntitlementEndpoint.
package marketplace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	agr "github.com/aws/aws-sdk-go-v2/service/marketplaceagreement"
	agrtypes "github.com/aws/aws-sdk-go-v2/service/marketplaceagreement/types"
	ent "github.com/aws/aws-sdk-go-v2/service/marketplaceentitlementservice"
	enttypes "github.com/aws/aws-sdk-go-v2/service/marketplaceentitlementservice/types"
	mm "github.com/aws/aws-sdk-go-v2/service/marketplacemetering"
	mmtypes "github.com/aws/aws-sdk-go-v2/service/marketplacemetering/types"
	"github.com/aws/smithy-go"

	"github.com/mpsaas/mpsaas"
)

// Client talks to AWS Marketplace.
type Client struct {
	Metering    *mm.Client
	Entitlement *ent.Client
	// Agreement reads buyers' agreements (AWS Marketplace Agreement API).
	Agreement *agr.Client
}

var _ mpsaas.Marketplace = (*Client)(nil)

// Options configure New.
type Options struct {
	// MeteringEndpoint and EntitlementEndpoint override the AWS endpoints
	// (e.g. the emulator's URL). Empty means AWS.
	MeteringEndpoint    string
	EntitlementEndpoint string
	AgreementEndpoint   string
}

// New builds the clients from an AWS config. The entitlement service is
// only served in us-east-1, so its client always uses that region.
func New(cfg aws.Config, opts Options) *Client {
	return &Client{
		Metering: mm.NewFromConfig(cfg, func(o *mm.Options) {
			o.HTTPClient = guard(o.HTTPClient)
			if opts.MeteringEndpoint != "" {
				o.BaseEndpoint = aws.String(opts.MeteringEndpoint)
			}
		}),
		Entitlement: ent.NewFromConfig(cfg, func(o *ent.Options) {
			o.HTTPClient = guard(o.HTTPClient)
			o.Region = "us-east-1"
			if opts.EntitlementEndpoint != "" {
				o.BaseEndpoint = aws.String(opts.EntitlementEndpoint)
			}
		}),
		// The Agreement API, like the entitlement service, is served in us-east-1.
		Agreement: agr.NewFromConfig(cfg, func(o *agr.Options) {
			o.HTTPClient = guard(o.HTTPClient)
			o.Region = "us-east-1"
			if opts.AgreementEndpoint != "" {
				o.BaseEndpoint = aws.String(opts.AgreementEndpoint)
			}
		}),
	}
}

// FreeTrial reports whether the buyer's agreement for a license has a free
// trial term: AWS's own answer, where the fulfillment POST's
// x-amzn-marketplace-offer-type comes through the buyer's browser. It
// finds the agreement by its license (SearchAgreements as the proposer)
// and reads its accepted terms (GetAgreementTerms).
func (c *Client) FreeTrial(ctx context.Context, licenseArn string) (bool, error) {
	filter := func(name, v string) agrtypes.Filter {
		return agrtypes.Filter{Name: aws.String(name), Values: []string{v}}
	}
	found, err := c.Agreement.SearchAgreements(ctx, &agr.SearchAgreementsInput{Catalog: aws.String("AWSMarketplace"),
		Filters: []agrtypes.Filter{filter("AgreementType", "PurchaseAgreement"), filter("PartyType", "Proposer"), filter("LicenseArn", licenseArn)}})
	if err != nil {
		return false, translate("SearchAgreements", err)
	}
	for _, a := range found.AgreementViewSummaries {
		p := agr.NewGetAgreementTermsPaginator(c.Agreement, &agr.GetAgreementTermsInput{AgreementId: a.AgreementId})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return false, translate("GetAgreementTerms", err)
			}
			for _, t := range page.AcceptedTerms {
				if _, ok := t.(*agrtypes.AcceptedTermMemberFreeTrialPricingTerm); ok {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

// ResolveCustomer exchanges a registration token for the customer.
func (c *Client) ResolveCustomer(ctx context.Context, token string) (mpsaas.Customer, error) {
	out, err := c.Metering.ResolveCustomer(ctx, &mm.ResolveCustomerInput{RegistrationToken: aws.String(token)})
	if err != nil {
		var invalid *mmtypes.InvalidTokenException
		var expired *mmtypes.ExpiredTokenException
		switch {
		case errors.As(err, &invalid):
			return mpsaas.Customer{}, mpsaas.Errorf(mpsaas.EINVALID, "The registration token is not valid. Please return to AWS Marketplace and choose \"Set up your account\" again.")
		case errors.As(err, &expired):
			return mpsaas.Customer{}, mpsaas.Errorf(mpsaas.EINVALID, "The registration token has expired. Please return to AWS Marketplace and choose \"Set up your account\" again.")
		}
		return mpsaas.Customer{}, translate("ResolveCustomer", err)
	}
	return mpsaas.Customer{
		CustomerIdentifier:   aws.ToString(out.CustomerIdentifier),
		CustomerAWSAccountID: aws.ToString(out.CustomerAWSAccountId),
		LicenseArn:           aws.ToString(out.LicenseArn),
		ProductCode:          aws.ToString(out.ProductCode),
	}, nil
}

// entitlementJSON is the stored form of a GetEntitlements response, shaped
// like the sample stack's `entitlement` attribute.
type entitlementJSON struct {
	Entitlements []entitlementItem `json:"Entitlements"`
}

type entitlementItem struct {
	CustomerIdentifier   string         `json:"CustomerIdentifier,omitempty"`
	CustomerAWSAccountId string         `json:"CustomerAWSAccountId,omitempty"`
	LicenseArn           string         `json:"LicenseArn,omitempty"`
	Dimension            string         `json:"Dimension"`
	ProductCode          string         `json:"ProductCode"`
	Value                map[string]any `json:"Value,omitempty"`
	ExpirationDate       *time.Time     `json:"ExpirationDate,omitempty"`
}

// GetEntitlements reads every page of the customer's entitlements.
func (c *Client) GetEntitlements(ctx context.Context, cust mpsaas.Customer) ([]mpsaas.Entitlement, string, error) {
	in := &ent.GetEntitlementsInput{ProductCode: aws.String(cust.ProductCode)}
	switch {
	case cust.CustomerIdentifier != "":
		in.Filter = map[string][]string{string(enttypes.GetEntitlementFilterNameCustomerIdentifier): {cust.CustomerIdentifier}}
	case cust.LicenseArn != "":
		in.Filter = map[string][]string{string(enttypes.GetEntitlementFilterNameLicenseArn): {cust.LicenseArn}}
	case cust.CustomerAWSAccountID != "":
		in.Filter = map[string][]string{string(enttypes.GetEntitlementFilterNameCustomerAwsAccountId): {cust.CustomerAWSAccountID}}
	default:
		return nil, "", mpsaas.Errorf(mpsaas.EINVALID, "GetEntitlements: customer has no identifier")
	}
	var out []mpsaas.Entitlement
	raw := entitlementJSON{Entitlements: []entitlementItem{}}
	p := ent.NewGetEntitlementsPaginator(c.Entitlement, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, "", translate("GetEntitlements", err)
		}
		for _, e := range page.Entitlements {
			item := entitlementItem{
				CustomerIdentifier: aws.ToString(e.CustomerIdentifier), CustomerAWSAccountId: aws.ToString(e.CustomerAWSAccountId),
				LicenseArn: aws.ToString(e.LicenseArn), Dimension: aws.ToString(e.Dimension), ProductCode: aws.ToString(e.ProductCode),
				ExpirationDate: e.ExpirationDate,
			}
			me := mpsaas.Entitlement{Dimension: item.Dimension}
			if e.ExpirationDate != nil {
				me.ExpirationDate = e.ExpirationDate.UTC()
			}
			if v := e.Value; v != nil {
				switch {
				case v.IntegerValue != nil:
					me.Value = int64(*v.IntegerValue)
					item.Value = map[string]any{"IntegerValue": *v.IntegerValue}
				case v.DoubleValue != nil:
					me.Value = *v.DoubleValue
					item.Value = map[string]any{"DoubleValue": *v.DoubleValue}
				case v.BooleanValue != nil:
					me.Value = *v.BooleanValue
					item.Value = map[string]any{"BooleanValue": *v.BooleanValue}
				case v.StringValue != nil:
					me.Value = *v.StringValue
					item.Value = map[string]any{"StringValue": *v.StringValue}
				}
			}
			out = append(out, me)
			raw.Entitlements = append(raw.Entitlements, item)
		}
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, "", fmt.Errorf("encoding entitlements: %w", err)
	}
	return out, string(b), nil
}

// translate maps SDK errors to mpsaas error codes: throttling, service
// faults and transport failures are EUNAVAILABLE (retry later), the rest
// keep their AWS code in the message.
func translate(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", op, err)
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "ThrottlingException", "InternalServiceErrorException", "ServiceUnavailable":
			return &wrapped{mpsaas.Errorf(mpsaas.EUNAVAILABLE, "AWS Marketplace is busy (%s); please try again in a moment.", ae.ErrorCode()), err}
		}
		if ae.ErrorFault() == smithy.FaultServer {
			return &wrapped{mpsaas.Errorf(mpsaas.EUNAVAILABLE, "AWS Marketplace is unavailable; please try again in a moment."), err}
		}
		return &wrapped{mpsaas.Errorf(mpsaas.EINVALID, "%s failed: %s", op, ae.ErrorCode()), err}
	}
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) && re.HTTPStatusCode() >= 500 {
		return &wrapped{mpsaas.Errorf(mpsaas.EUNAVAILABLE, "AWS Marketplace is unavailable; please try again in a moment."), err}
	}
	return &wrapped{mpsaas.Errorf(mpsaas.EUNAVAILABLE, "%s: cannot reach AWS Marketplace", op), err}
}

// wrapped carries an mpsaas error for callers and the SDK error for logs.
type wrapped struct {
	app   *mpsaas.Error
	cause error
}

func (w *wrapped) Error() string   { return w.app.Error() + ": " + w.cause.Error() }
func (w *wrapped) Unwrap() []error { return []error{w.app, w.cause} }

// AWSErrorCode is the AWS error code of the cause, if it is an AWS answer.
func (w *wrapped) AWSErrorCode() string {
	var ae smithy.APIError
	if errors.As(w.cause, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

var _ mpsaas.Meterer = (*Client)(nil)

// BatchMeterUsage sends one batch. Records are matched to results by
// (customer, dimension, timestamp), which is unique within a batch.
func (c *Client) BatchMeterUsage(ctx context.Context, productCode string, records []mpsaas.MeterRecord) (mpsaas.BatchResult, error) {
	in := &mm.BatchMeterUsageInput{UsageRecords: make([]mmtypes.UsageRecord, 0, len(records))}
	if productCode != "" {
		in.ProductCode = aws.String(productCode)
	}
	byKey := make(map[string]int64, len(records))
	for _, r := range records {
		ur := mmtypes.UsageRecord{
			Dimension: aws.String(r.Dimension),
			Quantity:  aws.Int32(int32(r.Quantity)),
			Timestamp: aws.Time(r.Hour),
		}
		if r.LicenseMode() {
			ur.CustomerAWSAccountId = aws.String(r.CustomerAWSAccountID)
			ur.LicenseArn = aws.String(r.LicenseArn)
		} else {
			ur.CustomerIdentifier = aws.String(r.CustomerIdentifier)
		}
		if r.Allocations != nil {
			ur.UsageAllocations = allocations(r.Allocations)
		}
		in.UsageRecords = append(in.UsageRecords, ur)
		byKey[recordKey(ur)] = r.ID
	}
	out, err := c.Metering.BatchMeterUsage(ctx, in)
	if err != nil {
		return mpsaas.BatchResult{}, translate("BatchMeterUsage", err)
	}
	var res mpsaas.BatchResult
	for _, r := range out.Results {
		if r.UsageRecord == nil {
			continue
		}
		id, ok := byKey[recordKey(*r.UsageRecord)]
		if !ok {
			return res, mpsaas.Errorf(mpsaas.EINTERNAL, "BatchMeterUsage returned a result for a record that was not sent")
		}
		raw, _ := json.Marshal(map[string]any{"Status": r.Status, "MeteringRecordId": aws.ToString(r.MeteringRecordId)})
		res.Results = append(res.Results, mpsaas.RecordResult{MeterRecordID: id, Status: string(r.Status), MeteringRecordID: aws.ToString(r.MeteringRecordId), Raw: string(raw)})
	}
	for _, u := range out.UnprocessedRecords {
		if id, ok := byKey[recordKey(u)]; ok {
			res.Unprocessed = append(res.Unprocessed, id)
		}
	}
	return res, nil
}

func recordKey(u mmtypes.UsageRecord) string {
	return aws.ToString(u.CustomerIdentifier) + "\x00" + aws.ToString(u.CustomerAWSAccountId) + "\x00" + aws.ToString(u.Dimension) + "\x00" + fmt.Sprint(aws.ToTime(u.Timestamp).Unix())
}

func allocations(a map[string]int64) []mmtypes.UsageAllocation {
	sigs := make([]string, 0, len(a))
	for s := range a {
		sigs = append(sigs, s)
	}
	sort.Strings(sigs)
	out := make([]mmtypes.UsageAllocation, 0, len(a))
	for _, sig := range sigs {
		ua := mmtypes.UsageAllocation{AllocatedUsageQuantity: aws.Int32(int32(a[sig]))}
		tags := mpsaas.ParseTagSignature(sig)
		keys := make([]string, 0, len(tags))
		for k := range tags {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ua.Tags = append(ua.Tags, mmtypes.Tag{Key: aws.String(k), Value: aws.String(tags[k])})
		}
		out = append(out, ua)
	}
	return out
}

// ProductAgreements pages through the purchase agreements of a product
// (SearchAgreements as the proposer, 50 a page; the SDK retries throttling
// with backoff) and calls fn with each.
func (c *Client) ProductAgreements(ctx context.Context, resource string, fn func(mpsaas.Agreement) error) error {
	filter := func(name, v string) agrtypes.Filter {
		return agrtypes.Filter{Name: aws.String(name), Values: []string{v}}
	}
	in := &agr.SearchAgreementsInput{Catalog: aws.String("AWSMarketplace"), MaxResults: aws.Int32(50),
		Filters: []agrtypes.Filter{filter("AgreementType", "PurchaseAgreement"), filter("PartyType", "Proposer"), filter("ResourceIdentifier", resource)}}
	for {
		out, err := c.Agreement.SearchAgreements(ctx, in)
		if err != nil {
			return translate("SearchAgreements", err)
		}
		for _, v := range out.AgreementViewSummaries {
			a := mpsaas.Agreement{ID: aws.ToString(v.AgreementId), Status: string(v.Status), Resource: resource,
				Start: aws.ToTime(v.StartTime), End: aws.ToTime(v.EndTime)}
			if v.Acceptor != nil {
				a.AcceptorAccountID = aws.ToString(v.Acceptor.AccountId)
			}
			if err := fn(a); err != nil {
				return err
			}
		}
		if aws.ToString(out.NextToken) == "" {
			return nil
		}
		in.NextToken = out.NextToken
	}
}

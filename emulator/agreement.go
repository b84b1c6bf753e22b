package emulator

import (
	"encoding/base64"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// The AWS Marketplace Agreement API (service marketplace-agreement,
// AWSMPCommerceService_v20200301) over Smithy RPC v2 CBOR, as the current
// aws-sdk-go-v2 client sends it, for the proposer (the seller):
// SearchAgreements, DescribeAgreement and GetAgreementTerms. Agreements are
// the emulator's subscriptions; the resource of an agreement is its
// product, identified by its product code. ASSUMPTION: AWS identifies the
// resource by the product id (prod-…), which the emulator does not model.

const agreementService = "AWSMPCommerceService_v20200301."

type agreementFilter struct {
	Name   *string
	Values []string
}

type searchAgreementsInput struct {
	Catalog    *string
	Filters    []agreementFilter
	MaxResults *int64
	NextToken  *string
}

type party struct {
	AccountID string `json:"accountId"`
}

type agreementResource struct {
	ID   string `json:"id"`
	Type string `json:"type"`
}

type proposalSummary struct {
	OfferID   string              `json:"offerId"`
	Resources []agreementResource `json:"resources"`
}

type agreementView struct {
	AgreementID     string          `json:"agreementId"`
	AcceptanceTime  epochTime       `json:"acceptanceTime"`
	StartTime       epochTime       `json:"startTime"`
	EndTime         *epochTime      `json:"endTime,omitempty"`
	AgreementType   string          `json:"agreementType"`
	Acceptor        party           `json:"acceptor"`
	Proposer        party           `json:"proposer"`
	ProposalSummary proposalSummary `json:"proposalSummary"`
	Status          string          `json:"status"`
}

type searchAgreementsOutput struct {
	AgreementViewSummaries []agreementView `json:"agreementViewSummaries"`
	NextToken              string          `json:"nextToken,omitempty"`
}

// agreementStatus maps a subscription's status to the Agreement API's.
func agreementStatus(s *Subscription) string {
	switch s.Status {
	case StatusActive:
		return "ACTIVE"
	case StatusExpired:
		return "EXPIRED"
	case StatusUnsubscribePending, StatusCancelled:
		return "CANCELLED"
	}
	return "TERMINATED" // a failed payment ends the agreement
}

func (s *Server) agreementViewLocked(sub *Subscription) agreementView {
	v := agreementView{
		AgreementID: sub.AgreementID, AcceptanceTime: epochTime{sub.StartedAt}, StartTime: epochTime{sub.StartedAt},
		AgreementType: "PurchaseAgreement", Acceptor: party{sub.BuyerAccountID}, Proposer: party{SellerAccountID},
		ProposalSummary: proposalSummary{OfferID: sub.OfferID, Resources: []agreementResource{{ID: sub.ProductCode, Type: "SaaSProduct"}}},
		Status:          agreementStatus(sub),
	}
	switch {
	case !sub.EndedAt.IsZero():
		v.EndTime = &epochTime{sub.EndedAt}
	case !sub.ExpiresAt.IsZero():
		v.EndTime = &epochTime{sub.ExpiresAt}
	}
	return v
}

// searchFilters are the filters a proposer may use (AgreementType required).
var searchFilters = []string{"AgreementType", "PartyType", "ResourceIdentifier", "ResourceType", "AcceptorAccountId", "OfferId", "Status", "LicenseArn"}

func (s *Server) searchAgreements(c call, body []byte) (any, *apiError) {
	var in searchAgreementsInput
	if err := c.decode(body, &in); err != nil {
		return nil, newAPIError("SerializationException", "%v", err)
	}
	if in.Catalog != nil && *in.Catalog != "AWSMarketplace" {
		return nil, validationError("catalog %q: only AWSMarketplace is supported", *in.Catalog)
	}
	max := 50
	if in.MaxResults != nil {
		if *in.MaxResults < 1 || *in.MaxResults > 50 {
			return nil, validationError("maxResults must be between 1 and 50 (got %d)", *in.MaxResults)
		}
		max = int(*in.MaxResults)
	}
	want := map[string][]string{}
	for _, f := range in.Filters {
		name := str(f.Name)
		if !slices.Contains(searchFilters, name) {
			return nil, validationError("filter %q is not supported (the emulator supports %s)", name, strings.Join(searchFilters, ", "))
		}
		if len(f.Values) == 0 {
			return nil, validationError("filter %q has no values", name)
		}
		want[name] = f.Values
	}
	if !slices.Equal(want["AgreementType"], []string{"PurchaseAgreement"}) {
		return nil, validationError("the AgreementType filter is required, with the value PurchaseAgreement")
	}
	if pt := want["PartyType"]; pt != nil && !slices.Equal(pt, []string{"Proposer"}) {
		// ASSUMPTION: the emulated caller is always the seller.
		return nil, newAPIError("AccessDeniedException", "the caller is the proposer of these agreements; search with PartyType Proposer")
	}
	match := func(name, v string) bool { return want[name] == nil || slices.Contains(want[name], v) }
	s.mu.Lock()
	var all []agreementView
	for _, sub := range s.subscriptions {
		v := s.agreementViewLocked(sub)
		if match("ResourceIdentifier", sub.ProductCode) && match("ResourceType", "SaaSProduct") && match("AcceptorAccountId", sub.BuyerAccountID) &&
			match("OfferId", sub.OfferID) && match("Status", v.Status) && match("LicenseArn", sub.LicenseArn) {
			all = append(all, v)
		}
	}
	s.mu.Unlock()
	sort.Slice(all, func(i, j int) bool {
		if !all[i].StartTime.Equal(all[j].StartTime.Time) {
			return all[i].StartTime.Before(all[j].StartTime.Time)
		}
		return all[i].AgreementID < all[j].AgreementID
	})
	start := 0
	if t := str(in.NextToken); t != "" {
		b, err := base64.RawURLEncoding.DecodeString(t)
		n, err2 := strconv.Atoi(string(b))
		if err != nil || err2 != nil || n < 0 || n > len(all) {
			return nil, validationError("nextToken %q is not valid", t)
		}
		start = n
	}
	end := min(start+max, len(all))
	out := searchAgreementsOutput{AgreementViewSummaries: all[start:end]}
	if out.AgreementViewSummaries == nil {
		out.AgreementViewSummaries = []agreementView{}
	}
	if end < len(all) {
		out.NextToken = base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(end)))
	}
	return out, nil
}

type agreementIDInput struct {
	AgreementID *string
	MaxResults  *int64
	NextToken   *string
}

// withAgreement decodes a request naming an agreement and calls fn with
// the agreement, holding the lock.
func (s *Server) withAgreement(c call, body []byte, fn func(*Subscription) any) (any, *apiError) {
	var in agreementIDInput
	if err := c.decode(body, &in); err != nil {
		return nil, newAPIError("SerializationException", "%v", err)
	}
	if str(in.AgreementID) == "" {
		return nil, validationError("agreementId is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := s.subscriptions[*in.AgreementID]
	if sub == nil {
		return nil, newAPIError("ResourceNotFoundException", "agreement %s was not found", *in.AgreementID)
	}
	return fn(sub), nil
}

func (s *Server) describeAgreement(c call, body []byte) (any, *apiError) {
	return s.withAgreement(c, body, func(sub *Subscription) any { return s.agreementViewLocked(sub) })
}

type grantItem struct {
	DimensionKey string `json:"dimensionKey"`
	MaxQuantity  int32  `json:"maxQuantity"`
}

type freeTrialTerm struct {
	Type     string      `json:"type"`
	ID       string      `json:"id"`
	Duration string      `json:"duration"`
	Grants   []grantItem `json:"grants"`
}

type pricingTerm struct {
	Type         string `json:"type"`
	ID           string `json:"id"`
	CurrencyCode string `json:"currencyCode"`
}

type acceptedTerm struct {
	FreeTrialPricingTerm           *freeTrialTerm `json:"freeTrialPricingTerm,omitempty"`
	UsageBasedPricingTerm          *pricingTerm   `json:"usageBasedPricingTerm,omitempty"`
	ConfigurableUpfrontPricingTerm *pricingTerm   `json:"configurableUpfrontPricingTerm,omitempty"`
}

type agreementTermsOutput struct {
	AcceptedTerms []acceptedTerm `json:"acceptedTerms"`
}

// getAgreementTerms lists the terms the buyer accepted: a free trial term
// for free trials, a usage-based pricing term for metered products and a
// configurable upfront pricing term for contracts.
func (s *Server) getAgreementTerms(c call, body []byte) (any, *apiError) {
	return s.withAgreement(c, body, s.agreementTermsLocked)
}

func (s *Server) agreementTermsLocked(sub *Subscription) any {
	p := s.products[sub.ProductCode]
	term := func(kind string) string {
		return fmt.Sprintf("term-%s-%s", kind, strings.TrimPrefix(sub.AgreementID, "agmt-"))
	}
	var terms []acceptedTerm
	if sub.FreeTrial {
		ft := &freeTrialTerm{Type: "FreeTrialPricingTerm", ID: term("trial"), Duration: "P30D"}
		for _, d := range p.Dimensions {
			ft.Grants = append(ft.Grants, grantItem{DimensionKey: d.Name, MaxQuantity: 1})
		}
		terms = append(terms, acceptedTerm{FreeTrialPricingTerm: ft})
	}
	if p.isContract() {
		terms = append(terms, acceptedTerm{ConfigurableUpfrontPricingTerm: &pricingTerm{Type: "ConfigurableUpfrontPricingTerm", ID: term("upfront"), CurrencyCode: "USD"}})
	}
	if p.Type != ProductContract {
		terms = append(terms, acceptedTerm{UsageBasedPricingTerm: &pricingTerm{Type: "UsageBasedPricingTerm", ID: term("usage"), CurrencyCode: "USD"}})
	}
	return agreementTermsOutput{AcceptedTerms: terms}
}

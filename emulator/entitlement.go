package emulator

import (
	"encoding/base64"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
)

type getEntitlementsInput struct {
	ProductCode *string
	Filter      map[string][]string
	NextToken   *string
	MaxResults  *int64
}

type entitlementValue struct {
	IntegerValue *int32   `json:",omitempty"`
	DoubleValue  *float64 `json:",omitempty"`
	BooleanValue *bool    `json:",omitempty"`
	StringValue  *string  `json:",omitempty"`
}

type entitlement struct {
	ProductCode          string            `json:",omitempty"`
	Dimension            string            `json:",omitempty"`
	CustomerIdentifier   string            `json:",omitempty"`
	CustomerAWSAccountId string            `json:",omitempty"`
	LicenseArn           string            `json:",omitempty"`
	Value                *entitlementValue `json:",omitempty"`
	ExpirationDate       *epochTime        `json:",omitempty"`
}

type getEntitlementsOutput struct {
	Entitlements []entitlement
	NextToken    string `json:",omitempty"`
}

var filterNames = map[string]bool{
	"CUSTOMER_IDENTIFIER": true, "CUSTOMER_AWS_ACCOUNT_ID": true, "DIMENSION": true, "LICENSE_ARN": true,
}

// getEntitlements lists the active contract entitlements of a product.
// All validation failures answer InvalidParameterException, the only
// client error the operation models.
func (s *Server) getEntitlements(c call, body []byte) (any, *apiError) {
	var in getEntitlementsInput
	if err := c.decode(body, &in); err != nil {
		return nil, newAPIError("SerializationException", "%v", err)
	}
	pc := str(in.ProductCode)
	if pc == "" || len(pc) > 255 {
		return nil, newAPIError("InvalidParameterException", "ProductCode is required and must be 1 to 255 characters")
	}
	max := int64(25)
	if in.MaxResults != nil {
		if *in.MaxResults < 1 || *in.MaxResults > 25 {
			return nil, newAPIError("InvalidParameterException", "MaxResults must be between 1 and 25 (got %d)", *in.MaxResults)
		}
		max = *in.MaxResults
	}
	for name, values := range in.Filter {
		if !filterNames[name] {
			return nil, newAPIError("InvalidParameterException", "unknown filter %q", name)
		}
		if len(values) == 0 {
			return nil, newAPIError("InvalidParameterException", "filter %s needs at least one value", name)
		}
	}
	// ASSUMPTION: the exact error for both customer filters is unverified.
	if in.Filter["CUSTOMER_IDENTIFIER"] != nil && in.Filter["CUSTOMER_AWS_ACCOUNT_ID"] != nil {
		return nil, newAPIError("InvalidParameterException", "CUSTOMER_IDENTIFIER and CUSTOMER_AWS_ACCOUNT_ID filters are mutually exclusive")
	}
	offset := 0
	if in.NextToken != nil {
		o, ok := decodePageToken(*in.NextToken, pc)
		if !ok {
			return nil, newAPIError("InvalidParameterException", "NextToken is invalid")
		}
		offset = o
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.products[pc]
	if !ok {
		return nil, newAPIError("InvalidParameterException", "product code %s is not a product of this seller", pc)
	}
	now := s.Clock.Now()
	var all []entitlement
	subs := make([]*Subscription, 0)
	for _, sub := range s.subscriptions {
		if sub.ProductCode == p.Code && sub.Status == StatusActive && p.isContract() && now.Before(sub.ExpiresAt) {
			subs = append(subs, sub)
		}
	}
	sort.Slice(subs, func(i, j int) bool {
		if !subs[i].StartedAt.Equal(subs[j].StartedAt) {
			return subs[i].StartedAt.Before(subs[j].StartedAt)
		}
		return subs[i].AgreementID < subs[j].AgreementID
	})
	for _, sub := range subs {
		if !matches(in.Filter["CUSTOMER_IDENTIFIER"], sub.CustomerIdentifier) ||
			!matches(in.Filter["CUSTOMER_AWS_ACCOUNT_ID"], sub.BuyerAccountID) ||
			!matches(in.Filter["LICENSE_ARN"], sub.LicenseArn) {
			continue
		}
		for _, d := range slices.Sorted(maps.Keys(sub.Entitlements)) {
			if !matches(in.Filter["DIMENSION"], d) {
				continue
			}
			v := sub.Entitlements[d]
			all = append(all, entitlement{
				ProductCode:          p.Code,
				Dimension:            d,
				CustomerIdentifier:   sub.CustomerIdentifier,
				CustomerAWSAccountId: sub.BuyerAccountID,
				LicenseArn:           sub.LicenseArn,
				Value:                &entitlementValue{IntegerValue: &v},
				ExpirationDate:       &epochTime{sub.ExpiresAt},
			})
		}
	}
	if offset > len(all) {
		offset = len(all)
	}
	end := offset + int(max)
	out := getEntitlementsOutput{Entitlements: []entitlement{}}
	if end < len(all) {
		out.NextToken = encodePageToken(end, pc)
	} else {
		end = len(all)
	}
	out.Entitlements = append(out.Entitlements, all[offset:end]...)
	return out, nil
}

func matches(values []string, v string) bool {
	if values == nil {
		return true
	}
	for _, x := range values {
		if x == v {
			return true
		}
	}
	return false
}

func encodePageToken(offset int, productCode string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("v1:%d:%s", offset, productCode)))
}

func decodePageToken(tok, productCode string) (int, bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return 0, false
	}
	parts := strings.SplitN(string(b), ":", 3)
	if len(parts) != 3 || parts[0] != "v1" || parts[2] != productCode {
		return 0, false
	}
	o, err := strconv.Atoi(parts[1])
	if err != nil || o < 0 {
		return 0, false
	}
	return o, true
}

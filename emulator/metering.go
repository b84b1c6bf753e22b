package emulator

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

// Patterns from the service model (marketplace-api.md §2.1), compiled verbatim.
var (
	productCodeRE = regexp.MustCompile(`^[-a-zA-Z0-9/=:_.@]*$`)
	accountIDRE   = regexp.MustCompile(`^[0-9]+$`)
	// Go's regexp caps repeat counts at 1000, so the model's final {0,1023}
	// is checked by validLicenseArn instead.
	licenseArnRE = regexp.MustCompile(`^arn:aws[a-zA-Z-]*:[A-Za-z0-9][A-Za-z0-9_/.-]{0,62}:[A-Za-z0-9_/.-]{0,63}:[A-Za-z0-9_/.-]{0,63}:([A-Za-z0-9][A-Za-z0-9:_/+=,@.-]*)$`)
	// The model's tag pattern taken literally: "+ -=" is a range from space to '='.
	tagRE = regexp.MustCompile(`^[a-zA-Z0-9+ -=._:\/@]+$`)
)

const maxInt32 = 2147483647

func validLicenseArn(s string) bool {
	m := licenseArnRE.FindStringSubmatch(s)
	return m != nil && len(m[1]) <= 1024
}

// --- ResolveCustomer ---

type resolveCustomerInput struct {
	RegistrationToken *string
}

type resolveCustomerOutput struct {
	CustomerIdentifier   string `json:",omitempty"`
	CustomerAWSAccountId string `json:",omitempty"`
	ProductCode          string `json:",omitempty"`
	LicenseArn           string `json:",omitempty"`
}

func (s *Server) resolveCustomer(c call, body []byte) (any, *apiError) {
	var in resolveCustomerInput
	if err := c.decode(body, &in); err != nil {
		return nil, newAPIError("SerializationException", "%v", err)
	}
	if in.RegistrationToken == nil || *in.RegistrationToken == "" {
		return nil, validationError("Value null at 'registrationToken' failed to satisfy constraint: Member must not be null")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tok, ok := s.tokens[*in.RegistrationToken]
	if !ok {
		return nil, newAPIError("InvalidTokenException", "Registration token is invalid")
	}
	if !s.Clock.Now().Before(tok.issuedAt.Add(s.cfg.TokenTTL)) {
		return nil, newAPIError("ExpiredTokenException", "Registration token is expired")
	}
	// Within its lifetime a token resolves to the same answer every time.
	sub := s.subscriptions[tok.agreementID]
	return resolveCustomerOutput{
		CustomerIdentifier:   sub.CustomerIdentifier,
		CustomerAWSAccountId: sub.BuyerAccountID,
		ProductCode:          sub.ProductCode,
		LicenseArn:           sub.LicenseArn,
	}, nil
}

// --- BatchMeterUsage ---

type tag struct {
	Key   *string `json:",omitempty"`
	Value *string `json:",omitempty"`
}

type usageAllocation struct {
	AllocatedUsageQuantity *json.Number `json:",omitempty"`
	Tags                   []tag        `json:",omitempty"`
}

type usageRecord struct {
	Timestamp            *epochTime        `json:",omitempty"`
	CustomerIdentifier   *string           `json:",omitempty"`
	CustomerAWSAccountId *string           `json:",omitempty"`
	Dimension            *string           `json:",omitempty"`
	Quantity             *json.Number      `json:",omitempty"`
	UsageAllocations     []usageAllocation `json:",omitempty"`
	LicenseArn           *string           `json:",omitempty"`
}

type batchMeterUsageInput struct {
	UsageRecords []usageRecord
	ProductCode  *string
}

type usageRecordResult struct {
	UsageRecord      usageRecord
	MeteringRecordId string `json:",omitempty"`
	Status           string
}

type batchMeterUsageOutput struct {
	Results            []usageRecordResult
	UnprocessedRecords []usageRecord
}

// UsageAllocation is a validated allocation as the emulator bills it.
type UsageAllocation struct {
	Quantity int64 `json:"quantity"`
	Tags     []Tag `json:"tags,omitempty"`
}

// Tag is a usage-allocation tag.
type Tag struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// checked is a usage record after validation.
type checked struct {
	raw         usageRecord
	hour        time.Time
	quantity    int64
	allocations []UsageAllocation
	sub         *Subscription // nil: customer not subscribed
	mode        string
	customerKey string
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func (s *Server) batchMeterUsage(c call, body []byte) (any, *apiError) {
	var in batchMeterUsageInput
	if err := c.decode(body, &in); err != nil {
		return nil, newAPIError("SerializationException", "%v", err)
	}
	// 1-2: presence and size of the batch.
	if in.UsageRecords == nil {
		return nil, validationError("Value null at 'usageRecords' failed to satisfy constraint: Member must not be null")
	}
	if len(in.UsageRecords) > 25 {
		return nil, validationError("Value at 'usageRecords' failed to satisfy constraint: Member must have length less than or equal to 25 (got %d)", len(in.UsageRecords))
	}
	if in.ProductCode != nil && (len(*in.ProductCode) > 255 || !productCodeRE.MatchString(*in.ProductCode)) {
		return nil, validationError("Value at 'productCode' failed to satisfy constraint: Member must satisfy regular expression pattern: %s", productCodeRE)
	}
	recs := make([]checked, len(in.UsageRecords))
	// 3-4: per record, exactly one buyer key, then lengths and patterns.
	for i, r := range in.UsageRecords {
		if (r.CustomerIdentifier == nil) == (r.CustomerAWSAccountId == nil) {
			return nil, newAPIError("InvalidCustomerIdentifierException", "usageRecords.%d: CustomerAWSAccountId or CustomerIdentifier must be provided in request but not both", i+1)
		}
		q, apiErr := checkRecordShape(i, r)
		if apiErr != nil {
			return nil, apiErr
		}
		recs[i] = checked{raw: r, hour: r.Timestamp.Truncate(time.Hour), quantity: q}
	}
	now := s.Clock.Now()
	// 5: any timestamp out of window rejects the whole batch.
	for i, r := range recs {
		if why := s.outOfWindow(r.raw.Timestamp.Time, now); why != "" {
			return nil, newAPIError("TimestampOutOfBoundsException", "usageRecords.%d: timestamp %s %s", i+1, r.raw.Timestamp.Format(time.RFC3339), why)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// 6-8: product or license ownership, dimension, tags and allocations.
	var reqProduct *Product
	if in.ProductCode != nil && *in.ProductCode != "" {
		p, ok := s.products[*in.ProductCode]
		if !ok {
			return nil, newAPIError("InvalidProductCodeException", "Product code %s is not a product of this seller", *in.ProductCode)
		}
		reqProduct = p
	}
	var product *Product // of the first record: a request is for one product
	for i := range recs {
		r := &recs[i]
		p, apiErr := s.resolveRecordLocked(i, r, reqProduct)
		if apiErr != nil {
			return nil, apiErr
		}
		if r.mode == "license" && reqProduct != nil {
			return nil, newAPIError(s.cfg.Answers.ProductCodeWithLicense, "usageRecords.%d: ProductCode must not be sent with LicenseArn records (it is for legacy CustomerIdentifier integrations only)", i+1)
		}
		if product == nil {
			product = p
		} else if p != product {
			return nil, newAPIError(s.cfg.Answers.MixedProducts, "usageRecords.%d is for product %s, usageRecords.1 for %s: each BatchMeterUsage request is for only one product", i+1, p.Code, product.Code)
		}
		if !p.hasDimension(str(r.raw.Dimension)) {
			return nil, newAPIError("InvalidUsageDimensionException", "usageRecords.%d: dimension %q is not a dimension of product %s", i+1, str(r.raw.Dimension), p.Code)
		}
		allocs, apiErr := checkAllocations(i, r.raw.UsageAllocations, r.quantity)
		if apiErr != nil {
			return nil, apiErr
		}
		r.allocations = allocs
	}
	// 9: per-record status.
	out := batchMeterUsageOutput{Results: []usageRecordResult{}, UnprocessedRecords: []usageRecord{}}
	for _, r := range recs {
		if c.unprocessedRate > 0 && s.Faults.unprocessed(c.unprocessedRate) {
			out.UnprocessedRecords = append(out.UnprocessedRecords, r.raw)
			continue
		}
		res := usageRecordResult{UsageRecord: r.raw}
		switch {
		case r.sub != nil && s.resendLocked(r):
			// Assumption (undocumented order): an identical resend of a
			// record AWS already billed is answered idempotently, even
			// after the subscription ended ("identical requests are
			// idempotent and can be retried"), so a client whose first
			// answer was lost learns the record was billed.
			res.Status, res.MeteringRecordId = s.billLocked(r, now)
		case r.sub == nil || !r.sub.meteringAllowed(now, s.cfg.FinalMeteringWindow) || !r.sub.startedBy(r.raw.Timestamp.Time, s.cfg.Answers.UsageBeforeStart):
			res.Status = "CustomerNotSubscribed"
		default:
			res.Status, res.MeteringRecordId = s.billLocked(r, now)
		}
		out.Results = append(out.Results, res)
	}
	return out, nil
}

// checkRecordShape checks lengths, patterns and ranges of one record and
// returns its quantity.
func checkRecordShape(i int, r usageRecord) (int64, *apiError) {
	n := i + 1
	if r.Timestamp == nil || r.Timestamp.IsZero() {
		return 0, validationError("Value null at 'usageRecords.%d.member.timestamp' failed to satisfy constraint: Member must not be null", n)
	}
	if r.Dimension == nil || len(*r.Dimension) == 0 || len(*r.Dimension) > 255 {
		return 0, validationError("Value at 'usageRecords.%d.member.dimension' failed to satisfy constraint: Member must have length between 1 and 255", n)
	}
	if r.CustomerIdentifier != nil && len(*r.CustomerIdentifier) > 255 {
		return 0, validationError("Value at 'usageRecords.%d.member.customerIdentifier' failed to satisfy constraint: Member must have length less than or equal to 255", n)
	}
	if a := r.CustomerAWSAccountId; a != nil && (len(*a) == 0 || len(*a) > 255 || !accountIDRE.MatchString(*a)) {
		return 0, validationError("Value at 'usageRecords.%d.member.customerAWSAccountId' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[0-9]+$", n)
	}
	if l := r.LicenseArn; l != nil && !validLicenseArn(*l) {
		return 0, validationError("Value at 'usageRecords.%d.member.licenseArn' failed to satisfy constraint: Member must satisfy regular expression pattern", n)
	}
	var q int64
	if r.Quantity != nil {
		v, err := r.Quantity.Int64()
		if err != nil || v < 0 || v > maxInt32 {
			return 0, validationError("Value '%s' at 'usageRecords.%d.member.quantity' failed to satisfy constraint: Member must have value between 0 and 2147483647", r.Quantity.String(), n)
		}
		q = v
	}
	if r.UsageAllocations != nil && (len(r.UsageAllocations) < 1 || len(r.UsageAllocations) > 2500) {
		return 0, validationError("Value at 'usageRecords.%d.member.usageAllocations' failed to satisfy constraint: Member must have length between 1 and 2500", n)
	}
	return q, nil
}

// outOfWindow says why t is outside the accepted window at now, or "".
func (s *Server) outOfWindow(t, now time.Time) string {
	if t.After(now.Add(s.cfg.FutureSkew)) {
		return "is in the future"
	}
	if now.Sub(t) >= s.cfg.MeteringWindow {
		return fmt.Sprintf("is %s or more in the past", s.cfg.MeteringWindow)
	}
	monthStart := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	if t.Before(monthStart) && !now.Before(monthStart.Add(s.cfg.MonthEndGrace)) {
		return fmt.Sprintf("is in the previous billing month, accepted only until %s", monthStart.Add(s.cfg.MonthEndGrace).Format(time.RFC3339))
	}
	return ""
}

// resolveRecordLocked finds the product and subscription a record is for.
// ASSUMPTIONS (marketplace-api.md §2.3, unverified): an unknown or
// unsubscribed customer is a per-record CustomerNotSubscribed, not
// InvalidCustomerIdentifierException; ProductCode-based and LicenseArn-based
// records for one agreement are separate dedupe keys (AWS warns that sending
// both double-bills).
func (s *Server) resolveRecordLocked(i int, r *checked, reqProduct *Product) (*Product, *apiError) {
	n := i + 1
	ci, acct, arn := str(r.raw.CustomerIdentifier), str(r.raw.CustomerAWSAccountId), str(r.raw.LicenseArn)
	if arn != "" {
		r.mode = "license"
		sub := s.byLicense[arn]
		if sub == nil {
			return nil, newAPIError("InvalidLicenseException", "usageRecords.%d: license %s is not a license of this seller's products", n, arn)
		}
		if (acct != "" && acct != sub.BuyerAccountID) || (ci != "" && ci != sub.CustomerIdentifier) {
			return nil, newAPIError("InvalidLicenseException", "usageRecords.%d: license %s does not match the customer", n, arn)
		}
		p := s.products[sub.ProductCode]
		if reqProduct != nil && reqProduct.Code != p.Code {
			return nil, newAPIError("InvalidLicenseException", "usageRecords.%d: license %s is not for product %s", n, arn, reqProduct.Code)
		}
		if ci != "" && p.LicenseBased {
			return nil, newAPIError("InvalidCustomerIdentifierException", "usageRecords.%d: CustomerIdentifier is not supported for product %s; use CustomerAWSAccountId", n, p.Code)
		}
		r.sub, r.customerKey = sub, acct+ci
		return p, nil
	}
	r.mode = "product"
	if reqProduct == nil {
		return nil, newAPIError("InvalidProductCodeException", "usageRecords.%d: ProductCode is required for records without a LicenseArn", n)
	}
	p := reqProduct
	if ci != "" && p.LicenseBased {
		return nil, newAPIError("InvalidCustomerIdentifierException", "usageRecords.%d: CustomerIdentifier is not supported for product %s; use CustomerAWSAccountId and LicenseArn", n, p.Code)
	}
	if p.LicenseBased {
		return nil, newAPIError(s.cfg.Answers.MissingLicense, "usageRecords.%d: product %s takes records with CustomerAWSAccountId and LicenseArn", n, p.Code)
	}
	if ci != "" {
		r.customerKey = ci
		r.sub = s.byProductCI[p.Code+"\x00"+ci]
		return p, nil
	}
	r.customerKey = acct
	// With concurrent agreements an account may have several; take the newest.
	if subs := s.byProductAcc[p.Code+"\x00"+acct]; len(subs) > 0 {
		r.sub = subs[len(subs)-1]
	}
	return p, nil
}

func checkAllocations(i int, in []usageAllocation, quantity int64) ([]UsageAllocation, *apiError) {
	if in == nil {
		return nil, nil
	}
	n := i + 1
	var sum int64
	seen := map[string]bool{}
	out := make([]UsageAllocation, 0, len(in))
	for j, a := range in {
		if a.AllocatedUsageQuantity == nil {
			return nil, validationError("Value null at 'usageRecords.%d.member.usageAllocations.%d.member.allocatedUsageQuantity' failed to satisfy constraint: Member must not be null", n, j+1)
		}
		q, err := a.AllocatedUsageQuantity.Int64()
		if err != nil || q < 0 || q > maxInt32 {
			return nil, newAPIError("InvalidUsageAllocationsException", "usageRecords.%d: allocated usage quantity %s must be between 0 and 2147483647", n, a.AllocatedUsageQuantity.String())
		}
		if a.Tags != nil && (len(a.Tags) < 1 || len(a.Tags) > 5) {
			return nil, newAPIError("InvalidTagException", "usageRecords.%d: an allocation must have between 1 and 5 tags (got %d)", n, len(a.Tags))
		}
		tags := make([]Tag, 0, len(a.Tags))
		keys := map[string]bool{}
		for _, t := range a.Tags {
			k, v := str(t.Key), str(t.Value)
			if t.Key == nil || t.Value == nil || len(k) < 1 || len(k) > 100 || len(v) < 1 || len(v) > 256 || !tagRE.MatchString(k) || !tagRE.MatchString(v) {
				return nil, newAPIError("InvalidTagException", "usageRecords.%d: invalid tag %q=%q", n, k, v)
			}
			if keys[k] {
				return nil, newAPIError("InvalidTagException", "usageRecords.%d: duplicate tag key %q in one allocation", n, k)
			}
			keys[k] = true
			tags = append(tags, Tag{Key: k, Value: v})
		}
		sort.Slice(tags, func(a, b int) bool { return tags[a].Key < tags[b].Key })
		sig := tagSignature(tags)
		if seen[sig] {
			return nil, newAPIError("InvalidUsageAllocationsException", "usageRecords.%d: each allocation must have a unique tag set", n)
		}
		seen[sig] = true
		sum += q
		out = append(out, UsageAllocation{Quantity: q, Tags: tags})
	}
	if sum != quantity {
		return nil, newAPIError("InvalidUsageAllocationsException", "usageRecords.%d: Sum of allocated usage quantities (%d) is not equal to the usage quantity (%d)", n, sum, quantity)
	}
	return out, nil
}

func tagSignature(tags []Tag) string {
	var b strings.Builder
	for _, t := range tags {
		b.WriteString(t.Key)
		b.WriteByte(0)
		b.WriteString(t.Value)
		b.WriteByte(0)
	}
	return b.String()
}

// resendLocked reports whether r is identical to a record already billed.
func (s *Server) resendLocked(r checked) bool {
	prev, ok := s.billed[billKey{agreementID: r.sub.AgreementID, mode: r.mode, dimension: str(r.raw.Dimension), hour: r.hour.Unix()}]
	return ok && prev.Quantity == r.quantity && sameAllocations(prev.Allocations, r.allocations)
}

// billLocked applies AWS's per-hour dedupe: the first record for a key is
// billed; an identical resend is an idempotent Success with the original
// MeteringRecordId; a different quantity for the same hour is a DuplicateRecord.
func (s *Server) billLocked(r checked, now time.Time) (status, id string) {
	key := billKey{agreementID: r.sub.AgreementID, mode: r.mode, dimension: str(r.raw.Dimension), hour: r.hour.Unix()}
	if prev, ok := s.billed[key]; ok {
		if prev.Quantity == r.quantity && sameAllocations(prev.Allocations, r.allocations) {
			prev.Calls++
			return "Success", prev.MeteringRecordID
		}
		return "DuplicateRecord", ""
	}
	rec := &BilledRecord{
		MeteringRecordID: newID(),
		AgreementID:      r.sub.AgreementID,
		ProductCode:      r.sub.ProductCode,
		BuyerAccountID:   r.sub.BuyerAccountID,
		CustomerKey:      r.customerKey,
		Mode:             r.mode,
		Dimension:        key.dimension,
		Hour:             r.hour,
		Quantity:         r.quantity,
		Allocations:      r.allocations,
		Calls:            1,
		BilledAt:         now,
	}
	s.billed[key] = rec
	return "Success", rec.MeteringRecordID
}

func sameAllocations(a, b []UsageAllocation) bool {
	sig := func(as []UsageAllocation) []string {
		out := make([]string, len(as))
		for i, x := range as {
			out[i] = fmt.Sprintf("%d\x01%s", x.Quantity, tagSignature(x.Tags))
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(sig(a), sig(b))
}

// --- MeterUsage (AMI/container products; included for completeness) ---

type meterUsageInput struct {
	ProductCode      *string
	Timestamp        *epochTime
	UsageDimension   *string
	UsageQuantity    *json.Number
	DryRun           *bool
	UsageAllocations []usageAllocation
	ClientToken      *string
}

type meterUsageOutput struct {
	MeteringRecordId string
}

func (s *Server) meterUsageOp(c call, body []byte) (any, *apiError) {
	var in meterUsageInput
	if err := c.decode(body, &in); err != nil {
		return nil, newAPIError("SerializationException", "%v", err)
	}
	if in.ProductCode == nil || in.Timestamp == nil || in.UsageDimension == nil {
		return nil, validationError("ProductCode, Timestamp and UsageDimension must not be null")
	}
	if tok := str(in.ClientToken); in.ClientToken != nil && (len(tok) < 1 || len(tok) > 64) {
		return nil, validationError("Value at 'clientToken' failed to satisfy constraint: Member must have length between 1 and 64")
	}
	var q int64
	if in.UsageQuantity != nil {
		v, err := in.UsageQuantity.Int64()
		if err != nil || v < 0 || v > maxInt32 {
			return nil, validationError("Value at 'usageQuantity' failed to satisfy constraint: Member must have value between 0 and 2147483647")
		}
		q = v
	}
	now := s.Clock.Now()
	// The MeterUsage documentation still says 6 hours.
	if in.Timestamp.After(now.Add(s.cfg.FutureSkew)) || now.Sub(in.Timestamp.Time) >= 6*time.Hour {
		return nil, newAPIError("TimestampOutOfBoundsException", "timestamp %s is outside the accepted window", in.Timestamp.Format(time.RFC3339))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.products[*in.ProductCode]
	if !ok {
		return nil, newAPIError("InvalidProductCodeException", "Product code %s is not a product of this seller", *in.ProductCode)
	}
	if !p.hasDimension(*in.UsageDimension) {
		return nil, newAPIError("InvalidUsageDimensionException", "dimension %q is not a dimension of product %s", *in.UsageDimension, p.Code)
	}
	if _, apiErr := checkAllocations(0, in.UsageAllocations, q); apiErr != nil {
		return nil, apiErr
	}
	// MeterUsage runs in the buyer's account (AMI and container products):
	// the signing account must be entitled to the product.
	account := c.callerAccount()
	entitled := false
	for _, sub := range s.byProductAcc[p.Code+"\x00"+account] {
		if sub.meteringAllowed(now, s.cfg.FinalMeteringWindow) {
			entitled = true
		}
	}
	if !entitled {
		return nil, newAPIError("CustomerNotEntitledException", "account %s is not entitled to product %s", account, p.Code)
	}
	if in.DryRun != nil && *in.DryRun {
		return nil, newAPIError("DryRunOperation", "request would have succeeded")
	}
	// De-duplicated per (customer, product, dimension, hour).
	params := fmt.Sprintf("%s|%s|%s|%d|%d", account, p.Code, *in.UsageDimension, in.Timestamp.Truncate(time.Hour).Unix(), q)
	if tok := str(in.ClientToken); tok != "" {
		if prev, ok := s.meterUsage["token:"+tok]; ok {
			if prev != params {
				return nil, newAPIError("IdempotencyConflictException", "client token %s was used with different parameters", tok)
			}
		}
		s.meterUsage["token:"+tok] = params
	}
	hourKey := fmt.Sprintf("%s|%s|%s|%d", account, p.Code, *in.UsageDimension, in.Timestamp.Truncate(time.Hour).Unix())
	if prev, ok := s.meterUsage[hourKey]; ok {
		id, prevParams, _ := strings.Cut(prev, " ")
		if prevParams != params {
			return nil, newAPIError("DuplicateRequestException", "usage for this dimension and hour was already reported with a different quantity")
		}
		return meterUsageOutput{MeteringRecordId: id}, nil
	}
	id := newID()
	s.meterUsage[hourKey] = id + " " + params
	return meterUsageOutput{MeteringRecordId: id}, nil
}

// RegisterUsage is for paid container products, which the emulator does not model.
func (s *Server) registerUsage(c call, body []byte) (any, *apiError) {
	return nil, newAPIError("PlatformNotSupportedException", "the emulator models SaaS products only; RegisterUsage is for container products")
}

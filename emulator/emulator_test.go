package emulator_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ent "github.com/aws/aws-sdk-go-v2/service/marketplaceentitlementservice"
	entschemas "github.com/aws/aws-sdk-go-v2/service/marketplaceentitlementservice/schemas"
	enttypes "github.com/aws/aws-sdk-go-v2/service/marketplaceentitlementservice/types"
	mm "github.com/aws/aws-sdk-go-v2/service/marketplacemetering"
	mmtypes "github.com/aws/aws-sdk-go-v2/service/marketplacemetering/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/transport/http/protocol/awsjson"

	"github.com/mpsaas/mpsaas/emulator"
)

// now is the frozen emulator time for the behaviour tables.
var now = time.Date(2026, 11, 23, 12, 30, 0, 0, time.UTC)

type fixture struct {
	em                  *emulator.Server
	url                 string
	metering            *mm.Client
	entCBOR, entJSON    *ent.Client
	legacy, license     emulator.SubscribeResult // subscription products
	contract, contract2 emulator.SubscribeResult // contract product (legacy identity)
	cancelled           emulator.SubscribeResult
}

func awsConfig(url string, attempts int) aws.Config {
	return aws.Config{
		Region:           "us-east-1",
		Credentials:      credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""),
		BaseEndpoint:     aws.String(url),
		RetryMaxAttempts: attempts,
	}
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	em := emulator.New(emulator.DefaultConfig())
	// The buyers subscribed a day before now, so usage of the last 24 hours
	// is within their agreements.
	em.Clock.Set(now.Add(-25 * time.Hour))
	srv := httptest.NewServer(em.Handler())
	t.Cleanup(srv.Close)
	cfg := awsConfig(srv.URL, 1)
	f := &fixture{
		em: em, url: srv.URL,
		metering: mm.NewFromConfig(cfg),
		entCBOR:  ent.NewFromConfig(cfg),
		entJSON: ent.NewFromConfig(cfg, func(o *ent.Options) {
			o.Protocol = awsjson.New11(entschemas.AWSMPEntitlementService)
		}),
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(em.AddProduct(emulator.Product{Code: "legacyprod", Type: emulator.ProductSubscription, Dimensions: []emulator.Dimension{{Name: "users"}, {Name: "admins"}}}))
	must(em.AddProduct(emulator.Product{Code: "newprod", Type: emulator.ProductSubscription, LicenseBased: true, Dimensions: []emulator.Dimension{{Name: "requests"}}}))
	must(em.AddProduct(emulator.Product{Code: "contractprod", Type: emulator.ProductContractWithConsumption, Dimensions: []emulator.Dimension{{Name: "seats"}, {Name: "storage"}}}))
	for _, acct := range []string{"111111111111", "222222222222", "333333333333", "444444444444"} {
		must(em.AddBuyer(emulator.Buyer{AccountID: acct}))
	}
	var err error
	sub := func(pc, acct string, ents map[string]int32) emulator.SubscribeResult {
		t.Helper()
		var r emulator.SubscribeResult
		r, err = em.Subscribe(emulator.SubscribeOptions{ProductCode: pc, BuyerAccountID: acct, Entitlements: ents})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	f.legacy = sub("legacyprod", "111111111111", nil)
	f.license = sub("newprod", "222222222222", nil)
	f.contract = sub("contractprod", "111111111111", map[string]int32{"seats": 10, "storage": 5})
	f.contract2 = sub("contractprod", "333333333333", map[string]int32{"seats": 3})
	f.cancelled = sub("legacyprod", "444444444444", nil)
	em.Clock.Set(now)
	// Fresh registration tokens, issued now (as when the buyer clicks
	// "set up your account" again).
	for _, r := range []*emulator.SubscribeResult{&f.legacy, &f.license, &f.contract, &f.contract2} {
		if *r, err = em.NewToken(r.Subscription.AgreementID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := em.Cancel(f.cancelled.Subscription.AgreementID); err != nil {
		t.Fatal(err)
	}
	return f
}

func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	if err != nil {
		return "non-API error: " + err.Error()
	}
	return ""
}

func TestResolveCustomer(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	tests := []struct {
		name      string
		token     string
		advance   time.Duration
		wantErr   string
		wantCI    bool
		wantAcct  string
		wantPC    string
		wantLicnc string
	}{
		{name: "legacy product returns CustomerIdentifier", token: f.legacy.Token, wantCI: true, wantAcct: "111111111111", wantPC: "legacyprod", wantLicnc: f.legacy.Subscription.LicenseArn},
		{name: "resolving twice returns the same answer", token: f.legacy.Token, wantCI: true, wantAcct: "111111111111", wantPC: "legacyprod", wantLicnc: f.legacy.Subscription.LicenseArn},
		{name: "license-based product has no CustomerIdentifier", token: f.license.Token, wantAcct: "222222222222", wantPC: "newprod", wantLicnc: f.license.Subscription.LicenseArn},
		{name: "unknown token", token: "not-a-token", wantErr: "InvalidTokenException"},
		{name: "token still valid just before 4 hours", token: f.legacy.Token, advance: 4*time.Hour - time.Second, wantCI: true, wantAcct: "111111111111", wantPC: "legacyprod", wantLicnc: f.legacy.Subscription.LicenseArn},
		{name: "token expired after 4 hours", token: f.legacy.Token, advance: time.Second, wantErr: "ExpiredTokenException"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.em.Clock.Advance(tt.advance)
			out, err := f.metering.ResolveCustomer(ctx, &mm.ResolveCustomerInput{RegistrationToken: aws.String(tt.token)})
			if got := errorCode(err); got != tt.wantErr {
				t.Fatalf("ResolveCustomer error = %q, want %q", got, tt.wantErr)
			}
			if err != nil {
				return
			}
			if gotCI := aws.ToString(out.CustomerIdentifier) != ""; gotCI != tt.wantCI {
				t.Errorf("CustomerIdentifier present = %v, want %v", gotCI, tt.wantCI)
			}
			if tt.wantCI && aws.ToString(out.CustomerIdentifier) != f.legacy.Subscription.CustomerIdentifier {
				t.Errorf("CustomerIdentifier = %q, want %q", aws.ToString(out.CustomerIdentifier), f.legacy.Subscription.CustomerIdentifier)
			}
			if got := aws.ToString(out.CustomerAWSAccountId); got != tt.wantAcct {
				t.Errorf("CustomerAWSAccountId = %q, want %q", got, tt.wantAcct)
			}
			if got := aws.ToString(out.ProductCode); got != tt.wantPC {
				t.Errorf("ProductCode = %q, want %q", got, tt.wantPC)
			}
			if got := aws.ToString(out.LicenseArn); got != tt.wantLicnc {
				t.Errorf("LicenseArn = %q, want %q", got, tt.wantLicnc)
			}
		})
	}
}

func rec(ci, acct, dim string, q int32, ts time.Time) mmtypes.UsageRecord {
	r := mmtypes.UsageRecord{Dimension: aws.String(dim), Quantity: aws.Int32(q), Timestamp: aws.Time(ts)}
	if ci != "" {
		r.CustomerIdentifier = aws.String(ci)
	}
	if acct != "" {
		r.CustomerAWSAccountId = aws.String(acct)
	}
	return r
}

func TestBatchMeterUsage(t *testing.T) {
	f := newFixture(t)
	ci := f.legacy.Subscription.CustomerIdentifier
	lic := f.license.Subscription.LicenseArn
	hour := now.Truncate(time.Hour)
	licRec := func(dim string, q int32, ts time.Time) mmtypes.UsageRecord {
		r := rec("", "222222222222", dim, q, ts)
		r.LicenseArn = aws.String(lic)
		return r
	}
	many := func(n int) []mmtypes.UsageRecord {
		var rs []mmtypes.UsageRecord
		for i := range n {
			rs = append(rs, rec(ci, "", "users", 1, hour.Add(-time.Duration(i+1)*time.Hour)))
		}
		return rs
	}
	tags := func(kv ...string) []mmtypes.Tag {
		var ts []mmtypes.Tag
		for i := 0; i < len(kv); i += 2 {
			ts = append(ts, mmtypes.Tag{Key: aws.String(kv[i]), Value: aws.String(kv[i+1])})
		}
		return ts
	}
	withAlloc := func(r mmtypes.UsageRecord, allocs ...mmtypes.UsageAllocation) mmtypes.UsageRecord {
		r.UsageAllocations = allocs
		return r
	}
	alloc := func(q int32, t []mmtypes.Tag) mmtypes.UsageAllocation {
		return mmtypes.UsageAllocation{AllocatedUsageQuantity: aws.Int32(q), Tags: t}
	}

	tests := []batchCase{
		{name: "legacy record succeeds", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(ci, "", "users", 5, hour)}, wantStatuses: []string{"Success"}},
		{name: "identical resend is an idempotent success", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(ci, "", "users", 5, hour.Add(10*time.Minute))}, wantStatuses: []string{"Success"}},
		{name: "different quantity in the same hour is a duplicate", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(ci, "", "users", 6, hour)}, wantStatuses: []string{"DuplicateRecord"}},
		{name: "account id with product code meters the legacy agreement", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec("", "111111111111", "admins", 1, hour)}, wantStatuses: []string{"Success"}},
		{name: "license record without product code", records: []mmtypes.UsageRecord{licRec("requests", 100, hour)}, wantStatuses: []string{"Success"}},
		{name: "25 records are accepted", productCode: "legacyprod", records: many(23), wantStatuses: repeat("Success", 23)},
		{name: "26 records are refused", productCode: "legacyprod", records: many(26), wantErr: "ValidationException"},
		{name: "both CustomerIdentifier and CustomerAWSAccountId", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(ci, "111111111111", "users", 1, hour)}, wantErr: "InvalidCustomerIdentifierException"},
		{name: "neither buyer key", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec("", "", "users", 1, hour)}, wantErr: "InvalidCustomerIdentifierException"},
		{name: "CustomerIdentifier for a license-based product", productCode: "newprod", records: []mmtypes.UsageRecord{rec("ABCDEFGHIJK", "", "requests", 1, hour)}, wantErr: "InvalidCustomerIdentifierException"},
		{name: "negative quantity", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(ci, "", "users", -1, hour)}, wantErr: "ValidationException"},
		{name: "quantity at int32 max", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(ci, "", "admins", 2147483647, hour.Add(-2*time.Hour))}, wantStatuses: []string{"Success"}},
		{name: "dimension longer than 255", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(ci, "", strings.Repeat("d", 256), 1, hour)}, wantErr: "ValidationException"},
		{name: "unknown dimension", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(ci, "", "gigabytes", 1, hour)}, wantErr: "InvalidUsageDimensionException"},
		{name: "unknown product code", productCode: "nosuchproduct", records: []mmtypes.UsageRecord{rec(ci, "", "users", 1, hour)}, wantErr: "InvalidProductCodeException"},
		{name: "malformed product code", productCode: "bad code!", records: []mmtypes.UsageRecord{rec(ci, "", "users", 1, hour)}, wantErr: "ValidationException"},
		{name: "CustomerIdentifier without product code", records: []mmtypes.UsageRecord{rec(ci, "", "users", 1, hour)}, wantErr: "InvalidProductCodeException"},
		{name: "unknown license", records: []mmtypes.UsageRecord{func() mmtypes.UsageRecord {
			r := licRec("requests", 1, hour)
			r.LicenseArn = aws.String("arn:aws:license-manager::222222222222:license:l-0000")
			return r
		}()}, wantErr: "InvalidLicenseException"},
		{name: "license of another account", records: []mmtypes.UsageRecord{func() mmtypes.UsageRecord {
			r := licRec("requests", 1, hour)
			r.CustomerAWSAccountId = aws.String("111111111111")
			return r
		}()}, wantErr: "InvalidLicenseException"},
		{name: "malformed license ARN", records: []mmtypes.UsageRecord{func() mmtypes.UsageRecord {
			r := licRec("requests", 1, hour)
			r.LicenseArn = aws.String("l-1234")
			return r
		}()}, wantErr: "ValidationException"},
		{name: "record 24 hours old fails the whole batch", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(ci, "", "admins", 1, hour), rec(ci, "", "users", 1, now.Add(-24*time.Hour))}, wantErr: "TimestampOutOfBoundsException"},
		{name: "record just inside 24 hours", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(ci, "", "users", 1, now.Add(-24*time.Hour+time.Minute))}, wantStatuses: []string{"Success"}},
		{name: "future record fails the whole batch", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(ci, "", "users", 1, now.Add(time.Hour))}, wantErr: "TimestampOutOfBoundsException"},
		{name: "unknown customer is not subscribed", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec("NOSUCHCUSTX", "", "users", 1, hour)}, wantStatuses: []string{"CustomerNotSubscribed"}},
		{name: "cancelled customer within the final hour is accepted", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(f.cancelled.Subscription.CustomerIdentifier, "", "users", 1, hour)}, wantStatuses: []string{"Success"}},
		{name: "mixed statuses in one batch", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(ci, "", "users", 5, hour), rec("NOSUCHCUSTX", "", "users", 1, hour), rec(ci, "", "users", 7, hour)}, wantStatuses: []string{"Success", "CustomerNotSubscribed", "DuplicateRecord"}},
		{name: "allocations summing to the quantity", productCode: "legacyprod", records: []mmtypes.UsageRecord{withAlloc(rec(ci, "", "admins", 10, hour.Add(-5*time.Hour)), alloc(4, tags("team", "a")), alloc(6, tags("team", "b")))}, wantStatuses: []string{"Success"}},
		{name: "allocations with an untagged bucket", productCode: "legacyprod", records: []mmtypes.UsageRecord{withAlloc(rec(ci, "", "admins", 10, hour.Add(-6*time.Hour)), alloc(4, tags("team", "a")), alloc(6, nil))}, wantStatuses: []string{"Success"}},
		{name: "allocations not summing to the quantity", productCode: "legacyprod", records: []mmtypes.UsageRecord{withAlloc(rec(ci, "", "users", 10, hour), alloc(4, tags("team", "a")))}, wantErr: "InvalidUsageAllocationsException"},
		{name: "allocations with the same tag set", productCode: "legacyprod", records: []mmtypes.UsageRecord{withAlloc(rec(ci, "", "users", 10, hour), alloc(4, tags("team", "a")), alloc(6, tags("team", "a")))}, wantErr: "InvalidUsageAllocationsException"},
		{name: "more than 5 tags", productCode: "legacyprod", records: []mmtypes.UsageRecord{withAlloc(rec(ci, "", "users", 1, hour), alloc(1, tags("a", "1", "b", "2", "c", "3", "d", "4", "e", "5", "f", "6")))}, wantErr: "InvalidTagException"},
		{name: "tag with a character outside the pattern", productCode: "legacyprod", records: []mmtypes.UsageRecord{withAlloc(rec(ci, "", "users", 1, hour), alloc(1, tags("team", "a{b}")))}, wantErr: "InvalidTagException"},
		{name: "tag key longer than 100", productCode: "legacyprod", records: []mmtypes.UsageRecord{withAlloc(rec(ci, "", "users", 1, hour), alloc(1, tags(strings.Repeat("k", 101), "v")))}, wantErr: "InvalidTagException"},
		{name: "empty batch", productCode: "legacyprod", records: []mmtypes.UsageRecord{}, wantStatuses: []string{}},
	}
	runBatchCases(t, f.metering, tests)

	// Billed exactly once per key, with the original quantity.
	billed := f.em.Billed("111111111111")
	var users []emulator.BilledRecord
	for _, b := range billed {
		if b.Dimension == "users" && b.Hour.Equal(hour) && b.ProductCode == "legacyprod" {
			users = append(users, b)
		}
	}
	if len(users) != 1 || users[0].Quantity != 5 || users[0].Calls != 3 {
		t.Errorf("billed users@%s = %+v, want one record of quantity 5 accepted 3 times", hour, users)
	}
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func TestBatchMeterUsageIdempotentRecordID(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	in := &mm.BatchMeterUsageInput{ProductCode: aws.String("legacyprod"), UsageRecords: []mmtypes.UsageRecord{rec(f.legacy.Subscription.CustomerIdentifier, "", "users", 3, now.Truncate(time.Hour))}}
	a, err := f.metering.BatchMeterUsage(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.metering.BatchMeterUsage(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if x, y := aws.ToString(a.Results[0].MeteringRecordId), aws.ToString(b.Results[0].MeteringRecordId); x == "" || x != y {
		t.Errorf("MeteringRecordId = %q then %q, want the same non-empty id", x, y)
	}
}

func TestLicenseAndProductCodeAreSeparateKeys(t *testing.T) {
	// AWS warns that ProductCode-based and LicenseArn-based records for the
	// same customer and hour double-bill; the emulator reproduces that.
	// (A legacy product: its buyers can be metered either way.)
	f := newFixture(t)
	ctx := context.Background()
	hour := now.Truncate(time.Hour)
	byProduct := rec(f.legacy.Subscription.CustomerIdentifier, "", "users", 1, hour)
	byLicense := rec("", "111111111111", "users", 1, hour)
	byLicense.LicenseArn = aws.String(f.legacy.Subscription.LicenseArn)
	if _, err := f.metering.BatchMeterUsage(ctx, &mm.BatchMeterUsageInput{ProductCode: aws.String("legacyprod"), UsageRecords: []mmtypes.UsageRecord{byProduct}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.metering.BatchMeterUsage(ctx, &mm.BatchMeterUsageInput{UsageRecords: []mmtypes.UsageRecord{byLicense}}); err != nil {
		t.Fatal(err)
	}
	if got := len(f.em.Billed("111111111111")); got != 2 {
		t.Errorf("billed records = %d, want 2 (double billing reproduced)", got)
	}
}

func TestCustomerNotSubscribedAfterFinalWindow(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.em.Clock.Advance(61 * time.Minute)
	f.em.RunDue()
	out, err := f.metering.BatchMeterUsage(ctx, &mm.BatchMeterUsageInput{ProductCode: aws.String("legacyprod"),
		UsageRecords: []mmtypes.UsageRecord{rec(f.cancelled.Subscription.CustomerIdentifier, "", "users", 1, now.Truncate(time.Hour))}})
	if err != nil {
		t.Fatal(err)
	}
	if got := out.Results[0].Status; got != mmtypes.UsageRecordResultStatusCustomerNotSubscribed {
		t.Errorf("status = %s, want CustomerNotSubscribed", got)
	}
}

func TestMonthEndGrace(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ci := f.legacy.Subscription.CustomerIdentifier
	lastOfOct := time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		now     time.Time
		wantErr string
	}{
		{now: time.Date(2026, 12, 1, 5, 59, 0, 0, time.UTC)},
		{now: time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC), wantErr: "TimestampOutOfBoundsException"},
	} {
		f.em.Clock.Set(tt.now)
		_, err := f.metering.BatchMeterUsage(ctx, &mm.BatchMeterUsageInput{ProductCode: aws.String("legacyprod"),
			UsageRecords: []mmtypes.UsageRecord{rec(ci, "", "admins", 1, lastOfOct)}})
		if got := errorCode(err); got != tt.wantErr {
			t.Errorf("at %s: error = %q, want %q", tt.now, got, tt.wantErr)
		}
	}
}

func TestGetEntitlements(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, proto := range []struct {
		name   string
		client *ent.Client
	}{{"cbor", f.entCBOR}, {"json", f.entJSON}} {
		t.Run(proto.name, func(t *testing.T) {
			tests := []struct {
				name    string
				in      ent.GetEntitlementsInput
				wantErr string
				want    int
			}{
				{name: "all entitlements of a product", in: ent.GetEntitlementsInput{ProductCode: aws.String("contractprod")}, want: 3},
				{name: "by customer identifier", in: ent.GetEntitlementsInput{ProductCode: aws.String("contractprod"), Filter: map[string][]string{"CUSTOMER_IDENTIFIER": {f.contract.Subscription.CustomerIdentifier}}}, want: 2},
				{name: "by account id", in: ent.GetEntitlementsInput{ProductCode: aws.String("contractprod"), Filter: map[string][]string{"CUSTOMER_AWS_ACCOUNT_ID": {"333333333333"}}}, want: 1},
				{name: "by license", in: ent.GetEntitlementsInput{ProductCode: aws.String("contractprod"), Filter: map[string][]string{"LICENSE_ARN": {f.contract.Subscription.LicenseArn}}}, want: 2},
				{name: "values within a key are OR'ed", in: ent.GetEntitlementsInput{ProductCode: aws.String("contractprod"), Filter: map[string][]string{"CUSTOMER_AWS_ACCOUNT_ID": {"111111111111", "333333333333"}}}, want: 3},
				{name: "keys are AND'ed", in: ent.GetEntitlementsInput{ProductCode: aws.String("contractprod"), Filter: map[string][]string{"CUSTOMER_AWS_ACCOUNT_ID": {"111111111111"}, "DIMENSION": {"storage"}}}, want: 1},
				{name: "both customer filters", in: ent.GetEntitlementsInput{ProductCode: aws.String("contractprod"), Filter: map[string][]string{"CUSTOMER_AWS_ACCOUNT_ID": {"1"}, "CUSTOMER_IDENTIFIER": {"x"}}}, wantErr: "InvalidParameterException"},
				{name: "MaxResults 0", in: ent.GetEntitlementsInput{ProductCode: aws.String("contractprod"), MaxResults: aws.Int32(0)}, wantErr: "InvalidParameterException"},
				{name: "MaxResults 26", in: ent.GetEntitlementsInput{ProductCode: aws.String("contractprod"), MaxResults: aws.Int32(26)}, wantErr: "InvalidParameterException"},
				{name: "bad NextToken", in: ent.GetEntitlementsInput{ProductCode: aws.String("contractprod"), NextToken: aws.String("garbage")}, wantErr: "InvalidParameterException"},
				{name: "unknown product", in: ent.GetEntitlementsInput{ProductCode: aws.String("nosuch")}, wantErr: "InvalidParameterException"},
				{name: "subscription product has none", in: ent.GetEntitlementsInput{ProductCode: aws.String("legacyprod")}, want: 0},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					out, err := proto.client.GetEntitlements(ctx, &tt.in)
					if got := errorCode(err); got != tt.wantErr {
						t.Fatalf("GetEntitlements error = %q (%v), want %q", got, err, tt.wantErr)
					}
					if err != nil {
						return
					}
					if len(out.Entitlements) != tt.want {
						t.Errorf("entitlements = %d, want %d", len(out.Entitlements), tt.want)
					}
					for _, e := range out.Entitlements {
						if e.Value == nil || e.Value.IntegerValue == nil || e.ExpirationDate == nil || !e.ExpirationDate.After(now) {
							t.Errorf("entitlement %+v: want an integer value and a future expiration date", e)
						}
					}
				})
			}
			t.Run("paginator with MaxResults 1 reads every page", func(t *testing.T) {
				p := ent.NewGetEntitlementsPaginator(proto.client, &ent.GetEntitlementsInput{ProductCode: aws.String("contractprod")}, func(o *ent.GetEntitlementsPaginatorOptions) { o.Limit = 1 })
				var got []enttypes.Entitlement
				pages := 0
				for p.HasMorePages() {
					page, err := p.NextPage(ctx)
					if err != nil {
						t.Fatal(err)
					}
					pages++
					got = append(got, page.Entitlements...)
				}
				if pages != 3 || len(got) != 3 {
					t.Errorf("pages = %d, entitlements = %d; want 3 and 3", pages, len(got))
				}
				seats := map[string]int32{}
				for _, e := range got {
					if aws.ToString(e.Dimension) == "seats" {
						seats[aws.ToString(e.CustomerAWSAccountId)] = aws.ToInt32(e.Value.IntegerValue)
					}
				}
				if seats["111111111111"] != 10 || seats["333333333333"] != 3 {
					t.Errorf("seats = %v, want 111111111111:10 333333333333:3", seats)
				}
			})
		})
	}
}

func TestFaultsAndRetries(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	in := &mm.ResolveCustomerInput{RegistrationToken: aws.String(f.legacy.Token)}
	for _, tt := range []struct {
		fault   emulator.Fault
		wantErr string
		status  int
	}{
		{fault: emulator.Fault{Operation: "ResolveCustomer", Error: "ThrottlingException", Count: 1}, wantErr: "ThrottlingException", status: 400},
		{fault: emulator.Fault{Operation: "ResolveCustomer", Error: "InternalServiceErrorException", Count: 1}, wantErr: "InternalServiceErrorException", status: 500},
	} {
		if err := f.em.Faults.Add(tt.fault); err != nil {
			t.Fatal(err)
		}
		_, err := f.metering.ResolveCustomer(ctx, in)
		if got := errorCode(err); got != tt.wantErr {
			t.Errorf("with fault %s: error = %q, want %q", tt.fault.Error, got, tt.wantErr)
		}
		var re interface{ HTTPStatusCode() int }
		if errors.As(err, &re) && re.HTTPStatusCode() != tt.status {
			t.Errorf("with fault %s: status = %d, want %d", tt.fault.Error, re.HTTPStatusCode(), tt.status)
		}
		// Count 1: the next call goes through.
		if _, err := f.metering.ResolveCustomer(ctx, in); err != nil {
			t.Errorf("after a one-shot fault: %v", err)
		}
	}
	// The SDK's standard retryer rides over a throttle and a 503.
	retrying := mm.NewFromConfig(awsConfig(f.url, 3))
	_ = f.em.Faults.Add(emulator.Fault{Operation: "ResolveCustomer", Error: "ThrottlingException", Count: 1})
	_ = f.em.Faults.Add(emulator.Fault{Operation: "ResolveCustomer", Error: "ServiceUnavailable", Count: 1})
	before := f.em.Calls()["ResolveCustomer"]
	if _, err := retrying.ResolveCustomer(ctx, in); err != nil {
		t.Fatalf("retrying client: %v", err)
	}
	if got := f.em.Calls()["ResolveCustomer"] - before; got != 3 {
		t.Errorf("attempts = %d, want 3", got)
	}
	// Latency.
	f.em.Faults.Clear()
	_ = f.em.Faults.Add(emulator.Fault{Operation: "*", Latency: emulator.Duration(150 * time.Millisecond), Count: 1})
	start := time.Now()
	if _, err := f.metering.ResolveCustomer(ctx, in); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("call took %s, want at least 150ms of injected latency", d)
	}
	// Unprocessed records.
	_ = f.em.Faults.Add(emulator.Fault{Operation: "BatchMeterUsage", UnprocessedRate: 1, Count: 1})
	out, err := f.metering.BatchMeterUsage(ctx, &mm.BatchMeterUsageInput{ProductCode: aws.String("legacyprod"),
		UsageRecords: []mmtypes.UsageRecord{rec(f.legacy.Subscription.CustomerIdentifier, "", "users", 1, now.Truncate(time.Hour))}})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.UnprocessedRecords) != 1 || len(out.Results) != 0 {
		t.Errorf("results = %d, unprocessed = %d; want 0 and 1", len(out.Results), len(out.UnprocessedRecords))
	}
	if n := len(f.em.Billed("")); n != 0 {
		t.Errorf("billed = %d, want 0 for an unprocessed record", n)
	}
}

func TestWireFormat(t *testing.T) {
	f := newFixture(t)
	post := func(target, body string) *http.Response {
		req, _ := http.NewRequest("POST", f.url+"/", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-amz-json-1.1")
		req.Header.Set("X-Amz-Target", target)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	for _, tt := range []struct {
		name, target, body, wantType string
		wantStatus                   int
	}{
		{"error body has __type and message", "AWSMPMeteringService.ResolveCustomer", `{"RegistrationToken":"nope"}`, "InvalidTokenException", 400},
		{"malformed JSON", "AWSMPMeteringService.BatchMeterUsage", `{"UsageRecords":[`, "SerializationException", 400},
		{"unknown operation", "AWSMPMeteringService.Nope", `{}`, "UnknownOperationException", 400},
		{"fractional timestamp is accepted", "AWSMPMeteringService.BatchMeterUsage", `{"ProductCode":"legacyprod","UsageRecords":[{"CustomerIdentifier":"` + f.legacy.Subscription.CustomerIdentifier + `","Dimension":"users","Quantity":1,"Timestamp":` + jsonNum(float64(now.Unix())+0.25) + `}]}`, "", 200},
		{"quantity above int32", "AWSMPMeteringService.BatchMeterUsage", `{"ProductCode":"legacyprod","UsageRecords":[{"CustomerIdentifier":"x","Dimension":"users","Quantity":2147483648,"Timestamp":` + jsonNum(float64(now.Unix())) + `}]}`, "ValidationException", 400},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp := post(tt.target, tt.body)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			if resp.Header.Get("x-amzn-RequestId") == "" || resp.Header.Get("Date") == "" {
				t.Error("missing x-amzn-RequestId or Date header")
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/x-amz-json-1.1" {
				t.Errorf("Content-Type = %q", ct)
			}
			var body map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			if tt.wantType != "" && (body["__type"] != tt.wantType || body["message"] == nil) {
				t.Errorf("body = %v, want __type %s with a message", body, tt.wantType)
			}
		})
	}
}

func jsonNum(f float64) string {
	b, _ := json.Marshal(f)
	return string(b)
}

func TestMeterUsage(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	hour := now.Truncate(time.Hour)
	in := func(q int32, ts time.Time, token string) *mm.MeterUsageInput {
		return &mm.MeterUsageInput{ProductCode: aws.String("legacyprod"), UsageDimension: aws.String("users"), UsageQuantity: aws.Int32(q), Timestamp: aws.Time(ts), ClientToken: aws.String(token)}
	}
	// MeterUsage is signed by the buyer's account (the emulator takes a
	// 12-digit access key id as the account).
	asBuyer := func(acct string) *mm.Client {
		cfg := awsConfig(f.url, 1)
		cfg.Credentials = credentials.NewStaticCredentialsProvider(acct, "secret", "")
		return mm.NewFromConfig(cfg)
	}
	buyer := asBuyer("111111111111")
	first, err := buyer.MeterUsage(ctx, in(4, hour, "tok-1"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		in      *mm.MeterUsageInput
		wantErr string
		sameID  bool
	}{
		{"identical request in the same hour returns the same record", in(4, hour.Add(5*time.Minute), "tok-2"), "", true},
		{"different quantity in the same hour", in(5, hour, "tok-3"), "DuplicateRequestException", false},
		{"client token reused with other parameters", in(9, hour.Add(-time.Hour), "tok-1"), "IdempotencyConflictException", false},
		{"older than 6 hours", in(1, now.Add(-7*time.Hour), "tok-4"), "TimestampOutOfBoundsException", false},
		{"unknown dimension", &mm.MeterUsageInput{ProductCode: aws.String("legacyprod"), UsageDimension: aws.String("nope"), Timestamp: aws.Time(hour)}, "InvalidUsageDimensionException", false},
		{"unknown product", &mm.MeterUsageInput{ProductCode: aws.String("nope"), UsageDimension: aws.String("users"), Timestamp: aws.Time(hour)}, "InvalidProductCodeException", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := buyer.MeterUsage(ctx, tt.in)
			if got := errorCode(err); got != tt.wantErr {
				t.Fatalf("MeterUsage error = %q (%v), want %q", got, err, tt.wantErr)
			}
			if tt.sameID && aws.ToString(out.MeteringRecordId) != aws.ToString(first.MeteringRecordId) {
				t.Errorf("MeteringRecordId = %s, want %s", aws.ToString(out.MeteringRecordId), aws.ToString(first.MeteringRecordId))
			}
			if tt.wantErr == "IdempotencyConflictException" {
				var re interface{ HTTPStatusCode() int }
				if errors.As(err, &re) && re.HTTPStatusCode() != 409 {
					t.Errorf("status = %d, want 409", re.HTTPStatusCode())
				}
			}
		})
	}
}

// TestMeterUsageEntitlement (issue 11): MeterUsage from an account that is
// not entitled to the product fails with CustomerNotEntitledException, and
// de-duplication is per (customer, product, dimension, hour).
func TestMeterUsageEntitlement(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	hour := now.Truncate(time.Hour)
	client := func(acct string) *mm.Client {
		cfg := awsConfig(f.url, 1)
		cfg.Credentials = credentials.NewStaticCredentialsProvider(acct, "secret", "")
		return mm.NewFromConfig(cfg)
	}
	in := func(q int32) *mm.MeterUsageInput {
		return &mm.MeterUsageInput{ProductCode: aws.String("legacyprod"), UsageDimension: aws.String("users"), UsageQuantity: aws.Int32(q), Timestamp: aws.Time(hour)}
	}
	for name, acct := range map[string]string{"the seller's own account": "AKIDEXAMPLE", "a buyer of another product": "222222222222", "an unknown account": "999999999999"} {
		if _, err := client(acct).MeterUsage(ctx, in(1)); errorCode(err) != "CustomerNotEntitledException" {
			t.Errorf("%s: %v, want CustomerNotEntitledException", name, err)
		}
	}
	// Two entitled buyers report the same product, dimension and hour with
	// different quantities: two customers, two records.
	a, err := client("111111111111").MeterUsage(ctx, in(3))
	if err != nil {
		t.Fatal(err)
	}
	b, err := client("444444444444").MeterUsage(ctx, in(5)) // cancelled, within the final hour
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(a.MeteringRecordId) == aws.ToString(b.MeteringRecordId) {
		t.Error("two customers got the same metering record")
	}
	if _, err := client("111111111111").MeterUsage(ctx, in(4)); errorCode(err) != "DuplicateRequestException" {
		t.Errorf("the same customer, another quantity: %v, want DuplicateRequestException", err)
	}
}

// TestBatchMeterUsageProductRules (issue 11): a request is for one product;
// LicenseArn records come without a request ProductCode; a product created
// for concurrent agreements takes only LicenseArn records; usage from
// before the agreement started is not billed.
func TestBatchMeterUsageProductRules(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	hour := now.Truncate(time.Hour)
	licRec := func(sub emulator.SubscribeResult, dim string, ts time.Time) mmtypes.UsageRecord {
		r := rec("", sub.Subscription.BuyerAccountID, dim, 1, ts)
		r.LicenseArn = aws.String(sub.Subscription.LicenseArn)
		return r
	}
	late, err := f.em.Subscribe(emulator.SubscribeOptions{ProductCode: "legacyprod", BuyerAccountID: "333333333333"}) // starts now, 12:30
	if err != nil {
		t.Fatal(err)
	}
	runBatchCases(t, f.metering, []batchCase{
		{name: "licenses of two products in one request", records: []mmtypes.UsageRecord{licRec(f.license, "requests", hour), licRec(f.legacy, "users", hour)}, wantErr: "ValidationException"},
		{name: "ProductCode sent with LicenseArn records", productCode: "newprod", records: []mmtypes.UsageRecord{licRec(f.license, "requests", hour)}, wantErr: "ValidationException"},
		{name: "account id without LicenseArn for a concurrent-agreements product", productCode: "newprod", records: []mmtypes.UsageRecord{rec("", "222222222222", "requests", 1, hour)}, wantErr: "ValidationException"},
		{name: "usage of an hour before the agreement started", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(late.Subscription.CustomerIdentifier, "", "users", 1, hour.Add(-time.Hour))}, wantStatuses: []string{"CustomerNotSubscribed"}},
		{name: "usage of the hour the agreement started in", productCode: "legacyprod", records: []mmtypes.UsageRecord{rec(late.Subscription.CustomerIdentifier, "", "users", 1, hour)}, wantStatuses: []string{"Success"}},
		{name: "two records of one license", records: []mmtypes.UsageRecord{licRec(f.license, "requests", hour), licRec(f.license, "requests", hour.Add(-time.Hour))}, wantStatuses: []string{"Success", "Success"}},
	})
	// The answers AWS does not document are configurable.
	cfg := emulator.DefaultConfig()
	cfg.Answers.MixedProducts = "InvalidProductCodeException"
	em := emulator.New(cfg)
	srv := httptest.NewServer(em.Handler())
	defer srv.Close()
	var subs []emulator.SubscribeResult
	for _, code := range []string{"p1", "p2"} {
		if _, err := em.AddProduct(emulator.Product{Code: code, Type: emulator.ProductSubscription, LicenseBased: true, Dimensions: []emulator.Dimension{{Name: "users"}}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := em.AddBuyer(emulator.Buyer{AccountID: "555555555555"}); err != nil {
		t.Fatal(err)
	}
	for _, code := range []string{"p1", "p2"} {
		r, err := em.Subscribe(emulator.SubscribeOptions{ProductCode: code, BuyerAccountID: "555555555555"})
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, r)
	}
	_, err = mm.NewFromConfig(awsConfig(srv.URL, 1)).BatchMeterUsage(ctx, &mm.BatchMeterUsageInput{UsageRecords: []mmtypes.UsageRecord{
		licRec(subs[0], "users", em.Clock.Now()), licRec(subs[1], "users", em.Clock.Now())}})
	if errorCode(err) != "InvalidProductCodeException" {
		t.Errorf("with Answers.MixedProducts changed: %v", err)
	}
}

func TestDisabledAPIFault(t *testing.T) {
	f := newFixture(t)
	if err := f.em.Faults.Add(emulator.Fault{Operation: "BatchMeterUsage", Error: "DisabledApiException", Count: 1}); err != nil {
		t.Fatal(err)
	}
	_, err := f.metering.BatchMeterUsage(context.Background(), &mm.BatchMeterUsageInput{ProductCode: aws.String("legacyprod"), UsageRecords: []mmtypes.UsageRecord{}})
	if got := errorCode(err); got != "DisabledApiException" {
		t.Errorf("error = %q, want DisabledApiException", got)
	}
	if err := f.em.Faults.Add(emulator.Fault{Error: "Explode"}); err == nil {
		t.Error("unknown fault error accepted")
	}
}

// batchCase is one BatchMeterUsage request and the emulator's answer.
type batchCase struct {
	name         string
	productCode  string
	records      []mmtypes.UsageRecord
	wantErr      string
	wantStatuses []string
}

// runBatchCases sends the cases in order (later ones may depend on what
// earlier ones billed) and checks each answer: the error, or the status of
// every record, a MeteringRecordId with every Success, each record echoed.
func runBatchCases(t *testing.T, client *mm.Client, cases []batchCase) {
	t.Helper()
	ctx := context.Background()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			in := &mm.BatchMeterUsageInput{UsageRecords: tt.records}
			if tt.productCode != "" {
				in.ProductCode = aws.String(tt.productCode)
			}
			out, err := client.BatchMeterUsage(ctx, in)
			if got := errorCode(err); got != tt.wantErr {
				t.Fatalf("BatchMeterUsage error = %q (%v), want %q", got, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if len(out.UnprocessedRecords) != 0 {
				t.Errorf("UnprocessedRecords = %d, want 0", len(out.UnprocessedRecords))
			}
			var got []string
			for i, r := range out.Results {
				got = append(got, string(r.Status))
				if r.Status == mmtypes.UsageRecordResultStatusSuccess && aws.ToString(r.MeteringRecordId) == "" {
					t.Errorf("result %d: Success without MeteringRecordId", i)
				}
				if aws.ToString(r.UsageRecord.Dimension) != aws.ToString(tt.records[i].Dimension) {
					t.Errorf("result %d echoes dimension %q, want %q", i, aws.ToString(r.UsageRecord.Dimension), aws.ToString(tt.records[i].Dimension))
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.wantStatuses, ",") {
				t.Errorf("statuses = %v, want %v", got, tt.wantStatuses)
			}
		})
	}

}

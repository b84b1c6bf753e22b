package marketplace_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ent "github.com/aws/aws-sdk-go-v2/service/marketplaceentitlementservice"
	entschemas "github.com/aws/aws-sdk-go-v2/service/marketplaceentitlementservice/schemas"
	"github.com/aws/smithy-go/transport/http/protocol/awsjson"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/marketplace"
)

func setup(t *testing.T) (*emulator.Server, *marketplace.Client) {
	t.Helper()
	em := emulator.New(emulator.DefaultConfig())
	srv := httptest.NewServer(em.Handler())
	t.Cleanup(srv.Close)
	cfg := aws.Config{Region: "eu-west-1", Credentials: credentials.NewStaticCredentialsProvider("A", "B", ""), RetryMaxAttempts: 1}
	c := marketplace.New(cfg, marketplace.Options{MeteringEndpoint: srv.URL, EntitlementEndpoint: srv.URL})
	if _, err := em.AddProduct(emulator.Product{Code: "p", Type: emulator.ProductContract, Dimensions: []emulator.Dimension{{Name: "a"}, {Name: "b"}, {Name: "c"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := em.AddBuyer(emulator.Buyer{AccountID: "123456789012"}); err != nil {
		t.Fatal(err)
	}
	return em, c
}

func TestResolveCustomerErrors(t *testing.T) {
	em, c := setup(t)
	ctx := context.Background()
	res, err := em.Subscribe(emulator.SubscribeOptions{ProductCode: "p", BuyerAccountID: "123456789012"})
	if err != nil {
		t.Fatal(err)
	}
	cust, err := c.ResolveCustomer(ctx, res.Token)
	if err != nil || cust.ProductCode != "p" || cust.CustomerAWSAccountID != "123456789012" || cust.CustomerIdentifier == "" {
		t.Fatalf("ResolveCustomer = %+v, %v", cust, err)
	}
	if _, err := c.ResolveCustomer(ctx, "bogus"); mpsaas.ErrorCode(err) != mpsaas.EINVALID || !strings.Contains(mpsaas.ErrorMessage(err), "not valid") {
		t.Errorf("bogus token: %v", err)
	}
	_ = em.Faults.Add(emulator.Fault{Operation: "ResolveCustomer", Error: "ThrottlingException", Count: 1})
	if _, err := c.ResolveCustomer(ctx, res.Token); mpsaas.ErrorCode(err) != mpsaas.EUNAVAILABLE {
		t.Errorf("throttled: code %q (%v), want unavailable", mpsaas.ErrorCode(err), err)
	}
	_ = em.Faults.Add(emulator.Fault{Operation: "ResolveCustomer", Error: "ServiceUnavailable", Count: 1})
	if _, err := c.ResolveCustomer(ctx, res.Token); mpsaas.ErrorCode(err) != mpsaas.EUNAVAILABLE {
		t.Errorf("503: code %q (%v), want unavailable", mpsaas.ErrorCode(err), err)
	}
	em.Clock.Advance(5 * time.Hour)
	if _, err := c.ResolveCustomer(ctx, res.Token); mpsaas.ErrorCode(err) != mpsaas.EINVALID || !strings.Contains(mpsaas.ErrorMessage(err), "expired") {
		t.Errorf("expired token: %v", err)
	}
}

// GetEntitlements reads every page (the emulator pages at 25; the contract
// has 30 dimensions) and gives the same answer over CBOR and JSON.
func TestGetEntitlementsAllPagesBothProtocols(t *testing.T) {
	em, c := setup(t)
	ctx := context.Background()
	var dims []emulator.Dimension
	ents := map[string]int32{}
	for i := 0; i < 30; i++ {
		name := fmt.Sprintf("dim%02d", i)
		dims = append(dims, emulator.Dimension{Name: name})
		ents[name] = int32(i)
	}
	if _, err := em.AddProduct(emulator.Product{Code: "big", Type: emulator.ProductContract, Dimensions: dims}); err != nil {
		t.Fatal(err)
	}
	res, err := em.Subscribe(emulator.SubscribeOptions{ProductCode: "big", BuyerAccountID: "123456789012", Entitlements: ents})
	if err != nil {
		t.Fatal(err)
	}
	jsonClient := *c
	jsonClient.Entitlement = ent.New(c.Entitlement.Options(), func(o *ent.Options) { o.Protocol = awsjson.New11(entschemas.AWSMPEntitlementService) })
	for name, client := range map[string]*marketplace.Client{"cbor": c, "json": &jsonClient} {
		for _, cust := range []mpsaas.Customer{
			{ProductCode: "big", CustomerIdentifier: res.Subscription.CustomerIdentifier},
			{ProductCode: "big", LicenseArn: res.Subscription.LicenseArn},
			{ProductCode: "big", CustomerAWSAccountID: "123456789012"},
		} {
			before := em.Calls()["GetEntitlements"]
			got, raw, err := client.GetEntitlements(ctx, cust)
			if err != nil || len(got) != 30 || strings.Count(raw, `"Dimension"`) != 30 {
				t.Fatalf("%s %+v: %d entitlements, %v", name, cust, len(got), err)
			}
			if calls := em.Calls()["GetEntitlements"] - before; calls != 2 {
				t.Errorf("%s: %d calls, want 2 pages", name, calls)
			}
			for _, e := range got {
				var i int
				fmt.Sscanf(e.Dimension, "dim%02d", &i)
				if e.Value != int64(i) || e.ExpirationDate.IsZero() {
					t.Errorf("%s: %+v, want value %d and an expiration date", name, e, i)
				}
			}
		}
	}
	if _, _, err := c.GetEntitlements(ctx, mpsaas.Customer{ProductCode: "big"}); mpsaas.ErrorCode(err) != mpsaas.EINVALID {
		t.Errorf("no identifier: %v, want EINVALID", err)
	}
}

// TestProductAgreementsPages: the agreements of a product are read 50 a
// page (the Agreement API's limit) until the last, each exactly once, and
// only the product's.
func TestProductAgreementsPages(t *testing.T) {
	em := emulator.New(emulator.DefaultConfig())
	srv := httptest.NewServer(em.Handler())
	t.Cleanup(srv.Close)
	c := marketplace.New(aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("A", "B", "")},
		marketplace.Options{AgreementEndpoint: srv.URL})
	for _, code := range []string{"many", "other"} {
		if _, err := em.AddProduct(emulator.Product{Code: code, Type: emulator.ProductSubscription, LicenseBased: true, Dimensions: []emulator.Dimension{{Name: "u"}}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 123 {
		b, err := em.AddBuyer(emulator.Buyer{})
		if err != nil {
			t.Fatal(err)
		}
		product := "many"
		if i%10 == 0 {
			product = "other"
		}
		if _, err := em.Subscribe(emulator.SubscribeOptions{ProductCode: product, BuyerAccountID: b.AccountID}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	err := c.ProductAgreements(context.Background(), "many", func(a mpsaas.Agreement) error {
		if seen[a.ID] || a.Status != "ACTIVE" || a.AcceptorAccountID == "" || a.Start.IsZero() {
			t.Errorf("agreement %+v (seen before: %v)", a, seen[a.ID])
		}
		seen[a.ID] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 110 {
		t.Errorf("%d agreements, want the product's 110", len(seen))
	}
	if calls := em.Calls()["SearchAgreements"]; calls != 3 {
		t.Errorf("%d SearchAgreements calls, want 3 pages of at most 50", calls)
	}
}

package emulator_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	agr "github.com/aws/aws-sdk-go-v2/service/marketplaceagreement"
	agrtypes "github.com/aws/aws-sdk-go-v2/service/marketplaceagreement/types"

	"github.com/mpsaas/mpsaas/emulator"
)

// TestAgreementAPI drives the emulator's Agreement API with the real
// aws-sdk-go-v2 marketplaceagreement client (RPC v2 CBOR), as the seller:
// find an agreement by its license, describe it, read its terms.
func TestAgreementAPI(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	client := agr.NewFromConfig(awsConfig(f.url, 1))
	filters := func(kv ...string) []agrtypes.Filter {
		out := []agrtypes.Filter{{Name: aws.String("AgreementType"), Values: []string{"PurchaseAgreement"}}, {Name: aws.String("PartyType"), Values: []string{"Proposer"}}}
		for i := 0; i < len(kv); i += 2 {
			out = append(out, agrtypes.Filter{Name: aws.String(kv[i]), Values: []string{kv[i+1]}})
		}
		return out
	}
	trial, err := f.em.Subscribe(emulator.SubscribeOptions{ProductCode: "newprod", BuyerAccountID: "333333333333", FreeTrial: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		sub       emulator.SubscribeResult
		freeTrial bool
	}{{f.license, false}, {trial, true}} {
		out, err := client.SearchAgreements(ctx, &agr.SearchAgreementsInput{Catalog: aws.String("AWSMarketplace"), Filters: filters("LicenseArn", tt.sub.Subscription.LicenseArn)})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.AgreementViewSummaries) != 1 || aws.ToString(out.AgreementViewSummaries[0].AgreementId) != tt.sub.Subscription.AgreementID {
			t.Fatalf("search by license: %+v", out.AgreementViewSummaries)
		}
		a := out.AgreementViewSummaries[0]
		if aws.ToString(a.Acceptor.AccountId) != tt.sub.Subscription.BuyerAccountID || aws.ToString(a.Proposer.AccountId) != emulator.SellerAccountID ||
			a.Status != agrtypes.AgreementStatusActive || aws.ToString(a.ProposalSummary.Resources[0].Id) != "newprod" || a.StartTime == nil {
			t.Errorf("agreement summary: %+v", a)
		}
		d, err := client.DescribeAgreement(ctx, &agr.DescribeAgreementInput{AgreementId: a.AgreementId})
		if err != nil || aws.ToString(d.ProposalSummary.OfferId) != tt.sub.Subscription.OfferID || d.AgreementType == nil {
			t.Errorf("describe: %+v, %v", d, err)
		}
		terms, err := client.GetAgreementTerms(ctx, &agr.GetAgreementTermsInput{AgreementId: a.AgreementId})
		if err != nil {
			t.Fatal(err)
		}
		gotTrial := false
		for _, term := range terms.AcceptedTerms {
			if ft, ok := term.(*agrtypes.AcceptedTermMemberFreeTrialPricingTerm); ok {
				gotTrial = aws.ToString(ft.Value.Type) == "FreeTrialPricingTerm" && len(ft.Value.Grants) == 1
			}
		}
		if gotTrial != tt.freeTrial || len(terms.AcceptedTerms) == 0 {
			t.Errorf("terms of %s: %d, free trial %v, want %v", tt.sub.Subscription.AgreementID, len(terms.AcceptedTerms), gotTrial, tt.freeTrial)
		}
	}
	// A cancelled agreement, by account and status; paging.
	out, err := client.SearchAgreements(ctx, &agr.SearchAgreementsInput{Filters: filters("AcceptorAccountId", "444444444444", "Status", "CANCELLED")})
	if err != nil || len(out.AgreementViewSummaries) != 1 || out.AgreementViewSummaries[0].EndTime == nil {
		t.Errorf("cancelled agreements of 444444444444: %+v, %v", out, err)
	}
	seen := 0
	p := agr.NewSearchAgreementsPaginator(client, &agr.SearchAgreementsInput{Filters: filters(), MaxResults: aws.Int32(2)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.AgreementViewSummaries) > 2 {
			t.Errorf("page of %d", len(page.AgreementViewSummaries))
		}
		seen += len(page.AgreementViewSummaries)
	}
	if want := len(f.em.Subscriptions()); seen != want {
		t.Errorf("paged through %d agreements, want %d", seen, want)
	}
	// What AWS refuses.
	if _, err := client.SearchAgreements(ctx, &agr.SearchAgreementsInput{}); errorCode(err) != "ValidationException" {
		t.Errorf("no AgreementType: %v", err)
	}
	if _, err := client.SearchAgreements(ctx, &agr.SearchAgreementsInput{Filters: filters("Colour", "blue")}); errorCode(err) != "ValidationException" {
		t.Errorf("unknown filter: %v", err)
	}
	if _, err := client.GetAgreementTerms(ctx, &agr.GetAgreementTermsInput{AgreementId: aws.String("agmt-nosuchagreement")}); errorCode(err) != "ResourceNotFoundException" {
		t.Errorf("unknown agreement: %v", err)
	}
	for name, in := range map[string]*agr.SearchAgreementsInput{
		"maxResults 51":          {Filters: filters(), MaxResults: aws.Int32(51)},
		"a foreign nextToken":    {Filters: filters(), NextToken: aws.String("not-a-token")},
		"another catalog":        {Filters: filters(), Catalog: aws.String("Elsewhere")},
		"a filter with no value": {Filters: append(filters(), agrtypes.Filter{Name: aws.String("Status")})},
	} {
		if _, err := client.SearchAgreements(ctx, in); errorCode(err) != "ValidationException" {
			t.Errorf("%s: %v, want ValidationException", name, err)
		}
	}
	acceptor := []agrtypes.Filter{{Name: aws.String("AgreementType"), Values: []string{"PurchaseAgreement"}}, {Name: aws.String("PartyType"), Values: []string{"Acceptor"}}}
	if _, err := client.SearchAgreements(ctx, &agr.SearchAgreementsInput{Filters: acceptor}); errorCode(err) != "AccessDeniedException" {
		t.Errorf("as the acceptor: %v, want AccessDeniedException", err)
	}
}

// TestDroppedNotifications (issue 11): the control API loses the next
// notifications of a channel, as a deleted subscription or a disabled rule
// would; the agreement changes all the same, so the seller's view drifts.
func TestDroppedNotifications(t *testing.T) {
	f := newFixture(t)
	post := func(body string) int {
		resp, err := http.Post(f.url+"/emulator/api/notifications/drop", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(`{"count":2,"channel":"eventbridge"}`); code != 200 {
		t.Fatalf("drop: %d", code)
	}
	seq := len(f.em.Notifications(0))
	res, err := f.em.Subscribe(emulator.SubscribeOptions{ProductCode: "legacyprod", BuyerAccountID: "333333333333"})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, n := range f.em.Notifications(seq) {
		var ev struct {
			DetailType string `json:"detail-type"`
		}
		_ = json.Unmarshal(n.Body, &ev)
		kinds = append(kinds, n.Channel+":"+ev.DetailType)
	}
	// The two agreement events are lost; the SNS message and the license event arrive.
	if got := strings.Join(kinds, ","); got != "sns-subscription:,eventbridge:License Updated - Manufacturer" {
		t.Errorf("notifications = %s", got)
	}
	if f.em.Dropped() != 2 || res.Subscription.Status != emulator.StatusActive {
		t.Errorf("dropped %d, agreement %s", f.em.Dropped(), res.Subscription.Status)
	}
	if code := post(`{"count":1,"channel":"carrier-pigeon"}`); code != 400 {
		t.Errorf("unknown channel: %d", code)
	}
	if code := post(`{"count":-1}`); code != 400 {
		t.Errorf("negative count: %d", code)
	}
	if _, err := f.em.Subscribe(emulator.SubscribeOptions{ProductCode: "newprod", BuyerAccountID: "444444444444", StartedAt: f.em.Clock.Now().Add(time.Hour)}); err == nil {
		t.Error("an agreement starting in the future was accepted")
	}
}

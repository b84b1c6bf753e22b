package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/webhook"
)

const hookSecret = "lambda-webhook-secret-0123456789"

type sink struct {
	mu      sync.Mutex
	changes []mpsaas.AccessChange
}

func (s *sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	if err := webhook.Verify([]byte(hookSecret), r.Header.Get(webhook.SignatureHeader), b, time.Now(), time.Minute); err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var c mpsaas.AccessChange
	_ = json.Unmarshal(b, &c)
	s.mu.Lock()
	s.changes = append(s.changes, c)
	s.mu.Unlock()
}

func (s *sink) accesses() []mpsaas.Access {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []mpsaas.Access
	for _, c := range s.changes {
		out = append(out, c.Access)
	}
	return out
}

// TestBuyerJourneyThroughLambdaHandlers runs the journey through the Lambda
// handlers, invoked with real event shapes (HTTP API, SQS, EventBridge,
// scheduled), on DynamoDB (dynalite) and the emulator.
func TestBuyerJourneyThroughLambdaHandlers(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, emulator.Product{Code: "lambda-prod", Type: emulator.ProductSubscription, Dimensions: []emulator.Dimension{{Name: "users"}}})
	em := f.em
	if _, err := em.AddBuyer(emulator.Buyer{AccountID: "123456789012"}); err != nil {
		t.Fatal(err)
	}
	hooks := &sink{}
	hookSrv := httptest.NewServer(hooks)
	defer hookSrv.Close()
	for k, v := range map[string]string{
		"MPSAAS_PRODUCT_CODES": "lambda-prod", "MPSAAS_SECRET": strings.Repeat("k", 32),
		"MPSAAS_WEBHOOK_URL": hookSrv.URL, "MPSAAS_WEBHOOK_SECRET": hookSecret,
		"MPSAAS_USAGE_API_KEYS": "lambda-usage-key-0123456789",
	} {
		f.env[k] = v
	}
	calls := map[string]*actionRecorder{}
	fn := func(role string) *App {
		t.Helper()
		calls[role] = &actionRecorder{seen: map[string]bool{}}
		return f.build(t, role, awsconfig.WithHTTPClient(calls[role]))
	}
	api, evs, disp, meter := fn("api"), fn("events"), fn("dispatch"), fn("meter")
	// The CloudWatch metrics the api and dispatch functions write (EMF).
	var apiEMF, dispatchEMF bytes.Buffer
	api.metrics.W, disp.metrics.W = &apiEMF, &dispatchEMF
	apiHandler := api.handler().(func(context.Context, events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error))
	dispatch := disp.handler().(func(context.Context, events.EventBridgeEvent) error)
	post := func(path, form string) events.APIGatewayV2HTTPResponse {
		t.Helper()
		ev := events.APIGatewayV2HTTPRequest{Version: "2.0", RawPath: path, Body: base64.StdEncoding.EncodeToString([]byte(form)), IsBase64Encoded: true,
			Headers: map[string]string{"content-type": "application/x-www-form-urlencoded"}}
		ev.RequestContext.HTTP.Method, ev.RequestContext.Stage = "POST", "$default"
		res, err := apiHandler(ctx, ev)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	sqsBatch := func(bodies ...[]byte) json.RawMessage {
		var ev events.SQSEvent
		for i, b := range bodies {
			ev.Records = append(ev.Records, events.SQSMessage{MessageId: fmt.Sprintf("msg-%d", i), Body: string(b), EventSource: "aws:sqs"})
		}
		raw, _ := json.Marshal(ev)
		return raw
	}

	// The buyer subscribes; SNS messages arrive through SQS before the buyer registers.
	res, err := em.Subscribe(emulator.SubscribeOptions{StartedAt: em.Clock.Now().Add(-24 * time.Hour), ProductCode: "lambda-prod", BuyerAccountID: "123456789012"})
	if err != nil {
		t.Fatal(err)
	}
	var snsBodies [][]byte
	for _, n := range em.Notifications(0) {
		if n.Channel != emulator.ChannelEventBridge {
			snsBodies = append(snsBodies, n.Body)
		} else if _, err := evs.handleEvent(ctx, json.RawMessage(n.Body)); err != nil {
			t.Fatalf("EventBridge event: %v", err)
		}
	}
	out, err := evs.handleEvent(ctx, sqsBatch(append(snsBodies, []byte("not a notification"))...))
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := out.(events.SQSEventResponse); !ok || len(r.BatchItemFailures) != 1 || r.BatchItemFailures[0].ItemIdentifier != fmt.Sprintf("msg-%d", len(snsBodies)) {
		t.Fatalf("SQS response = %+v, want only the malformed message failed", out)
	}
	// The buyer's browser posts the token to the fulfillment URL (API Gateway).
	page := post("/fulfillment", url.Values{"x-amzn-marketplace-token": {res.Token}}.Encode())
	if page.StatusCode != 200 || !strings.Contains(page.Body, `id="register-form"`) {
		t.Fatalf("fulfillment: %d %s", page.StatusCode, page.Body)
	}
	session := regexp.MustCompile(`name="session" value="([^"]+)"`).FindStringSubmatch(page.Body)
	if session == nil {
		t.Fatal("no session field")
	}
	done := post("/register", url.Values{"session": {strings.ReplaceAll(session[1], "&#43;", "+")}, "companyName": {"Acme"}, "contactPerson": {"Ann"},
		"contactPhone": {"+1 555 0100"}, "contactEmail": {"ann@acme.example"}}.Encode())
	if done.StatusCode != 200 || !strings.Contains(done.Body, "Thank you for registering") {
		t.Fatalf("register: %d %s", done.StatusCode, done.Body)
	}
	if err := dispatch(ctx, events.EventBridgeEvent{DetailType: "Scheduled Event", Source: "aws.events"}); err != nil {
		t.Fatal(err)
	}
	if got := hooks.accesses(); fmt.Sprint(got) != "[granted]" {
		t.Fatalf("webhooks after registration = %v, want [granted]", got)
	}
	// The seller's app reports usage through the API; the meter function bills it.
	var granted mpsaas.AccessChange
	hooks.mu.Lock()
	granted = hooks.changes[0]
	hooks.mu.Unlock()
	usageHour := mpsaas.Hour(time.Now()).Add(-2 * time.Hour)
	usage := fmt.Sprintf(`{"idempotencyKey":"job-1","records":[{"customer":%q,"dimension":"users","quantity":7,"time":%q},{"customer":%q,"dimension":"users","quantity":5,"time":%q}]}`,
		granted.Subscriber.Key, usageHour.Add(time.Minute).Format(time.RFC3339), granted.Subscriber.Key, usageHour.Add(2*time.Minute).Format(time.RFC3339))
	for i := 0; i < 2; i++ { // a retried POST counts once
		ev := events.APIGatewayV2HTTPRequest{Version: "2.0", RawPath: "/v1/usage", Body: usage,
			Headers: map[string]string{"content-type": "application/json", "authorization": "Bearer lambda-usage-key-0123456789"}}
		ev.RequestContext.HTTP.Method = "POST"
		res, err := apiHandler(ctx, ev)
		if err != nil || (res.StatusCode != 202 && res.StatusCode != 200) {
			t.Fatalf("POST /v1/usage: %d %s %v", res.StatusCode, res.Body, err)
		}
	}
	// The seller's app asks whether the buyer is entitled (issue 12): from
	// DynamoDB, through the same handler as serve's.
	ent := events.APIGatewayV2HTTPRequest{Version: "2.0", RawPath: "/v1/entitlements", RawQueryString: "customer=" + url.QueryEscape(granted.Subscriber.Key),
		Headers: map[string]string{"authorization": "Bearer lambda-usage-key-0123456789"}}
	ent.RequestContext.HTTP.Method = "GET"
	if res, err := apiHandler(ctx, ent); err != nil || res.StatusCode != 200 || !strings.Contains(res.Body, `"access":"granted"`) || res.Headers["ETag"] == "" && res.Headers["Etag"] == "" {
		t.Errorf("GET /v1/entitlements: %d %s %v %v", res.StatusCode, res.Body, res.Headers, err)
	}
	meterRun := meter.handler().(func(context.Context, events.EventBridgeEvent) error)
	if err := meterRun(ctx, events.EventBridgeEvent{DetailType: "Scheduled Event"}); err != nil {
		t.Fatal(err)
	}
	billed := em.Billed("123456789012")
	if len(billed) != 1 || billed[0].Quantity != 12 || !billed[0].Hour.Equal(usageHour) {
		t.Fatalf("billed = %+v, want 12 users in %s", billed, usageHour)
	}
	// The buyer cancels: EventBridge delivers the agreement and license events.
	seq := len(em.Notifications(0))
	if _, err := em.Cancel(res.Subscription.AgreementID); err != nil {
		t.Fatal(err)
	}
	for _, n := range em.Notifications(seq) {
		if n.Channel == emulator.ChannelEventBridge {
			if _, err := evs.handleEvent(ctx, json.RawMessage(n.Body)); err != nil {
				t.Fatalf("EventBridge event: %v", err)
			}
		}
	}
	if err := dispatch(ctx, events.EventBridgeEvent{}); err != nil {
		t.Fatal(err)
	}
	// Access is kept through the final metering window; EventBridge says
	// nothing when it ends: the meter function's next run after it revokes.
	if got := hooks.accesses(); fmt.Sprint(got) != "[granted pending-cancellation]" {
		t.Errorf("webhooks after the cancel = %v, want [granted pending-cancellation]", got)
	}
	if err := meterRun(ctx, events.EventBridgeEvent{DetailType: "Scheduled Event"}); err != nil {
		t.Fatal(err)
	}
	if err := dispatch(ctx, events.EventBridgeEvent{}); err != nil {
		t.Fatal(err)
	}
	if got := hooks.accesses(); fmt.Sprint(got) != "[granted pending-cancellation]" {
		t.Errorf("webhooks within the window = %v, want no revocation yet", got)
	}
	meter.svc.Clock = mpsaas.ClockFunc(func() time.Time { return time.Now().Add(61 * time.Minute) })
	if err := meterRun(ctx, events.EventBridgeEvent{DetailType: "Scheduled Event"}); err != nil {
		t.Fatal(err)
	}
	if err := dispatch(ctx, events.EventBridgeEvent{}); err != nil {
		t.Fatal(err)
	}
	if got := hooks.accesses(); fmt.Sprint(got) != "[granted pending-cancellation revoked]" {
		t.Errorf("webhooks = %v, want [granted pending-cancellation revoked]", got)
	}
	for buf, names := range map[*bytes.Buffer][]string{&apiEMF: {`"Registrations":1`, `"UsageRecordsStored":`}, &dispatchEMF: {`"AccessChangesDelivered":`}} {
		for _, n := range names {
			if !strings.Contains(buf.String(), n) {
				t.Errorf("EMF lines lack %s:\n%s", n, buf.String())
			}
		}
	}
	// Every AWS call each function made is one its IAM policy must allow.
	for role, rec := range calls {
		for action := range rec.seen {
			if !slices.Contains(awsActions[role], action) {
				t.Errorf("the %s function called %s, which awsActions (and so the template's IAM policy) does not list", role, action)
			}
		}
		if len(rec.seen) == 0 {
			t.Errorf("no AWS calls recorded for %s", role)
		}
	}
}

// actionRecorder is an HTTP client that notes the IAM action of each AWS call.
type actionRecorder struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (r *actionRecorder) Do(req *http.Request) (*http.Response, error) {
	action := ""
	switch target := req.Header.Get("X-Amz-Target"); {
	case strings.HasPrefix(target, "DynamoDB_20120810."):
		action = "dynamodb:" + strings.TrimPrefix(target, "DynamoDB_20120810.")
	case strings.HasPrefix(target, "AWSMPMeteringService.") || strings.HasPrefix(target, "AWSMPEntitlementService."):
		action = "aws-marketplace:" + target[strings.IndexByte(target, '.')+1:]
	case strings.HasPrefix(req.URL.Path, "/service/AWSMPEntitlementService/operation/"):
		action = "aws-marketplace:" + strings.TrimPrefix(req.URL.Path, "/service/AWSMPEntitlementService/operation/")
	case strings.HasPrefix(req.URL.Path, "/service/AWSMPCommerceService_v20200301/operation/"):
		action = "aws-marketplace:" + strings.TrimPrefix(req.URL.Path, "/service/AWSMPCommerceService_v20200301/operation/")
	default:
		action = "unknown:" + req.URL.String()
	}
	actions := []string{action}
	if action == "dynamodb:TransactWriteItems" {
		// IAM has no action of its own for a transaction: it authorizes
		// each item's (dynamodb:PutItem, UpdateItem, DeleteItem,
		// ConditionCheckItem).
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		var tx struct{ TransactItems []map[string]json.RawMessage }
		if err := json.Unmarshal(body, &tx); err != nil {
			return nil, err
		}
		actions = nil
		for _, it := range tx.TransactItems {
			for op := range it {
				actions = append(actions, map[string]string{"Put": "dynamodb:PutItem", "Update": "dynamodb:UpdateItem", "Delete": "dynamodb:DeleteItem",
					"ConditionCheck": "dynamodb:ConditionCheckItem"}[op])
			}
		}
	}
	r.mu.Lock()
	for _, a := range actions {
		r.seen[a] = true
	}
	r.mu.Unlock()
	return http.DefaultClient.Do(req)
}

func TestBuildRejectsBadConfiguration(t *testing.T) {
	t.Setenv("AWS_REGION", "us-east-1")
	for name, env := range map[string]map[string]string{
		"no role":            {},
		"unknown role":       {"MPSAAS_FUNCTION": "cron"},
		"bad listing":        {"MPSAAS_FUNCTION": "events", "MPSAAS_LISTING": "weekly"},
		"api without secret": {"MPSAAS_FUNCTION": "api"},
		"short webhook key":  {"MPSAAS_FUNCTION": "dispatch", "MPSAAS_WEBHOOK_URL": "https://x.example", "MPSAAS_WEBHOOK_SECRET": "short"},
	} {
		if _, err := build(context.Background(), func(k string) string { return env[k] }, slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("%s: build succeeded", name)
		}
	}
}

// TestSignupHandoffThroughTheAPIFunction (issue 12): the sign-up handoff on
// the serverless runtime: /fulfillment redirects with a claim code, which
// the seller's backend redeems once, on DynamoDB.
func TestSignupHandoffThroughTheAPIFunction(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, emulator.Product{Code: "handoff-prod", Type: emulator.ProductSubscription, LicenseBased: true, Dimensions: []emulator.Dimension{{Name: "users"}}})
	if _, err := f.em.AddBuyer(emulator.Buyer{AccountID: "123456789012"}); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"MPSAAS_PRODUCT_CODES": "handoff-prod", "MPSAAS_SECRET": strings.Repeat("k", 32),
		"MPSAAS_USAGE_API_KEYS": "lambda-usage-key-0123456789", "MPSAAS_SIGNUP_URL": "https://app.seller.example/signup"} {
		f.env[k] = v
	}
	api := f.build(t, "api").handler().(func(context.Context, events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error))
	res, err := f.em.Subscribe(emulator.SubscribeOptions{ProductCode: "handoff-prod", BuyerAccountID: "123456789012"})
	if err != nil {
		t.Fatal(err)
	}
	ev := events.APIGatewayV2HTTPRequest{Version: "2.0", RawPath: "/fulfillment", Body: url.Values{"x-amzn-marketplace-token": {res.Token}}.Encode(),
		Headers: map[string]string{"content-type": "application/x-www-form-urlencoded"}}
	ev.RequestContext.HTTP.Method = "POST"
	out, err := api(ctx, ev)
	loc, _ := url.Parse(out.Headers["Location"])
	if err != nil || out.StatusCode != 303 || loc == nil || !strings.HasPrefix(loc.String(), "https://app.seller.example/signup?code=") {
		t.Fatalf("fulfillment: %d %v %v", out.StatusCode, out.Headers, err)
	}
	claim := func() events.APIGatewayV2HTTPResponse {
		ev := events.APIGatewayV2HTTPRequest{Version: "2.0", RawPath: "/v1/claims/" + loc.Query().Get("code"), Body: `{"accountId":"acct-7"}`,
			Headers: map[string]string{"content-type": "application/json", "authorization": "Bearer lambda-usage-key-0123456789"}}
		ev.RequestContext.HTTP.Method = "POST"
		out, err := api(ctx, ev)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if first := claim(); first.StatusCode != 200 || !strings.Contains(first.Body, `"linkedAccountId":"acct-7"`) || !strings.Contains(first.Body, res.Subscription.LicenseArn) {
		t.Errorf("claim: %d %s", first.StatusCode, first.Body)
	}
	if again := claim(); again.StatusCode != 409 {
		t.Errorf("second claim: %d %s", again.StatusCode, again.Body)
	}
	// The seller's account id names the buyer (the linkedAccountId index).
	ent := events.APIGatewayV2HTTPRequest{Version: "2.0", RawPath: "/v1/entitlements", RawQueryString: "customer=acct-7",
		Headers: map[string]string{"authorization": "Bearer lambda-usage-key-0123456789"}}
	ent.RequestContext.HTTP.Method = "GET"
	if out, err := api(ctx, ent); err != nil || out.StatusCode != 200 || !strings.Contains(out.Body, res.Subscription.LicenseArn) {
		t.Errorf("entitlements by linked account: %d %s %v", out.StatusCode, out.Body, err)
	}
	// A new agreement of the same buyer lands on the same linked account.
	if _, err := f.em.Cancel(res.Subscription.AgreementID); err != nil {
		t.Fatal(err)
	}
	f.em.Clock.Advance(61 * time.Minute)
	f.em.RunDue()
	res2, err := f.em.Subscribe(emulator.SubscribeOptions{ProductCode: "handoff-prod", BuyerAccountID: "123456789012"})
	if err != nil {
		t.Fatal(err)
	}
	ev.Body = url.Values{"x-amzn-marketplace-token": {res2.Token}}.Encode()
	if out, err := api(ctx, ev); err != nil || out.StatusCode != 303 {
		t.Fatalf("second fulfillment: %d %v", out.StatusCode, err)
	}
	ent.RawQueryString = "customer=" + url.QueryEscape(res2.Subscription.LicenseArn)
	if out, err := api(ctx, ent); err != nil || out.StatusCode != 200 || !strings.Contains(out.Body, `"linkedAccountId":"acct-7"`) {
		t.Errorf("the new agreement's buyer: %d %s %v", out.StatusCode, out.Body, err)
	}
}

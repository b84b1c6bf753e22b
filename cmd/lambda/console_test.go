package main

import (
	"context"
	"encoding/base64"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/admin"
)

// TestConsoleThroughTheAPIFunction: the seller console as the api function
// serves it through API Gateway on DynamoDB: off (404) without the
// password hash; with it, sign in, search a buyer, open the buyer's page
// with its usage chart, retry a failed delivery. Every DynamoDB call it
// makes is one the function's IAM policy allows.
func TestConsoleThroughTheAPIFunction(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.env["MPSAAS_PRODUCT_CODES"], f.env["MPSAAS_SECRET"] = "console-prod", strings.Repeat("k", 32)
	f.env["MPSAAS_WEBHOOK_URL"], f.env["MPSAAS_WEBHOOK_SECRET"] = "http://127.0.0.1:9/hook", hookSecret
	call := func(app *App, method, path string, cookies []string, form url.Values) events.APIGatewayV2HTTPResponse {
		t.Helper()
		h := app.handler().(func(context.Context, events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error))
		u, _ := url.Parse(path)
		ev := events.APIGatewayV2HTTPRequest{Version: "2.0", RawPath: u.Path, RawQueryString: u.RawQuery, Cookies: cookies,
			Headers: map[string]string{"host": "abc.execute-api.us-east-1.amazonaws.com", "x-forwarded-proto": "https"}}
		if form != nil {
			ev.Body, ev.IsBase64Encoded = base64.StdEncoding.EncodeToString([]byte(form.Encode())), true
			ev.Headers["content-type"] = "application/x-www-form-urlencoded"
		}
		ev.RequestContext.HTTP.Method, ev.RequestContext.Stage, ev.RequestContext.HTTP.SourceIP = method, "$default", "203.0.113.9"
		res, err := h(ctx, ev)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := call(f.build(t, "api"), "GET", "/admin/buyers", nil, nil); res.StatusCode != 404 {
		t.Fatalf("console without a password hash: %d, want 404", res.StatusCode)
	}

	hash, err := admin.HashPassword("lambda console password", 2000)
	if err != nil {
		t.Fatal(err)
	}
	f.env["MPSAAS_ADMIN_PASSWORD_HASH"] = hash
	rec := &actionRecorder{seen: map[string]bool{}}
	api := f.build(t, "api", awsconfig.WithHTTPClient(rec))

	// A buyer with a failed delivery and usage in the open hour.
	s := &mpsaas.Subscriber{Key: "cust-lambda", Identity: mpsaas.Identity{CustomerIdentifier: "cust-lambda", ProductCode: "console-prod"},
		Contact: mpsaas.Contact{CompanyName: "Lambda Corp", ContactEmail: "ops@lambda.example"}, State: mpsaas.State{Status: mpsaas.StatusActive},
		Access: mpsaas.AccessGranted, AccessVersion: 1}
	change := mpsaas.NewAccessChange(s, time.Now())
	if err := f.store.SaveSubscriber(ctx, s, &change, []string{mpsaas.ChannelWebhook}); err != nil {
		t.Fatal(err)
	}
	due, err := f.store.DueMessages(ctx, time.Now().Add(time.Minute), 10)
	if err != nil || len(due) != 1 {
		t.Fatalf("due = %v, %v", due, err)
	}
	if err := f.store.MarkFailed(ctx, due[0].ID, "receiver answered 502", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	if _, err := f.store.AddUsage(ctx, "console-usage", "h", []mpsaas.UsageRow{{SubscriberKey: "cust-lambda", Dimension: "seats", Quantity: 4, Time: now}},
		mpsaas.Hour(now), now); err != nil {
		t.Fatal(err)
	}

	csrfRe := regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	cookiesOf := func(res events.APIGatewayV2HTTPResponse) []string {
		var out []string
		for _, c := range res.Cookies {
			v, _, _ := strings.Cut(c, ";")
			out = append(out, v)
			if !strings.Contains(c, "Secure") || !strings.Contains(c, "HttpOnly") || !strings.Contains(c, "SameSite=Strict") {
				t.Errorf("cookie over API Gateway: %s", c)
			}
		}
		return out
	}
	if res := call(api, "GET", "/admin/buyers", nil, nil); res.StatusCode != 303 {
		t.Fatalf("console without a session: %d", res.StatusCode)
	}
	form := call(api, "GET", "/admin/login", nil, nil)
	token := csrfRe.FindStringSubmatch(form.Body)
	if form.StatusCode != 200 || token == nil {
		t.Fatalf("login form: %d", form.StatusCode)
	}
	login := call(api, "POST", "/admin/login", cookiesOf(form), url.Values{"csrf": {token[1]}, "password": {"lambda console password"}})
	session := cookiesOf(login)
	if login.StatusCode != 303 || len(session) == 0 {
		t.Fatalf("login: %d %v", login.StatusCode, login.Cookies)
	}
	list := call(api, "GET", "/admin/buyers?q=lambda+corp", session, nil)
	if list.StatusCode != 200 || !strings.Contains(list.Body, "cust-lambda") {
		t.Fatalf("buyer search: %d\n%s", list.StatusCode, list.Body)
	}
	page := call(api, "GET", "/admin/buyers/cust-lambda", session, nil)
	for _, want := range []string{"Lambda Corp", `data-dimension="seats"`, "receiver answered 502", `class="retry"`} {
		if !strings.Contains(page.Body, want) {
			t.Errorf("buyer page lacks %q", want)
		}
	}
	if res := call(api, "GET", "/admin/deliveries", session, nil); !strings.Contains(res.Body, "receiver answered 502") {
		t.Errorf("deliveries page: %d", res.StatusCode)
	}
	if res := call(api, "GET", "/admin/metering", session, nil); res.StatusCode != 200 || !strings.Contains(res.Body, `id="summary"`) ||
		strings.Contains(res.Body, "cannot sum usage by product") {
		t.Errorf("metering page: %d", res.StatusCode)
	}
	token = csrfRe.FindStringSubmatch(page.Body)
	retry := call(api, "POST", "/admin/deliveries/retry", session, url.Values{"csrf": {token[1]}, "id": {due[0].ID}})
	if retry.StatusCode != 303 {
		t.Fatalf("retry: %d %s", retry.StatusCode, retry.Body)
	}
	if d, _ := f.store.DueMessages(ctx, time.Now().Add(time.Second), 10); len(d) != 1 {
		t.Errorf("after retry, due = %v", d)
	}
	for action := range rec.seen {
		if !slices.Contains(awsActions["api"], action) {
			t.Errorf("the console called %s, which the api function's IAM policy (awsActions) does not allow", action)
		}
	}
}

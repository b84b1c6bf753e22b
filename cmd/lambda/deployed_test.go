package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awssns "github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/awslabs/goformation/v7"
	"github.com/awslabs/goformation/v7/intrinsics"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/internal/testenv"
	mpsaassqs "github.com/mpsaas/mpsaas/sqs"
	"github.com/mpsaas/mpsaas/webhook"
)

// deployedEnv returns each function's environment exactly as template.yaml
// gives it (globals, then the function's own), for the parameters given.
func deployedEnv(t *testing.T, given map[string]any) map[string]map[string]string {
	t.Helper()
	// CloudFormation takes a parameter's default when none is given.
	first, err := goformation.OpenWithOptions("../../template.yaml", &intrinsics.ProcessorOptions{ParameterOverrides: given})
	if err != nil {
		t.Fatal(err)
	}
	params := map[string]any{}
	for name, p := range first.Parameters {
		if p.Default != nil {
			params[name] = fmt.Sprint(p.Default)
		}
	}
	for k, v := range given {
		params[k] = v
	}
	// Conditions are evaluated (the !If of optional settings), and a Ref to
	// a resource stands for it by its logical id (a table's name; a topic's ARN
	// ends with it).
	ref := func(name string, input, template any) any {
		if v := intrinsics.Ref(name, input, template); v != nil || input == "AWS::NoValue" {
			return v
		}
		if res, ok := template.(map[string]any)["Resources"].(map[string]any); ok {
			if r, ok := res[fmt.Sprint(input)].(map[string]any); ok {
				if r["Type"] == "AWS::SNS::Topic" {
					// Ref of a topic is its ARN.
					return "arn:aws:sns:us-east-1:123456789012:" + fmt.Sprint(input)
				}
				return input
			}
		}
		return nil
	}
	var eval func(v, template any) any
	eval = func(v, template any) any {
		m, ok := v.(map[string]any)
		if !ok {
			return v
		}
		for fn, arg := range m {
			args, _ := arg.([]any)
			switch fn {
			case "Ref":
				if p, ok := params[fmt.Sprint(arg)]; ok {
					return p
				}
				return ref("Ref", arg, template)
			case "Fn::Equals":
				return fmt.Sprint(eval(args[0], template)) == fmt.Sprint(eval(args[1], template))
			case "Fn::Not":
				return !(eval(args[0], template) == true)
			case "Fn::And", "Fn::Or":
				all, anyTrue := true, false
				for _, a := range args {
					b := eval(a, template) == true
					all, anyTrue = all && b, anyTrue || b
				}
				return map[bool]bool{true: all, false: anyTrue}[fn == "Fn::And"]
			case "Condition":
				return eval(template.(map[string]any)["Conditions"].(map[string]any)[fmt.Sprint(arg)], template)
			}
		}
		return v
	}
	fnIf := func(name string, input, template any) any {
		args, _ := input.([]any)
		if len(args) != 3 {
			return nil
		}
		cond := template.(map[string]any)["Conditions"].(map[string]any)[fmt.Sprint(args[0])]
		if eval(cond, template) == true {
			return eval(args[1], template)
		}
		return eval(args[2], template)
	}
	tmpl, err := goformation.OpenWithOptions("../../template.yaml", &intrinsics.ProcessorOptions{ParameterOverrides: params,
		IntrinsicHandlerOverrides: map[string]intrinsics.IntrinsicHandler{"Ref": ref, "Fn::If": fnIf}})
	if err != nil {
		t.Fatal(err)
	}
	gb, _ := json.Marshal(tmpl.Globals["Function"])
	var globals map[string]any
	_ = json.Unmarshal(gb, &globals)
	out := map[string]map[string]string{}
	for name, f := range tmpl.GetAllServerlessFunctionResources() {
		env := map[string]string{}
		for k, v := range envOf(globals) {
			if s, ok := v.(string); ok {
				env[k] = s
			}
		}
		if f.Environment != nil {
			for k, v := range f.Environment.Variables {
				if v != "" && !strings.Contains(v, "NoValue") {
					env[k] = v
				}
			}
		}
		out[functions[name]] = env
	}
	return out
}

// deployedFunction is one function built from its environment as deployed.
type deployedFunction struct {
	app *App
	env map[string]string
}

// buildDeployed builds every function, by role, from the environment
// template.yaml gives it for params (no AWS calls are made).
func buildDeployed(t *testing.T, params map[string]any) map[string]deployedFunction {
	t.Helper()
	out := map[string]deployedFunction{}
	for role, env := range deployedEnv(t, params) {
		if role == "" {
			continue
		}
		app, err := build(context.Background(), func(k string) string { return env[k] }, slog.New(slog.DiscardHandler),
			awsconfig.WithRegion("us-east-1"), awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("A", "B", "")))
		if err != nil {
			t.Fatalf("%s function as deployed: %v\nenvironment: %v", role, err, env)
		}
		out[role] = deployedFunction{app: app, env: env}
	}
	return out
}

// TestDeployedFunctionsQueueWhatDispatchDelivers builds every function
// with the environment the template gives it (issue 8, item 1): the api,
// events and meter functions decide access changes and must queue them on
// every channel the dispatch function delivers, or the seller never hears
// of a buyer.
func TestDeployedFunctionsQueueWhatDispatchDelivers(t *testing.T) {
	params := map[string]any{"TypeOfSaaSListing": "contracts_with_subscription", "ProductCode": "prodcode", "MarketplaceTechAdminEmail": "admin@seller.example",
		"RegistrationSecret": strings.Repeat("s", 32), "WebhookUrl": "https://seller.example/hooks/mpsaas", "WebhookSecret": strings.Repeat("w", 24),
		"MarketplaceSellerEmail": "seller@seller.example"}
	channels := map[string][]string{}
	for role, deployed := range buildDeployed(t, params) {
		app, env := deployed.app, deployed.env
		if role == "dispatch" {
			for ch := range app.dispatcher.Senders {
				channels[role] = append(channels[role], ch)
			}
		} else {
			channels[role] = slices.Clone(app.svc.Channels)
		}
		sort.Strings(channels[role])
		// Secrets reach only the function that uses them.
		if role != "dispatch" && env["MPSAAS_WEBHOOK_SECRET"] != "" {
			t.Errorf("%s function gets the webhook secret; only dispatch signs webhooks", role)
		}
	}
	want := fmt.Sprint(channels["dispatch"])
	if len(channels["dispatch"]) != 3 {
		t.Fatalf("dispatch delivers %v, want webhook, SNS and email with these parameters", channels["dispatch"])
	}
	for _, role := range []string{"api", "events", "meter"} {
		if got := fmt.Sprint(channels[role]); got != want {
			t.Errorf("%s function queues access changes on %s, dispatch delivers %s", role, got, want)
		}
	}
}

// sesFake is an SES endpoint that keeps the emails it is asked to send.
type sesFake struct {
	mu sync.Mutex
	to []string
}

func (s *sesFake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Destination struct{ ToAddresses []string }
	}
	if r.URL.Path != "/v2/email/outbound-emails" || json.NewDecoder(r.Body).Decode(&req) != nil {
		http.Error(w, `{"message":"unexpected request"}`, http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.to = append(s.to, req.Destination.ToAddresses...)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, `{"MessageId":"m-1"}`)
}

// TestDeployedStackDeliversOnEveryChannel (issue 8): every function built
// from exactly the environment template.yaml gives it (globals and its
// own, parameters substituted); only what AWS supplies at deployment is
// filled in: the tables' and the topic's real names, and endpoints of local
// stand-ins (DynamoDB Local, goaws for SNS, the emulator, an SES fake). A
// buyer subscribes (SNS through SQS, and EventBridge) and registers; the
// dispatch function then delivers the grant as a signed webhook, an SNS
// message on the access-changes topic and an email to the buyer.
func TestDeployedStackDeliversOnEveryChannel(t *testing.T) {
	sqsEndpoint := testenv.SQS(t)
	ctx := context.Background()
	f := newFixture(t, emulator.Product{Code: "deployed-prod", Type: emulator.ProductSubscription, Dimensions: []emulator.Dimension{{Name: "users"}}})
	if _, err := f.em.AddBuyer(emulator.Buyer{AccountID: "123456789012"}); err != nil {
		t.Fatal(err)
	}
	hooks := &sink{}
	hookSrv := httptest.NewServer(hooks)
	defer hookSrv.Close()
	ses := &sesFake{}
	sesSrv := httptest.NewServer(ses)
	defer sesSrv.Close()

	// The access-changes topic, with a queue subscribed to see what it publishes.
	awsCfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("local", "local", ""), BaseEndpoint: aws.String(sqsEndpoint)}
	sq, sn := awssqs.NewFromConfig(awsCfg, mpsaassqs.QueryProtocol), awssns.NewFromConfig(awsCfg)
	q, err := sq.CreateQueue(ctx, &awssqs.CreateQueueInput{QueueName: aws.String("deployed-access-" + f.suffix)})
	if err != nil {
		t.Fatal(err)
	}
	qa, err := sq.GetQueueAttributes(ctx, &awssqs.GetQueueAttributesInput{QueueUrl: q.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		t.Fatal(err)
	}
	topic, err := sn.CreateTopic(ctx, &awssns.CreateTopicInput{Name: aws.String("deployed-access-changes-" + f.suffix)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Subscribe(ctx, &awssns.SubscribeInput{TopicArn: topic.TopicArn, Protocol: aws.String("sqs"), Endpoint: aws.String(qa.Attributes["QueueArn"])}); err != nil {
		t.Fatal(err)
	}

	params := map[string]any{"TypeOfSaaSListing": "subscriptions", "ProductCode": "deployed-prod", "MarketplaceTechAdminEmail": "admin@seller.example",
		"RegistrationSecret": strings.Repeat("s", 32), "WebhookUrl": hookSrv.URL, "WebhookSecret": hookSecret, "MarketplaceSellerEmail": "seller@seller.example",
		"NewSubscribersTableName": f.env["MPSAAS_SUBSCRIBERS_TABLE"]}
	// What AWS supplies at deployment: resource names and ARNs.
	resources := map[string]string{
		"EventsTable": f.env["MPSAAS_EVENTS_TABLE"], "OutboxTable": f.env["MPSAAS_OUTBOX_TABLE"],
		"MeterHoursTable": f.env["MPSAAS_METER_TABLE"],
		"arn:aws:sns:us-east-1:123456789012:AccessChangesTopic": aws.ToString(topic.TopicArn),
	}
	// And where the local stand-ins listen.
	endpoints := map[string]string{"MPSAAS_DYNAMODB_ENDPOINT": f.env["MPSAAS_DYNAMODB_ENDPOINT"], "MPSAAS_METERING_ENDPOINT": f.env["MPSAAS_METERING_ENDPOINT"],
		"MPSAAS_ENTITLEMENT_ENDPOINT": f.env["MPSAAS_ENTITLEMENT_ENDPOINT"], "MPSAAS_AGREEMENT_ENDPOINT": f.env["MPSAAS_AGREEMENT_ENDPOINT"], "MPSAAS_SNS_ENDPOINT": sqsEndpoint, "MPSAAS_SES_ENDPOINT": sesSrv.URL}
	apps := map[string]*App{}
	for role, env := range deployedEnv(t, params) {
		if role == "" {
			continue
		}
		for k, v := range env {
			if r, ok := resources[v]; ok {
				env[k] = r
			}
		}
		for k, v := range endpoints {
			if _, ok := env[k]; ok {
				t.Fatalf("the template sets %s for the %s function", k, role)
			}
			env[k] = v
		}
		app, err := build(ctx, func(k string) string { return env[k] }, slog.New(slog.DiscardHandler),
			awsconfig.WithRegion("us-east-1"), awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("A", "B", "")))
		if err != nil {
			t.Fatalf("%s function as deployed: %v", role, err)
		}
		app.metrics.W = io.Discard
		apps[role] = app
	}
	for _, role := range []string{"api", "events", "dispatch", "meter"} {
		if apps[role] == nil {
			t.Fatalf("the template has no %s function", role)
		}
	}

	// The buyer subscribes: SNS messages arrive through the queue, and the EventBridge events.
	res, err := f.em.Subscribe(emulator.SubscribeOptions{StartedAt: f.em.Clock.Now().Add(-24 * time.Hour), ProductCode: "deployed-prod", BuyerAccountID: "123456789012"})
	if err != nil {
		t.Fatal(err)
	}
	var batch events.SQSEvent
	for i, n := range f.em.Notifications(0) {
		if n.Channel == emulator.ChannelEventBridge {
			if _, err := apps["events"].handleEvent(ctx, json.RawMessage(n.Body)); err != nil {
				t.Fatalf("EventBridge event: %v", err)
			}
			continue
		}
		batch.Records = append(batch.Records, events.SQSMessage{MessageId: fmt.Sprint("m", i), Body: string(n.Body), EventSource: "aws:sqs"})
	}
	raw, _ := json.Marshal(batch)
	if out, err := apps["events"].handleEvent(ctx, raw); err != nil || len(out.(events.SQSEventResponse).BatchItemFailures) != 0 {
		t.Fatalf("SQS batch: %+v, %v", out, err)
	}
	// The buyer registers through the JSON API (a seller's own landing page).
	ev := events.APIGatewayV2HTTPRequest{Version: "2.0", RawPath: "/subscriber", Headers: map[string]string{"content-type": "application/json"},
		Body: fmt.Sprintf(`{"regToken":%q,"companyName":"Acme","contactPerson":"Ann","contactPhone":"+1 555 0100","contactEmail":"ann@acme.example"}`, res.Token)}
	ev.RequestContext.HTTP.Method = "POST"
	api := apps["api"].handler().(func(context.Context, events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error))
	if out, err := api(ctx, ev); err != nil || out.StatusCode != 200 {
		t.Fatalf("POST /subscriber: %d %s %v", out.StatusCode, out.Body, err)
	}
	dispatch := apps["dispatch"].handler().(func(context.Context, events.EventBridgeEvent) error)
	if err := dispatch(ctx, events.EventBridgeEvent{DetailType: "Scheduled Event", Source: "aws.events"}); err != nil {
		t.Fatal(err)
	}

	if got := fmt.Sprint(hooks.accesses()); got != "[granted]" {
		t.Errorf("webhooks = %s, want [granted]", got)
	}
	ses.mu.Lock()
	if got := fmt.Sprint(ses.to); got != "[ann@acme.example]" {
		t.Errorf("SES emails to %s, want one to the buyer", got)
	}
	ses.mu.Unlock()
	msg, err := sq.ReceiveMessage(ctx, &awssqs.ReceiveMessageInput{QueueUrl: q.QueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 5})
	if err != nil || len(msg.Messages) != 1 {
		t.Fatalf("access-changes topic delivered %+v, %v; want one message", msg, err)
	}
	var env struct{ Message string }
	var c mpsaas.AccessChange
	_ = json.Unmarshal([]byte(aws.ToString(msg.Messages[0].Body)), &env)
	if err := json.Unmarshal([]byte(env.Message), &c); err != nil || c.Access != mpsaas.AccessGranted || c.Subscriber.Contact.ContactEmail != "ann@acme.example" {
		t.Errorf("SNS access change = %+v, %v", c, err)
	}
}

// TestExistingSubscribersTable (issue 8): a seller migrating from the
// sample stack keeps its subscribers table: with SubscribersTableExists the
// template does not create it (creating a table whose name exists fails),
// and every function uses it by name, with IAM access to it and its indexes.
func TestExistingSubscribersTable(t *testing.T) {
	params := map[string]any{"ProductCode": "prodcode", "RegistrationSecret": strings.Repeat("s", 32),
		"SubscribersTableExists": "true", "NewSubscribersTableName": "SampleSubscribers"}
	for role, env := range deployedEnv(t, params) {
		if role != "" && env["MPSAAS_SUBSCRIBERS_TABLE"] != "SampleSubscribers" {
			t.Errorf("%s function: MPSAAS_SUBSCRIBERS_TABLE = %q", role, env["MPSAAS_SUBSCRIBERS_TABLE"])
		}
	}
	for exists, want := range map[string]bool{"true": false, "false": true} {
		tmpl, err := goformation.OpenWithOptions("../../template.yaml", &intrinsics.ProcessorOptions{
			ParameterOverrides: map[string]any{"ProductCode": "prodcode", "SubscribersTableExists": exists, "NewSubscribersTableName": "SampleSubscribers"}})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := tmpl.JSON()
		var raw struct {
			Conditions map[string]any // evaluated by goformation
			Resources  map[string]struct{ Condition string }
		}
		if err := json.Unmarshal(b, &raw); err != nil {
			t.Fatal(err)
		}
		cond := raw.Resources["SubscribersTable"].Condition
		if creates := cond == "" || raw.Conditions[cond] == true; creates != want {
			t.Errorf("SubscribersTableExists=%s: template creates the table: %v (condition %s = %v), want %v", exists, creates, cond, raw.Conditions[cond], want)
		}
		for _, arn := range []string{"table/SampleSubscribers\"", "table/SampleSubscribers/index/*"} {
			if !strings.Contains(string(b), arn) {
				t.Errorf("SubscribersTableExists=%s: no policy names %s", exists, arn)
			}
		}
	}
}

// TestDeployedStackWithProductsConfig (issue 11): the ProductsConfig
// parameter gives every function the same products: the listing type each
// decides access and meters by, the dimensions it accepts, and the webhook
// each product's access changes go to, with the secret reaching dispatch
// though the stack-wide WebhookUrl is empty.
func TestDeployedStackWithProductsConfig(t *testing.T) {
	products := `products:
  - code: prodcode
    listing: subscriptions
    name: Widgets Cloud
    dimensions: [users]
    webhook_url: https://seller.example/hooks/widgets
  - code: enterprise
    listing: contracts
    name: Widgets Enterprise
    webhook_url: https://seller.example/hooks/enterprise
`
	params := map[string]any{"TypeOfSaaSListing": "contracts_with_subscription", "ProductCode": "prodcode", "MarketplaceTechAdminEmail": "admin@seller.example",
		"RegistrationSecret": strings.Repeat("s", 32), "WebhookSecret": strings.Repeat("w", 24), "ProductsConfig": products}
	for role, deployed := range buildDeployed(t, params) {
		app := deployed.app
		switch role {
		case "dispatch":
			s, ok := app.dispatcher.Senders[mpsaas.ChannelWebhook].(*webhook.Sender)
			if !ok || s.ProductURLs["enterprise"] != "https://seller.example/hooks/enterprise" || len(s.Secret) == 0 {
				t.Errorf("dispatch's webhook sender = %+v", app.dispatcher.Senders[mpsaas.ChannelWebhook])
			}
		case "api", "events", "reconcile":
			if p := app.svc.Products["enterprise"]; p.Listing != mpsaas.ListingContracts || !slices.Contains(app.svc.ProductCodes, "enterprise") ||
				!slices.Contains(app.svc.Channels, mpsaas.ChannelWebhook) {
				t.Errorf("%s: products %v, codes %v, channels %v", role, app.svc.Products, app.svc.ProductCodes, app.svc.Channels)
			}
		case "meter":
			if p := app.meter.Products["prodcode"]; fmt.Sprint(p.Dimensions) != "[users]" {
				t.Errorf("meter: products %v", app.meter.Products)
			}
		}
	}
}

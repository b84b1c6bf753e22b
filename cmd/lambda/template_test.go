package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-lambda-go/events"
	"github.com/awslabs/goformation/v7"
	"github.com/awslabs/goformation/v7/cloudformation"
	"github.com/awslabs/goformation/v7/intrinsics"

	"github.com/mpsaas/mpsaas/dynamodb"
	"github.com/mpsaas/mpsaas/internal/config"
)

func openTemplate(t *testing.T, listing string) (*cloudformation.Template, map[string]any) {
	t.Helper()
	tmpl, err := goformation.OpenWithOptions("../../template.yaml", &intrinsics.ProcessorOptions{
		ParameterOverrides: map[string]any{"TypeOfSaaSListing": listing, "ProductCode": "prodcode", "MarketplaceTechAdminEmail": "a@b.example", "RegistrationSecret": strings.Repeat("s", 32)},
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := tmpl.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	return tmpl, raw
}

var functions = map[string]string{"ApiFunction": "api", "EventsFunction": "events", "DispatchFunction": "dispatch", "MeterFunction": "meter", "ReconcileFunction": "reconcile"}

// TestTemplate checks template.yaml against the code: handlers, build
// targets, environment, IAM and the resources each listing type creates.
func TestTemplate(t *testing.T) {
	tmpl, raw := openTemplate(t, "contracts_with_subscription")
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	g := tmpl.Globals["Function"]
	globalsJSON, _ := json.Marshal(g)
	var globals map[string]any
	_ = json.Unmarshal(globalsJSON, &globals)
	if globals["Handler"] != "bootstrap" || globals["Runtime"] != "provided.al2023" || !slices.Equal(toStrings(globals["Architectures"]), []string{"arm64"}) {
		t.Errorf("function globals = %v, want handler bootstrap on provided.al2023, arm64", globals)
	}
	globalEnv := envOf(globals)
	resources := raw["Resources"].(map[string]any)
	found := map[string]bool{}
	for name, f := range tmpl.GetAllServerlessFunctionResources() {
		role, ok := functions[name]
		if !ok {
			t.Errorf("function %s is not known to the code", name)
			continue
		}
		found[name] = true
		res := resources[name].(map[string]any)
		if md, _ := res["Metadata"].(map[string]any); md["BuildMethod"] != "makefile" || !strings.Contains(string(makefile), "build-"+name) {
			t.Errorf("%s: want BuildMethod makefile and a build-%s target in the Makefile", name, name)
		}
		env := map[string]bool{}
		for k := range globalEnv {
			env[k] = true
		}
		if f.Environment != nil {
			for k, v := range f.Environment.Variables {
				env[k] = true
				if k == "MPSAAS_FUNCTION" && v != role {
					t.Errorf("%s: MPSAAS_FUNCTION = %q, want %q", name, v, role)
				}
			}
		}
		for k := range env {
			if !slices.Contains(lambdaVars(), k) {
				t.Errorf("%s sets %s, which the code does not read", name, k)
			}
		}
		for _, k := range requiredEnv[role] {
			if !env[k] {
				t.Errorf("%s: %s is not set but the %s role needs it", name, k, role)
			}
		}
		allowed := allowedActions(t, res)
		for _, a := range awsActions[role] {
			if !allowed[a] {
				t.Errorf("%s: the IAM policy does not allow %s, which the %s role calls", name, a, role)
			}
		}
		for a := range allowed {
			if strings.Contains(a, "*") {
				t.Errorf("%s: wildcard action %s", name, a)
			}
			if !slices.Contains(awsActions[role], a) {
				t.Errorf("%s: allows %s, which the code never calls (least privilege)", name, a)
			}
		}
	}
	for name := range functions {
		if !found[name] {
			t.Errorf("the template has no %s", name)
		}
	}
	for _, out := range []string{"FulfillmentURL", "LandingPageURL", "APIURL"} {
		if _, ok := raw["Outputs"].(map[string]any)[out]; !ok {
			t.Errorf("output %s missing", out)
		}
	}
}

func TestTemplateListingTypes(t *testing.T) {
	always := []string{"SubscribersTable", "EventsTable", "OutboxTable", "MeterHoursTable", "MeterFunction", "NotificationsQueue", "NotificationsDeadLetterQueue", "AgreementEventsRule", "AccessChangesTopic", "ApiFunction", "EventsFunction", "DispatchFunction"}
	for listing, want := range map[string][]string{
		"subscriptions":               {"SubscriptionTopicSubscription"},
		"contracts":                   {"EntitlementTopicSubscription"},
		"contracts_with_subscription": {"EntitlementTopicSubscription", "SubscriptionTopicSubscription"},
	} {
		tmpl, raw := openTemplate(t, listing)
		var created []string
		for name, r := range raw["Resources"].(map[string]any) {
			cond, _ := r.(map[string]any)["Condition"].(string)
			if cond == "" || tmpl.Conditions[cond] == true {
				created = append(created, name)
			}
		}
		for _, name := range append(want, always...) {
			if !slices.Contains(created, name) {
				t.Errorf("%s: %s is not created", listing, name)
			}
		}
		for _, topic := range []string{"SubscriptionTopicSubscription", "EntitlementTopicSubscription"} {
			if slices.Contains(created, topic) && !slices.Contains(want, topic) {
				t.Errorf("%s: %s is created but the listing does not use that topic", listing, topic)
			}
		}
		if slices.Contains(created, "CrossAccountRole") {
			t.Errorf("%s: CrossAccountRole created without CreateCrossAccountRole", listing)
		}
	}
}

func envOf(m map[string]any) map[string]any {
	env, _ := m["Environment"].(map[string]any)
	vars, _ := env["Variables"].(map[string]any)
	return vars
}

func toStrings(v any) []string {
	var out []string
	switch x := v.(type) {
	case string:
		out = append(out, x)
	case []any:
		for _, e := range x {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// allowedActions collects the Allow actions of a function's inline policies.
func allowedActions(t *testing.T, res map[string]any) map[string]bool {
	t.Helper()
	props := res["Properties"].(map[string]any)
	out := map[string]bool{}
	policies, _ := props["Policies"].([]any)
	for _, p := range policies {
		doc, ok := p.(map[string]any)
		if !ok {
			t.Errorf("policy %v is not an inline document (SAM policy templates are not checked)", p)
			continue
		}
		stmts, _ := doc["Statement"].([]any)
		for _, s := range stmts {
			st := s.(map[string]any)
			if st["Effect"] != "Allow" {
				continue
			}
			for _, a := range toStrings(st["Action"]) {
				out[a] = true
			}
		}
	}
	return out
}

// TestTemplateOperations (issue 8, item 5): tables that hold money or
// buyer data survive the stack (Retain) and can be restored (PITR); the
// notifications queue hides a message at least 6x the consuming function's
// timeout; only one meter run runs at a time.
func TestTemplateOperations(t *testing.T) {
	for _, listing := range []string{"subscriptions", "contracts", "contracts_with_subscription"} {
		_, raw := openTemplate(t, listing)
		resources := raw["Resources"].(map[string]any)
		tables := 0
		for name, r := range resources {
			res := r.(map[string]any)
			if res["Type"] != "AWS::DynamoDB::Table" {
				continue
			}
			tables++
			props := res["Properties"].(map[string]any)
			pitr, _ := props["PointInTimeRecoverySpecification"].(map[string]any)
			if res["DeletionPolicy"] != "Retain" || res["UpdateReplacePolicy"] != "Retain" || pitr["PointInTimeRecoveryEnabled"] != true {
				t.Errorf("%s: table %s: DeletionPolicy %v, UpdateReplacePolicy %v, PITR %v; want Retain, Retain, enabled",
					listing, name, res["DeletionPolicy"], res["UpdateReplacePolicy"], pitr)
			}
		}
		// Time to live on the tables whose finished items expire, on the
		// attribute the store writes (and on no other table).
		for name, wantTTL := range map[string]bool{"OutboxTable": true, "MeterHoursTable": true,
			"SubscribersTable": false, "EventsTable": false} {
			ttl, _ := resources[name].(map[string]any)["Properties"].(map[string]any)["TimeToLiveSpecification"].(map[string]any)
			got := ttl["Enabled"] == true && ttl["AttributeName"] == dynamodb.TTLAttribute
			if got != wantTTL {
				t.Errorf("%s: table %s: time to live %v, want enabled on %q: %v", listing, name, ttl, dynamodb.TTLAttribute, wantTTL)
			}
		}
		// The subscribers table has the indexes the store queries.
		var subIdx []string
		for _, g := range resources["SubscribersTable"].(map[string]any)["Properties"].(map[string]any)["GlobalSecondaryIndexes"].([]any) {
			subIdx = append(subIdx, g.(map[string]any)["IndexName"].(string))
		}
		if fmt.Sprint(subIdx) != fmt.Sprint(dynamodb.SubscriberIndexNames()) {
			t.Errorf("%s: SubscribersTable indexes %v, the store queries %v", listing, subIdx, dynamodb.SubscriberIndexNames())
		}
		if tables != 5 { // subscribers, events, outbox, metering, the sample's metering table
			t.Errorf("%s: %d tables", listing, tables)
		}
		queue := resources["NotificationsQueue"].(map[string]any)["Properties"].(map[string]any)
		events := resources["EventsFunction"].(map[string]any)["Properties"].(map[string]any)
		vis, _ := queue["VisibilityTimeout"].(float64)
		timeout, _ := events["Timeout"].(float64)
		if timeout == 0 || vis < 6*timeout {
			t.Errorf("%s: queue visibility %v s, events function timeout %v s; want at least 6x", listing, vis, timeout)
		}
		meter := resources["MeterFunction"].(map[string]any)["Properties"].(map[string]any)
		if meter["ReservedConcurrentExecutions"] != float64(1) {
			t.Errorf("%s: meter function reserved concurrency %v, want 1", listing, meter["ReservedConcurrentExecutions"])
		}
	}
}

// lambdaVars are the variables the functions read (internal/config).
func lambdaVars() []string {
	var c config.Config
	var out []string
	for _, s := range c.Settings() {
		if s.Runtimes&config.Lambda != 0 {
			out = append(out, s.Env)
		}
	}
	return out
}

// TestTemplateAlarms (issue 10): every alarm notifies the alarm topic the
// admin's email subscribes to, and watches something real: a metric the
// meter function's handler actually writes (captured from a run), a
// function of the template, or a dead-letter queue. Each function has an
// errors alarm, and dead letters, refused and flagged usage, invariant
// violations and metering lag each have one.
func TestTemplateAlarms(t *testing.T) {
	// References kept as "ref:<name>" and "getatt:<name>.<attribute>".
	keep := map[string]intrinsics.IntrinsicHandler{
		"Ref": func(_ string, input any, _ any) any { return fmt.Sprint("ref:", input) },
		"Fn::GetAtt": func(_ string, input any, _ any) any {
			return fmt.Sprint("getatt:", strings.Join(toStrings(input), "."))
		},
	}
	tmpl, err := goformation.OpenWithOptions("../../template.yaml", &intrinsics.ProcessorOptions{IntrinsicHandlerOverrides: keep})
	if err != nil {
		t.Fatal(err)
	}
	b, err := tmpl.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Resources map[string]struct {
			Type       string
			Properties map[string]any
		}
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	// What the meter function's handler writes in one run.
	f := newFixture(t)
	app := f.build(t, "meter")
	var emf lockedBuffer
	app.metrics.W = &emf
	if err := app.handler().(func(context.Context, events.EventBridgeEvent) error)(context.Background(), events.EventBridgeEvent{DetailType: "Scheduled Event"}); err != nil {
		t.Fatal(err)
	}
	emitted := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(emf.String()), "\n") {
		var rec struct {
			AWS struct {
				CloudWatchMetrics []struct {
					Namespace  string
					Dimensions [][]string
					Metrics    []struct{ Name string }
				}
			} `json:"_aws"`
			Function string
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("EMF line %q: %v", line, err)
		}
		for _, d := range rec.AWS.CloudWatchMetrics {
			for _, m := range d.Metrics {
				emitted[d.Namespace+"/"+m.Name+"/Function="+rec.Function] = true
			}
		}
	}
	dlqs := map[string]bool{}
	for _, r := range raw.Resources {
		if rp, ok := r.Properties["RedrivePolicy"].(map[string]any); ok {
			dlqs[strings.TrimSuffix(strings.TrimPrefix(fmt.Sprint(rp["deadLetterTargetArn"]), "getatt:"), ".Arn")] = true
		}
	}
	topic := raw.Resources["AlarmTopic"]
	if subs, _ := topic.Properties["Subscription"].([]any); topic.Type != "AWS::SNS::Topic" || len(subs) != 1 ||
		fmt.Sprint(subs[0].(map[string]any)["Endpoint"]) != "ref:MarketplaceTechAdminEmail" {
		t.Errorf("AlarmTopic = %+v, want an SNS topic with MarketplaceTechAdminEmail subscribed", topic)
	}
	watched := map[string]bool{}
	for name, r := range raw.Resources {
		if r.Type != "AWS::CloudWatch::Alarm" {
			continue
		}
		p := r.Properties
		if fmt.Sprint(p["AlarmActions"]) != "[ref:AlarmTopic]" {
			t.Errorf("%s: actions %v, want the alarm topic", name, p["AlarmActions"])
		}
		dims := map[string]string{}
		for _, d := range p["Dimensions"].([]any) {
			dims[fmt.Sprint(d.(map[string]any)["Name"])] = fmt.Sprint(d.(map[string]any)["Value"])
		}
		switch ns, metric := fmt.Sprint(p["Namespace"]), fmt.Sprint(p["MetricName"]); ns {
		case "mpsaas":
			if key := ns + "/" + metric + "/Function=" + dims["Function"]; !emitted[key] {
				t.Errorf("%s watches %s, which the meter function does not write (it writes %v)", name, key, emitted)
			}
			watched[metric] = true
		case "AWS/Lambda":
			fn := strings.TrimPrefix(dims["FunctionName"], "ref:")
			if _, ok := functions[fn]; !ok || metric != "Errors" {
				t.Errorf("%s watches %s of %q, want Errors of a function", name, metric, dims["FunctionName"])
			}
			watched[fn] = true
		case "AWS/SQS":
			q := strings.TrimSuffix(strings.TrimPrefix(dims["QueueName"], "getatt:"), ".QueueName")
			if !dlqs[q] || metric != "ApproximateNumberOfMessagesVisible" {
				t.Errorf("%s watches %s of %q, want the messages of a dead-letter queue (%v)", name, metric, q, dlqs)
			}
			watched[q] = true
		default:
			t.Errorf("%s: namespace %s", name, ns)
		}
	}
	want := []string{"MeterRecordsRejected", "MeterRecordsFlagged", "MeteringInvariantViolations", "MeteringLagSeconds"}
	for fn := range functions {
		want = append(want, fn)
	}
	for q := range dlqs {
		want = append(want, q)
	}
	for _, w := range want {
		if !watched[w] {
			t.Errorf("no alarm watches %s", w)
		}
	}
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"testing"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/awslabs/goformation/v7"
	"github.com/awslabs/goformation/v7/intrinsics"
)

// deployedEnv returns each function's environment exactly as template.yaml
// gives it (globals, then the function's own), for the parameters given.
func deployedEnv(t *testing.T, params map[string]any) map[string]map[string]string {
	t.Helper()
	// Conditions are evaluated (the !If of optional settings), and a Ref to
	// a resource stands for it by its logical id (a table's or topic's name).
	ref := func(name string, input, template any) any {
		if v := intrinsics.Ref(name, input, template); v != nil || input == "AWS::NoValue" {
			return v
		}
		if res, ok := template.(map[string]any)["Resources"].(map[string]any); ok {
			if _, ok := res[fmt.Sprint(input)]; ok {
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

// TestDeployedFunctionsQueueWhatDispatchDelivers builds every function
// with the environment the template gives it (issue 8, item 1): the api,
// events and meter functions decide access changes and must queue them on
// every channel the dispatch function delivers, or the seller never hears
// of a buyer.
func TestDeployedFunctionsQueueWhatDispatchDelivers(t *testing.T) {
	params := map[string]any{"TypeOfSaaSListing": "contracts_with_subscription", "ProductCode": "prodcode", "MarketplaceTechAdminEmail": "admin@seller.example",
		"RegistrationSecret": strings.Repeat("s", 32), "WebhookUrl": "https://seller.example/hooks/mpsaas", "WebhookSecret": strings.Repeat("w", 24),
		"MarketplaceSellerEmail": "seller@seller.example"}
	envs := deployedEnv(t, params)
	channels := map[string][]string{}
	for role, env := range envs {
		if role == "" {
			continue
		}
		app, err := build(context.Background(), func(k string) string { return env[k] }, slog.New(slog.DiscardHandler),
			awsconfig.WithRegion("us-east-1"), awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("A", "B", "")))
		if err != nil {
			t.Fatalf("%s function as deployed: %v\nenvironment: %v", role, err, env)
		}
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

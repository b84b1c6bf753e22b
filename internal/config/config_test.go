package config

import (
	"fmt"
	"strings"
	"testing"
)

func load(rt Runtime, env map[string]string) (*Config, error) {
	c := &Config{}
	c.LoadEnv(rt, func(k string) string { return env[k] })
	return c, c.Validate(rt)
}

// TestValidateByRuntimeAndRole: what a setting requires depends on which
// process reads it, never on a second copy of the rules.
func TestValidateByRuntimeAndRole(t *testing.T) {
	hook := map[string]string{"MPSAAS_WEBHOOK_URL": "https://seller.example/hook"}
	for _, tc := range []struct {
		name string
		rt   Runtime
		env  map[string]string
		want string // "" for valid
	}{
		{"serve sends webhooks: needs the secret", Serve, hook, "MPSAAS_WEBHOOK_SECRET"},
		{"events function only queues them", Lambda, with(hook, "MPSAAS_FUNCTION", "events"), ""},
		{"dispatch function signs them", Lambda, with(hook, "MPSAAS_FUNCTION", "dispatch"), "MPSAAS_WEBHOOK_SECRET"},
		{"api function needs the signing secret", Lambda, map[string]string{"MPSAAS_FUNCTION": "api"}, "MPSAAS_SECRET"},
		{"unknown role", Lambda, map[string]string{"MPSAAS_FUNCTION": "cron"}, "MPSAAS_FUNCTION"},
		{"two ways to send email", Serve, map[string]string{"MPSAAS_SMTP_ADDR": "smtp:25", "MPSAAS_SMTP_FROM": "a@b.example", "MPSAAS_SES_FROM": "a@b.example"}, "not both"},
		{"bad endpoint", Lambda, map[string]string{"MPSAAS_FUNCTION": "meter", "MPSAAS_SES_ENDPOINT": "ses"}, "MPSAAS_SES_ENDPOINT"},
		{"web pages", Lambda, map[string]string{"MPSAAS_FUNCTION": "meter", "MPSAAS_WEB_PAGES": "sometimes"}, "MPSAAS_WEB_PAGES"},
		{"retention too short for retries", Lambda, map[string]string{"MPSAAS_FUNCTION": "meter", "MPSAAS_RETENTION": "1d"}, "MPSAAS_RETENTION"},
		{"retention in days", Lambda, map[string]string{"MPSAAS_FUNCTION": "meter", "MPSAAS_RETENTION": "90d"}, ""},
		{"retention off (the template's 0 days)", Lambda, map[string]string{"MPSAAS_FUNCTION": "meter", "MPSAAS_RETENTION": "0d"}, ""},
		{"retention as a duration", Lambda, map[string]string{"MPSAAS_FUNCTION": "meter", "MPSAAS_RETENTION": "72h"}, ""},
		{"sign-up URL", Serve, map[string]string{"MPSAAS_SIGNUP_URL": "signup"}, "MPSAAS_SIGNUP_URL"},
		{"claim TTL too short", Lambda, map[string]string{"MPSAAS_FUNCTION": "api", "MPSAAS_SECRET": strings.Repeat("s", 32), "MPSAAS_CLAIM_TTL": "10s"}, "MPSAAS_CLAIM_TTL"},
		{"claim TTL too long", Serve, map[string]string{"MPSAAS_CLAIM_TTL": "48h"}, "MPSAAS_CLAIM_TTL"},
		{"agreement endpoint", Serve, map[string]string{"MPSAAS_AGREEMENT_ENDPOINT": "localhost:8081"}, "MPSAAS_AGREEMENT_ENDPOINT"},
		{"product resources malformed", Serve, map[string]string{"MPSAAS_PRODUCT_CODES": "abc", "MPSAAS_PRODUCT_RESOURCES": "abc"}, "MPSAAS_PRODUCT_RESOURCES"},
		{"product resources of another product", Serve, map[string]string{"MPSAAS_PRODUCT_CODES": "abc", "MPSAAS_PRODUCT_RESOURCES": "xyz=prod-1"}, "MPSAAS_PRODUCT_RESOURCES"},
		{"product resources", Lambda, map[string]string{"MPSAAS_FUNCTION": "reconcile", "MPSAAS_PRODUCT_CODES": "abc,def", "MPSAAS_PRODUCT_RESOURCES": "abc=prod-1, def=prod-2"}, ""},
		{"reconcile mode", Lambda, map[string]string{"MPSAAS_FUNCTION": "reconcile", "MPSAAS_RECONCILE": "fix"}, "MPSAAS_RECONCILE"},
		{"reconcile interval too short", Serve, map[string]string{"MPSAAS_RECONCILE_INTERVAL": "10s"}, "MPSAAS_RECONCILE_INTERVAL"},
		{"reconcile never", Serve, map[string]string{"MPSAAS_RECONCILE_INTERVAL": "0"}, ""},
		{"serve-only settings are not checked on Lambda", Lambda, map[string]string{"MPSAAS_FUNCTION": "meter", "MPSAAS_METER_INTERVAL": "often"}, ""},
		{"...but are on serve", Serve, map[string]string{"MPSAAS_METER_INTERVAL": "often"}, "MPSAAS_METER_INTERVAL"},
	} {
		_, err := load(tc.rt, tc.env)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one naming %s", tc.name, err, tc.want)
		}
	}
}

func with(m map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// TestEveryProcessQueuesWhatTheSenderDelivers: the channels come from the
// settings alone, so the api, events and meter functions queue on exactly
// the channels the dispatch function (or serve) delivers.
func TestEveryProcessQueuesWhatTheSenderDelivers(t *testing.T) {
	env := map[string]string{"MPSAAS_WEBHOOK_URL": "https://seller.example/hook", "MPSAAS_ACCESS_TOPIC_ARN": "arn:aws:sns:us-east-1:1:t",
		"MPSAAS_SES_FROM": "seller@seller.example", "MPSAAS_SECRET": strings.Repeat("s", 32)}
	var want string
	for _, role := range []string{RoleDispatch, RoleAPI, RoleEvents, RoleMeter} {
		e := with(env, "MPSAAS_FUNCTION", role)
		if role == RoleDispatch {
			e["MPSAAS_WEBHOOK_SECRET"] = strings.Repeat("w", 16)
		}
		c, err := load(Lambda, e)
		if err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		channels, senders := c.channels(Deps{Runtime: Lambda})
		got := strings.Join(channels, ",")
		if role == RoleDispatch {
			want = got
			if len(senders) != 3 || got != "notify,webhook,sns" {
				t.Fatalf("dispatch: channels %s, %d senders", got, len(senders))
			}
			continue
		}
		if got != want || senders != nil {
			t.Errorf("%s queues on %s with %d senders; dispatch delivers %s", role, got, len(senders), want)
		}
	}
	// serve without SMTP or SES logs emails.
	c, err := load(Serve, nil)
	if err != nil {
		t.Fatal(err)
	}
	if channels, senders := c.channels(Deps{Runtime: Serve, LogEmails: true}); strings.Join(channels, ",") != "notify" || senders["notify"] == nil {
		t.Errorf("serve: %v %v", channels, senders)
	}
}

// TestResources: each product code maps to its Agreement API resource id,
// the code itself unless MPSAAS_PRODUCT_RESOURCES says otherwise.
func TestResources(t *testing.T) {
	c, err := load(Serve, map[string]string{"MPSAAS_PRODUCT_CODES": "abc,def", "MPSAAS_PRODUCT_RESOURCES": "def=prod-9"})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(c.Resources()); got != "map[abc:abc def:prod-9]" {
		t.Errorf("Resources() = %s", got)
	}
}

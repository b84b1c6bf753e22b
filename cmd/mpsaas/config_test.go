package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"strings"
	"testing"
)

func loadConfig(t *testing.T, env map[string]string, args ...string) (Config, error) {
	t.Helper()
	var c Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	if err := c.Load(fs, args, func(k string) string { return env[k] }); err != nil {
		return c, err
	}
	return c, c.Validate()
}

func TestConfigDefaultsAndOverrides(t *testing.T) {
	c, err := loadConfig(t, map[string]string{"MPSAAS_ADDR": ":9000", "MPSAAS_PRODUCT_CODES": "a, b,,c"}, "-addr", ":9100")
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != ":9100" || c.DB != "mpsaas.db" || c.Listing != "contracts_with_subscription" || strings.Join(c.ProductCodes, "|") != "a|b|c" {
		t.Errorf("config = %+v", c)
	}
}

func TestConfigValidateNamesTheVariable(t *testing.T) {
	for env, want := range map[string]string{
		"MPSAAS_LISTING":     "MPSAAS_LISTING",
		"MPSAAS_EMULATOR":    "MPSAAS_EMULATOR",
		"MPSAAS_PUBLIC_URL":  "MPSAAS_PUBLIC_URL",
		"MPSAAS_SECRET":      "MPSAAS_SECRET",
		"MPSAAS_LOG_LEVEL":   "MPSAAS_LOG_LEVEL",
		"MPSAAS_LOG_FORMAT":  "MPSAAS_LOG_FORMAT",
		"MPSAAS_WEBHOOK_URL": "MPSAAS_WEBHOOK_SECRET",
		"MPSAAS_SMTP_ADDR":   "MPSAAS_SMTP_FROM",
	} {
		_, err := loadConfig(t, map[string]string{env: "bogus"})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s=bogus: error %v, want one naming %s", env, err, want)
		}
	}
}

func TestReadmeDocumentsEveryVariable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var c Config
	for _, s := range c.settings() {
		if !bytes.Contains(readme, []byte("`"+s.env+"`")) && !bytes.Contains(readme, []byte(s.env+"`, `")) && !bytes.Contains(readme, []byte("`"+s.env)) {
			t.Errorf("README does not document %s", s.env)
		}
	}
}

func TestCommandLine(t *testing.T) {
	ctx := context.Background()
	env := func(string) string { return "" }
	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"version"}, env, &out, &errOut); err != nil || !strings.HasPrefix(out.String(), "mpsaas ") {
		t.Errorf("version: %v %q", err, out.String())
	}
	out.Reset()
	if err := run(ctx, []string{"help"}, env, &out, &errOut); err != nil || !strings.Contains(out.String(), "mpsaas serve") {
		t.Errorf("help: %v %q", err, out.String())
	}
	if err := run(ctx, []string{"frobnicate"}, env, &out, &errOut); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Errorf("unknown command: %v", err)
	}
	errOut.Reset()
	if err := run(ctx, []string{"serve", "-h"}, env, &out, &errOut); err != flag.ErrHelp || !strings.Contains(errOut.String(), "MPSAAS_WEBHOOK_URL") {
		t.Errorf("serve -h: %v %q", err, errOut.String())
	}
	out.Reset()
	secretEnv := func(k string) string {
		if k == "MPSAAS_WEBHOOK_SECRET" {
			return "super-secret-webhook-key"
		}
		if k == "MPSAAS_WEBHOOK_URL" {
			return "https://seller.example/hook"
		}
		return ""
	}
	if err := run(ctx, []string{"serve", "--config-dump"}, secretEnv, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "super-secret") || !strings.Contains(out.String(), "MPSAAS_WEBHOOK_SECRET=<redacted>") {
		t.Errorf("config dump leaks or lacks the secret line:\n%s", out.String())
	}
	if err := run(ctx, []string{"serve", "--listing", "weekly"}, env, &out, &errOut); err == nil || !strings.Contains(err.Error(), "MPSAAS_LISTING") {
		t.Errorf("bad listing: %v", err)
	}
}

func TestConfigMeterGrace(t *testing.T) {
	for v, want := range map[string]string{"": "5m0s", "30m": "30m0s", "4h": "4h0m0s", "1s": "1s"} {
		c, err := loadConfig(t, map[string]string{"MPSAAS_METER_GRACE": v})
		if err != nil || c.meterGrace.String() != want {
			t.Errorf("MPSAAS_METER_GRACE=%q: %v, %v; want %s", v, c.meterGrace, err, want)
		}
	}
	for _, v := range []string{"0s", "-5m", "5h", "soon", "10"} {
		if _, err := loadConfig(t, map[string]string{"MPSAAS_METER_GRACE": v}); err == nil || !strings.Contains(err.Error(), "MPSAAS_METER_GRACE") || !strings.Contains(err.Error(), "4h") {
			t.Errorf("MPSAAS_METER_GRACE=%q: error %v, want one naming the variable and the range", v, err)
		}
	}
}

func TestConfigRevokeOnCancel(t *testing.T) {
	for v, want := range map[string]bool{"": false, "false": false, "true": true, "1": true} {
		c, err := loadConfig(t, map[string]string{"MPSAAS_REVOKE_ON_CANCEL": v})
		if err != nil || c.revokeOnCancel != want {
			t.Errorf("MPSAAS_REVOKE_ON_CANCEL=%q: %v, %v; want %v", v, c.revokeOnCancel, err, want)
		}
	}
	if _, err := loadConfig(t, map[string]string{"MPSAAS_REVOKE_ON_CANCEL": "yes please"}); err == nil || !strings.Contains(err.Error(), "MPSAAS_REVOKE_ON_CANCEL") {
		t.Errorf("a bad value: %v, want an error naming the variable", err)
	}
}

package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas/internal/config"
)

func loadConfig(t *testing.T, env map[string]string, args ...string) (Config, error) {
	t.Helper()
	var c Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	if err := c.Load(fs, args, func(k string) string { return env[k] }); err != nil {
		return c, err
	}
	return c, c.Validate(config.Serve)
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
	for _, s := range c.Settings() {
		if !bytes.Contains(readme, []byte("`"+s.Env+"`")) && !bytes.Contains(readme, []byte(s.Env+"`, `")) && !bytes.Contains(readme, []byte("`"+s.Env)) {
			t.Errorf("README does not document %s", s.Env)
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
		if err != nil || c.MeterGrace.String() != want {
			t.Errorf("MPSAAS_METER_GRACE=%q: %v, %v; want %s", v, c.MeterGrace, err, want)
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
		if err != nil || c.RevokeOnCancel != want {
			t.Errorf("MPSAAS_REVOKE_ON_CANCEL=%q: %v, %v; want %v", v, c.RevokeOnCancel, err, want)
		}
	}
	if _, err := loadConfig(t, map[string]string{"MPSAAS_REVOKE_ON_CANCEL": "yes please"}); err == nil || !strings.Contains(err.Error(), "MPSAAS_REVOKE_ON_CANCEL") {
		t.Errorf("a bad value: %v, want an error naming the variable", err)
	}
}

// TestAutoEmulatorAsksTheSDK (issue 9): with MPSAAS_EMULATOR=auto, any
// credentials the AWS SDK's default chain finds select AWS, not only the
// environment variables: a [default] profile in ~/.aws/credentials, an EC2
// instance role. Only when there are none does serve run the emulator.
func TestAutoEmulatorAsksTheSDK(t *testing.T) {
	isolate := func(t *testing.T) string {
		home := t.TempDir()
		t.Setenv("HOME", home)
		for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
			"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"} {
			t.Setenv(v, "")
		}
		t.Setenv("AWS_CONFIG_FILE", filepath.Join(home, ".aws", "config"))
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(home, ".aws", "credentials"))
		t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
		t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "")
		return home
	}
	auto := func(t *testing.T) bool {
		c, err := loadConfig(t, map[string]string{"MPSAAS_EMULATOR": "auto"})
		if err != nil {
			t.Fatal(err)
		}
		return c.UseEmulator(context.Background(), func(string) string { return "" })
	}
	t.Run("no credentials anywhere", func(t *testing.T) {
		isolate(t)
		if !auto(t) {
			t.Error("auto chose AWS with no credentials")
		}
	})
	t.Run("default profile in ~/.aws/credentials", func(t *testing.T) {
		home := isolate(t)
		if err := os.MkdirAll(filepath.Join(home, ".aws"), 0o700); err != nil {
			t.Fatal(err)
		}
		creds := "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = secretsecretsecret\n"
		if err := os.WriteFile(filepath.Join(home, ".aws", "credentials"), []byte(creds), 0o600); err != nil {
			t.Fatal(err)
		}
		if auto(t) {
			t.Error("auto chose the emulator although ~/.aws/credentials has a default profile")
		}
	})
	t.Run("EC2 instance role", func(t *testing.T) {
		isolate(t)
		imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
				w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
				fmt.Fprint(w, "token")
			case strings.HasSuffix(r.URL.Path, "/security-credentials/") || strings.HasSuffix(r.URL.Path, "/security-credentials-extended/"):
				fmt.Fprint(w, "mpsaas-role")
			case strings.Contains(r.URL.Path, "/security-credentials"):
				fmt.Fprintf(w, `{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"secret","Token":"token","Expiration":%q,"LastUpdated":%q}`,
					time.Now().Add(time.Hour).UTC().Format(time.RFC3339), time.Now().UTC().Format(time.RFC3339))
			default:
				http.NotFound(w, r)
			}
		}))
		defer imds.Close()
		t.Setenv("AWS_EC2_METADATA_DISABLED", "false")
		t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.URL)
		if auto(t) {
			t.Error("auto chose the emulator on an EC2 instance with a role")
		}
	})
}

// TestHelpNamesValues (issue 9): flags name their values (HOST:PORT, URL,
// N), never a word lifted from the description, and "emulator -h" shows
// its environment variables like serve does.
func TestHelpNamesValues(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"serve", "-h"}, func(string) string { return "" }, &out, &errOut); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("serve -h: %v", err)
	}
	help := errOut.String() + out.String()
	for _, want := range []string{"-meter-concurrency N\n", "-emulator-url URL\n", "-addr HOST:PORT\n", "[$MPSAAS_METER_GRACE]"} {
		if !strings.Contains(help, want) {
			t.Errorf("serve -h lacks %q", want)
		}
	}
	for _, bad := range []string{"-emulator-url mpsaas emulator", "-meter-concurrency string", "\tN: "} {
		if strings.Contains(help, bad) {
			t.Errorf("serve -h shows %q", bad)
		}
	}
	out.Reset()
	errOut.Reset()
	if err := run(context.Background(), []string{"emulator", "-h"}, func(string) string { return "" }, &out, &errOut); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("emulator -h: %v", err)
	}
	if h := errOut.String() + out.String(); !strings.Contains(h, "[$MPSAAS_EMULATOR_ADDR]") || !strings.Contains(h, "-addr HOST:PORT") {
		t.Errorf("emulator -h:\n%s", h)
	}
}

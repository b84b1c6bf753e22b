package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/subscription"
)

// Config is the whole configuration of `mpsaas serve`. It is read from
// MPSAAS_* environment variables; command-line flags override them.
type Config struct {
	Addr          string
	PublicURL     string
	DB            string
	Secret        string
	Listing       string
	ProductCodes  []string
	ProductName   string
	SignInURL     string
	SupportEmail  string
	CORSOrigins   []string
	WebhookURL    string
	WebhookSecret string
	SMTPAddr      string
	SMTPUsername  string
	SMTPPassword  string
	SMTPFrom      string
	AdminEmail    string
	// Emulator is auto, on or off. Auto runs the embedded emulator unless AWS
	// credentials, a profile or Marketplace endpoints are configured.
	Emulator            string
	EmulatorAddr        string
	MeteringEndpoint    string
	EntitlementEndpoint string
	Region              string
	LogLevel            string
	LogFormat           string
	UsageAPIKeys        []string
	MeterIntervalText   string
	HeartbeatDimension  string
	MeterConcurrencyTxt string
	MeterGraceText      string
	RevokeOnCancelText  string
	DimensionsText      string

	EmulatorURL    string
	SQSQueueURL    string
	SQSEndpoint    string
	AccessTopicArn string
	SNSEndpoint    string

	meterInterval    time.Duration
	meterConcurrency int
	meterGrace       time.Duration
	revokeOnCancel   bool
	dimensions       []string
}

// setting describes one configuration value for flags, env and --help.
type setting struct {
	name, env, usage, def string
	arg                   string // placeholder shown in --help (HOST:PORT, URL, N, ...)
	secret                bool
	ptr                   *string
	list                  *[]string
}

func (c *Config) settings() []setting {
	return []setting{
		{name: "addr", arg: "HOST:PORT", env: "MPSAAS_ADDR", def: "localhost:8080", usage: "address the buyer-facing web server listens on", ptr: &c.Addr},
		{name: "public-url", arg: "URL", env: "MPSAAS_PUBLIC_URL", usage: "URL buyers reach the web server at (default http://<addr>)", ptr: &c.PublicURL},
		{name: "db", arg: "FILE", env: "MPSAAS_DB", def: "mpsaas.db", usage: "SQLite database file", ptr: &c.DB},
		{name: "secret", arg: "SECRET", env: "MPSAAS_SECRET", usage: "secret (32+ characters) that signs registration forms and status links; random per start if unset", secret: true, ptr: &c.Secret},
		{name: "listing", arg: "TYPE", env: "MPSAAS_LISTING", def: mpsaas.ListingContractsWithSubscription, usage: "TypeOfSaaSListing: subscriptions, contracts or contracts_with_subscription", ptr: &c.Listing},
		{name: "product-codes", arg: "CODES", env: "MPSAAS_PRODUCT_CODES", usage: "comma-separated product codes this integration serves (tokens for other products are refused); with the emulator, its demo products", list: &c.ProductCodes},
		{name: "product-name", arg: "NAME", env: "MPSAAS_PRODUCT_NAME", def: "Example SaaS", usage: "product name shown to buyers", ptr: &c.ProductName},
		{name: "sign-in-url", arg: "URL", env: "MPSAAS_SIGN_IN_URL", usage: "where registered buyers sign in to your application", ptr: &c.SignInURL},
		{name: "support-email", arg: "EMAIL", env: "MPSAAS_SUPPORT_EMAIL", usage: "support address shown on buyer pages", ptr: &c.SupportEmail},
		{name: "cors-origins", arg: "ORIGINS", env: "MPSAAS_CORS_ORIGINS", usage: "origins allowed to call POST /subscriber from a browser (comma-separated, * for any)", list: &c.CORSOrigins},
		{name: "webhook-url", arg: "URL", env: "MPSAAS_WEBHOOK_URL", usage: "your endpoint for signed access-change webhooks", ptr: &c.WebhookURL},
		{name: "webhook-secret", arg: "SECRET", env: "MPSAAS_WEBHOOK_SECRET", usage: "HMAC secret for webhook signatures (required with --webhook-url)", secret: true, ptr: &c.WebhookSecret},
		{name: "smtp-addr", arg: "HOST:PORT", env: "MPSAAS_SMTP_ADDR", usage: "SMTP server host:port for emails (default: notifications go to the log)", ptr: &c.SMTPAddr},
		{name: "smtp-username", arg: "USER", env: "MPSAAS_SMTP_USERNAME", usage: "SMTP username", ptr: &c.SMTPUsername},
		{name: "smtp-password", arg: "PASSWORD", env: "MPSAAS_SMTP_PASSWORD", usage: "SMTP password", secret: true, ptr: &c.SMTPPassword},
		{name: "smtp-from", arg: "EMAIL", env: "MPSAAS_SMTP_FROM", usage: "From address of emails", ptr: &c.SMTPFrom},
		{name: "admin-email", arg: "EMAIL", env: "MPSAAS_ADMIN_EMAIL", usage: "seller admin address copied on every access change (MarketplaceTechAdminEmail)", ptr: &c.AdminEmail},
		{name: "emulator", arg: "MODE", env: "MPSAAS_EMULATOR", def: "auto", usage: "run the embedded Marketplace emulator: auto, on or off (auto: on only when no endpoint is set and the AWS SDK's default credential chain finds no credentials)", ptr: &c.Emulator},
		{name: "emulator-addr", arg: "HOST:PORT", env: "MPSAAS_EMULATOR_ADDR", def: "localhost:8081", usage: "address the embedded emulator and buyer simulator listen on", ptr: &c.EmulatorAddr},
		{name: "emulator-url", arg: "URL", env: "MPSAAS_EMULATOR_URL", usage: "a running \"mpsaas emulator\" to use instead of the embedded one: its API endpoints and its notifications", ptr: &c.EmulatorURL},
		{name: "metering-endpoint", arg: "URL", env: "MPSAAS_METERING_ENDPOINT", usage: "override the Marketplace Metering endpoint (e.g. a standalone emulator)", ptr: &c.MeteringEndpoint},
		{name: "entitlement-endpoint", arg: "URL", env: "MPSAAS_ENTITLEMENT_ENDPOINT", usage: "override the Marketplace Entitlement endpoint", ptr: &c.EntitlementEndpoint},
		{name: "region", arg: "REGION", env: "AWS_REGION", def: "us-east-1", usage: "AWS region for metering", ptr: &c.Region},
		{name: "usage-api-keys", arg: "KEYS", env: "MPSAAS_USAGE_API_KEYS", usage: "comma-separated API keys accepted by the usage API (Authorization: Bearer <key>); with the emulator a random key is made and printed", secret: true, list: &c.UsageAPIKeys},
		{name: "meter-interval", arg: "DURATION", env: "MPSAAS_METER_INTERVAL", def: "1m", usage: "how often serve seals closed hours and sends usage to AWS", ptr: &c.MeterIntervalText},
		{name: "meter-grace", arg: "DURATION", env: "MPSAAS_METER_GRACE", def: "5m", usage: "how long after an hour ends its usage is still collected before the hour is sealed and billed (1s to 4h); longer bills late usage in its own hour but delays every bill", ptr: &c.MeterGraceText},
		{name: "revoke-on-cancel", arg: "BOOL", env: "MPSAAS_REVOKE_ON_CANCEL", def: "false", usage: "revoke access as soon as a buyer cancels (true), instead of keeping it (pending-cancellation) until the one-hour final metering window ends", ptr: &c.RevokeOnCancelText},
		{name: "dimensions", arg: "NAMES", env: "MPSAAS_DIMENSIONS", usage: "comma-separated dimensions of your product; usage for any other is refused with 400 (default: any)", ptr: &c.DimensionsText},
		{name: "heartbeat-dimension", arg: "NAME", env: "MPSAAS_HEARTBEAT_DIMENSION", usage: "dimension of the zero-quantity record sent every hour for every subscribed buyer without usage (required by AWS for subscriptions)", ptr: &c.HeartbeatDimension},
		{name: "meter-concurrency", arg: "N", env: "MPSAAS_METER_CONCURRENCY", def: "4", usage: "BatchMeterUsage calls in flight at once", ptr: &c.MeterConcurrencyTxt},
		{name: "sqs-queue-url", arg: "URL", env: "MPSAAS_SQS_QUEUE_URL", usage: "SQS queue of AWS Marketplace notifications (subscribed to the Marketplace SNS topics, or an EventBridge rule target) to consume", ptr: &c.SQSQueueURL},
		{name: "sqs-endpoint", arg: "URL", env: "MPSAAS_SQS_ENDPOINT", usage: "override the SQS endpoint (e.g. goaws); overrides speak SQS's Query protocol", ptr: &c.SQSEndpoint},
		{name: "access-topic-arn", arg: "ARN", env: "MPSAAS_ACCESS_TOPIC_ARN", usage: "SNS topic to publish every access change to", ptr: &c.AccessTopicArn},
		{name: "sns-endpoint", arg: "URL", env: "MPSAAS_SNS_ENDPOINT", usage: "override the SNS endpoint (e.g. goaws)", ptr: &c.SNSEndpoint},
		{name: "log-level", arg: "LEVEL", env: "MPSAAS_LOG_LEVEL", def: "info", usage: "debug, info, warn or error", ptr: &c.LogLevel},
		{name: "log-format", arg: "FORMAT", env: "MPSAAS_LOG_FORMAT", def: "text", usage: "text or json", ptr: &c.LogFormat},
	}
}

// Load reads the environment, then flags from args. With flags named,
// only those settings are command-line flags (a subcommand shows only its
// own); every setting is still read from the environment.
func (c *Config) Load(fs *flag.FlagSet, args []string, getenv func(string) string, flags ...string) error {
	for _, s := range c.settings() {
		v := getenv(s.env)
		if v == "" {
			v = s.def
		}
		if len(flags) > 0 && !slices.Contains(flags, s.name) {
			if s.list != nil {
				*s.list = splitList(v)
			} else {
				*s.ptr = v
			}
			continue
		}
		if s.list != nil {
			*s.list = splitList(v)
			usage := s.usage + " [$" + s.env + "]"
			if s.arg != "" {
				usage = "`" + s.arg + "`: " + usage
			}
			fs.Func(s.name, usage, func(x string) error { *s.list = splitList(x); return nil })
			continue
		}
		usage := s.usage + " [$" + s.env + "]"
		if s.arg != "" {
			usage = "`" + s.arg + "`: " + usage // flag shows the quoted word as the value's name
		}
		if s.secret {
			fs.StringVar(s.ptr, s.name, "", usage) // never print a secret as a default
		} else {
			fs.StringVar(s.ptr, s.name, v, usage)
		}
		*s.ptr = v
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Validate checks the configuration and fills derived defaults. Errors name
// the environment variable to fix.
func (c *Config) Validate() error {
	var errs []error
	switch c.Listing {
	case mpsaas.ListingSubscriptions, mpsaas.ListingContracts, mpsaas.ListingContractsWithSubscription:
	default:
		errs = append(errs, fmt.Errorf("MPSAAS_LISTING %q: want subscriptions, contracts or contracts_with_subscription", c.Listing))
	}
	switch c.Emulator {
	case "auto", "on", "off":
	default:
		errs = append(errs, fmt.Errorf("MPSAAS_EMULATOR %q: want auto, on or off", c.Emulator))
	}
	if c.PublicURL != "" {
		if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("MPSAAS_PUBLIC_URL %q: want an http(s) URL", c.PublicURL))
		}
		c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	}
	if c.Secret != "" && len(c.Secret) < 32 {
		errs = append(errs, errors.New("MPSAAS_SECRET: must be at least 32 characters"))
	}
	if c.WebhookURL != "" {
		if u, err := url.Parse(c.WebhookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("MPSAAS_WEBHOOK_URL %q: want an http(s) URL", c.WebhookURL))
		}
		if len(c.WebhookSecret) < 16 {
			errs = append(errs, errors.New("MPSAAS_WEBHOOK_SECRET: required with MPSAAS_WEBHOOK_URL, at least 16 characters"))
		}
	}
	if c.SMTPAddr != "" && c.SMTPFrom == "" {
		errs = append(errs, errors.New("MPSAAS_SMTP_FROM: required with MPSAAS_SMTP_ADDR"))
	}
	if d, err := time.ParseDuration(c.MeterIntervalText); err != nil || d < time.Second {
		errs = append(errs, fmt.Errorf("MPSAAS_METER_INTERVAL %q: want a duration of at least 1s, such as 1m", c.MeterIntervalText))
	} else {
		c.meterInterval = d
	}
	if n, err := strconv.Atoi(c.MeterConcurrencyTxt); err != nil || n < 1 || n > 64 {
		errs = append(errs, fmt.Errorf("MPSAAS_METER_CONCURRENCY %q: want 1 to 64", c.MeterConcurrencyTxt))
	} else {
		c.meterConcurrency = n
	}
	if d, err := metering.ParseDimensions(c.DimensionsText); err != nil {
		errs = append(errs, err)
	} else {
		c.dimensions = d
	}
	if v, err := subscription.ParseRevokeOnCancel(c.RevokeOnCancelText); err != nil {
		errs = append(errs, err)
	} else {
		c.revokeOnCancel = v
	}
	if d, err := metering.ParseSealGrace(c.MeterGraceText); err != nil {
		errs = append(errs, err)
	} else {
		c.meterGrace = d
	}
	for _, k := range c.UsageAPIKeys {
		if len(k) < 16 {
			errs = append(errs, errors.New("MPSAAS_USAGE_API_KEYS: each key must be at least 16 characters"))
			break
		}
	}
	if c.EmulatorURL != "" {
		if u, err := url.Parse(c.EmulatorURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("MPSAAS_EMULATOR_URL %q: want the emulator's URL, such as http://localhost:8081", c.EmulatorURL))
		}
		c.EmulatorURL = strings.TrimRight(c.EmulatorURL, "/")
		if c.MeteringEndpoint == "" {
			c.MeteringEndpoint = c.EmulatorURL
		}
		if c.EntitlementEndpoint == "" {
			c.EntitlementEndpoint = c.EmulatorURL
		}
	}
	if c.SQSQueueURL != "" {
		if u, err := url.Parse(c.SQSQueueURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("MPSAAS_SQS_QUEUE_URL %q: want the queue's URL, such as https://sqs.us-east-1.amazonaws.com/123456789012/mpsaas", c.SQSQueueURL))
		}
	}
	if c.AccessTopicArn != "" && !strings.HasPrefix(c.AccessTopicArn, "arn:") {
		errs = append(errs, fmt.Errorf("MPSAAS_ACCESS_TOPIC_ARN %q: want an SNS topic ARN", c.AccessTopicArn))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("MPSAAS_LOG_LEVEL %q: want debug, info, warn or error", c.LogLevel))
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("MPSAAS_LOG_FORMAT %q: want text or json", c.LogFormat))
	}
	return errors.Join(errs...)
}

// credentialProbeTimeout bounds how long "auto" asks the SDK's credential
// chain (the last link, EC2 instance metadata, can take that long to fail
// off EC2; AWS_EC2_METADATA_DISABLED=true skips it).
const credentialProbeTimeout = 3 * time.Second

// useEmulator decides whether to run the embedded emulator. "auto" runs it
// only when nothing points at AWS: no endpoint override, and the AWS SDK's
// own default credential chain (environment, ~/.aws files including the
// [default] profile, SSO, web identity, ECS and EC2 instance roles) yields
// no credentials. Real usage must never be billed to an in-memory emulator.
func (c *Config) useEmulator(ctx context.Context, getenv func(string) string) bool {
	switch c.Emulator {
	case "on":
		return true
	case "off":
		return false
	}
	if c.MeteringEndpoint != "" || c.EntitlementEndpoint != "" {
		return false
	}
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"} {
		if getenv(v) != "" {
			return false
		}
	}
	found, _ := awsCredentialsFound(ctx, c.Region)
	return !found
}

// awsCredentialsFound asks the SDK's default credential chain for
// credentials, within credentialProbeTimeout; it returns their source.
func awsCredentialsFound(ctx context.Context, region string) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, credentialProbeTimeout)
	defer cancel()
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(region))
	if err != nil || cfg.Credentials == nil {
		return false, ""
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil || !creds.HasKeys() {
		return false, ""
	}
	return true, creds.Source
}

// Dump writes the configuration with secrets redacted.
func (c *Config) Dump(w io.Writer) {
	var lines []string
	for _, s := range c.settings() {
		v := ""
		if s.list != nil {
			v = strings.Join(*s.list, ",")
		} else {
			v = *s.ptr
		}
		if s.secret && v != "" {
			v = "<redacted>"
		}
		lines = append(lines, fmt.Sprintf("%s=%s", s.env, v))
	}
	sort.Strings(lines)
	fmt.Fprintln(w, strings.Join(lines, "\n"))
}

func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// placeholderPrefix is the "ARG: " a setting's usage starts with so that
// flag names the value (see Load); printFlags drops it from the text.
var placeholderPrefix = regexp.MustCompile(`(\n\s*\t)[A-Z][A-Z:_]*: `)

// printFlags prints fs's flags like PrintDefaults, placeholders named
// ("-addr HOST:PORT") and not repeated in the description.
func printFlags(fs *flag.FlagSet) {
	var b strings.Builder
	out := fs.Output()
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(out)
	fmt.Fprint(out, placeholderPrefix.ReplaceAllString(b.String(), "$1"))
}

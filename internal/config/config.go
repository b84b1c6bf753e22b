// Package config is the one place where mpsaas's settings become its
// services, for both runtimes: `mpsaas serve` (SQLite, one process) and
// the Lambda functions (DynamoDB). Each setting is declared once, with the
// environment variable and flag that set it, the runtimes that read it and
// its validation; Build turns a validated Config into the subscription,
// metering and web services and the access-change channels. A setting
// therefore cannot reach one runtime and not the other (issue 8): the
// Lambda functions and serve differ only in the store and the processes
// around the services, never in how the services are configured.
package config

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/admin"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/subscription"
)

// Runtime is a set of runtimes that read a setting.
type Runtime int

// The runtimes.
const (
	Serve  Runtime = 1 << iota // mpsaas serve and the other commands of the mpsaas binary
	Lambda                     // the Lambda functions (cmd/lambda), configured by template.yaml
	Both   = Serve | Lambda
)

// Lambda function roles (MPSAAS_FUNCTION).
const (
	RoleAPI       = "api"
	RoleEvents    = "events"
	RoleDispatch  = "dispatch"
	RoleMeter     = "meter"
	RoleReconcile = "reconcile"
)

// Roles are the Lambda function roles.
var Roles = []string{RoleAPI, RoleEvents, RoleDispatch, RoleMeter, RoleReconcile}

// Config is the whole configuration. It is read from MPSAAS_* environment
// variables; on the command line, flags override them.
type Config struct {
	// Web pages and the registration API.
	Secret       string
	Listing      string
	ProductCodes []string
	ProductName  string
	SignInURL    string
	SignupURL    string
	ClaimTTLText string
	// Reconciliation with the Agreement API.
	ProductResourcesText  string
	Reconcile             string // apply or report
	ReconcileIntervalText string
	// ProductsFile and ProductsText give the products file (a path, or its
	// content: the SAM parameter ProductsConfig).
	ProductsFile string
	ProductsText string
	// AdminPasswordHash turns the seller console (/admin) on.
	AdminPasswordHash   string
	AdminSessionTTLText string
	SupportEmail        string
	CORSOrigins         []string
	WebPagesText        string

	// Access-change channels.
	WebhookURL     string
	WebhookSecret  string
	AccessTopicArn string
	SNSEndpoint    string
	SMTPAddr       string
	SMTPUsername   string
	SMTPPassword   string
	SMTPFrom       string
	SESFrom        string
	SESEndpoint    string
	AdminEmail     string

	// AWS Marketplace.
	MeteringEndpoint    string
	EntitlementEndpoint string
	AgreementEndpoint   string
	Region              string

	// Usage and metering.
	UsageAPIKeys        []string
	HeartbeatDimension  string
	MeterConcurrencyTxt string
	MeterGraceText      string
	RevokeOnCancelText  string
	DimensionsText      string

	LogLevel string

	// mpsaas serve only.
	Addr              string
	PublicURL         string
	DB                string
	Emulator          string // auto, on or off
	EmulatorAddr      string
	EmulatorURL       string
	MeterIntervalText string
	MetricsAddr       string
	SQSQueueURL       string
	SQSEndpoint       string
	LogFormat         string

	// Lambda only.
	Function            string
	DynamoDBEndpoint    string
	SubscribersTable    string
	EventsTable         string
	OutboxTable         string
	MeterTable          string
	SampleMeteringTable string
	RetentionText       string

	// Parsed by Validate.
	WebPages         bool
	MeterInterval    time.Duration
	MeterConcurrency int
	MeterGrace       time.Duration
	RevokeOnCancel   bool
	Dimensions       []string
	Retention        time.Duration
	ClaimTTL         time.Duration
	// ProductResources maps product codes to the Agreement API's resource
	// ids of the products, where they differ (see Resources).
	ProductResources  map[string]string
	ReconcileInterval time.Duration
	AdminSessionTTL   time.Duration
	// Products are the products file's products by code (none without one).
	Products map[string]mpsaas.Product
}

// Setting describes one configuration value for flags, the environment,
// --help and the README.
type Setting struct {
	Name, Env, Usage, Def string
	Arg                   string // placeholder shown in --help (HOST:PORT, URL, N, ...)
	Secret                bool
	Runtimes              Runtime
	ptr                   *string
	list                  *[]string
}

// Settings lists every setting.
func (c *Config) Settings() []Setting {
	return []Setting{
		{Name: "addr", Arg: "HOST:PORT", Env: "MPSAAS_ADDR", Def: "localhost:8080", Runtimes: Serve, Usage: "address the buyer-facing web server listens on", ptr: &c.Addr},
		{Name: "public-url", Arg: "URL", Env: "MPSAAS_PUBLIC_URL", Runtimes: Serve, Usage: "URL buyers reach the web server at (default http://<addr>)", ptr: &c.PublicURL},
		{Name: "db", Arg: "FILE", Env: "MPSAAS_DB", Def: "mpsaas.db", Runtimes: Serve, Usage: "SQLite database file", ptr: &c.DB},
		{Name: "secret", Arg: "SECRET", Env: "MPSAAS_SECRET", Runtimes: Both, Usage: "secret (32+ characters) that signs registration forms and status links; random per start if unset", Secret: true, ptr: &c.Secret},
		{Name: "listing", Arg: "TYPE", Env: "MPSAAS_LISTING", Def: mpsaas.ListingContractsWithSubscription, Runtimes: Both, Usage: "TypeOfSaaSListing: subscriptions, contracts or contracts_with_subscription", ptr: &c.Listing},
		{Name: "product-codes", Arg: "CODES", Env: "MPSAAS_PRODUCT_CODES", Runtimes: Both, Usage: "comma-separated product codes this integration serves (tokens for other products are refused); with the emulator, its demo products", list: &c.ProductCodes},
		{Name: "product-name", Arg: "NAME", Env: "MPSAAS_PRODUCT_NAME", Def: "Example SaaS", Runtimes: Both, Usage: "product name shown to buyers", ptr: &c.ProductName},
		{Name: "sign-in-url", Arg: "URL", Env: "MPSAAS_SIGN_IN_URL", Runtimes: Both, Usage: "where registered buyers sign in to your application", ptr: &c.SignInURL},
		{Name: "signup-url", Arg: "URL", Env: "MPSAAS_SIGNUP_URL", Runtimes: Both, Usage: "your own sign-up or sign-in page: buyers coming from AWS Marketplace are sent there with a claim code (?code=) that your backend redeems at POST /v1/claims/{code}, instead of mpsaas's registration form", ptr: &c.SignupURL},
		{Name: "product-resources", Arg: "CODE=ID,...", Env: "MPSAAS_PRODUCT_RESOURCES", Runtimes: Both, Usage: "the Agreement API's resource id of each product code, for reconciliation (AWS: prod-...; default: the product code itself, as the emulator knows it)", ptr: &c.ProductResourcesText},
		{Name: "reconcile", Arg: "MODE", Env: "MPSAAS_RECONCILE", Def: "apply", Runtimes: Both, Usage: "scheduled reconciliation with AWS's agreements: apply (record the events lost notifications would have carried) or report (log the drift only)", ptr: &c.Reconcile},
		{Name: "reconcile-interval", Arg: "DURATION", Env: "MPSAAS_RECONCILE_INTERVAL", Def: "24h", Runtimes: Serve, Usage: "how often serve reconciles with AWS's agreements (0: never; the Lambda stack runs it daily)", ptr: &c.ReconcileIntervalText},
		{Name: "claim-ttl", Arg: "DURATION", Env: "MPSAAS_CLAIM_TTL", Def: "10m", Runtimes: Both, Usage: "how long a claim code can be redeemed (1m to 24h)", ptr: &c.ClaimTTLText},
		{Name: "support-email", Arg: "EMAIL", Env: "MPSAAS_SUPPORT_EMAIL", Runtimes: Both, Usage: "support address shown on buyer pages", ptr: &c.SupportEmail},
		{Name: "cors-origins", Arg: "ORIGINS", Env: "MPSAAS_CORS_ORIGINS", Runtimes: Both, Usage: "origins allowed to call POST /subscriber from a browser (comma-separated, * for any)", list: &c.CORSOrigins},
		{Name: "web-pages", Arg: "BOOL", Env: "MPSAAS_WEB_PAGES", Def: "true", Runtimes: Both, Usage: "serve the buyer pages (fulfillment, registration, status); false leaves only the JSON API, for sellers with their own landing page", ptr: &c.WebPagesText},
		{Name: "webhook-url", Arg: "URL", Env: "MPSAAS_WEBHOOK_URL", Runtimes: Both, Usage: "your endpoint for signed access-change webhooks", ptr: &c.WebhookURL},
		{Name: "webhook-secret", Arg: "SECRET", Env: "MPSAAS_WEBHOOK_SECRET", Runtimes: Both, Usage: "HMAC secret for webhook signatures (required with --webhook-url where webhooks are sent)", Secret: true, ptr: &c.WebhookSecret},
		{Name: "smtp-addr", Arg: "HOST:PORT", Env: "MPSAAS_SMTP_ADDR", Runtimes: Both, Usage: "SMTP server host:port for emails (serve without SMTP or SES: notifications go to the log)", ptr: &c.SMTPAddr},
		{Name: "smtp-username", Arg: "USER", Env: "MPSAAS_SMTP_USERNAME", Runtimes: Both, Usage: "SMTP username", ptr: &c.SMTPUsername},
		{Name: "smtp-password", Arg: "PASSWORD", Env: "MPSAAS_SMTP_PASSWORD", Runtimes: Both, Usage: "SMTP password", Secret: true, ptr: &c.SMTPPassword},
		{Name: "smtp-from", Arg: "EMAIL", Env: "MPSAAS_SMTP_FROM", Runtimes: Both, Usage: "From address of emails", ptr: &c.SMTPFrom},
		{Name: "ses-from", Arg: "EMAIL", Env: "MPSAAS_SES_FROM", Runtimes: Both, Usage: "send emails with Amazon SES from this verified identity (instead of SMTP)", ptr: &c.SESFrom},
		{Name: "ses-endpoint", Arg: "URL", Env: "MPSAAS_SES_ENDPOINT", Runtimes: Both, Usage: "override the SES endpoint", ptr: &c.SESEndpoint},
		{Name: "admin-email", Arg: "EMAIL", Env: "MPSAAS_ADMIN_EMAIL", Runtimes: Both, Usage: "seller admin address copied on every access change (MarketplaceTechAdminEmail)", ptr: &c.AdminEmail},
		{Name: "emulator", Arg: "MODE", Env: "MPSAAS_EMULATOR", Def: "auto", Runtimes: Serve, Usage: "run the embedded Marketplace emulator: auto, on or off (auto: on only when no endpoint is set and the AWS SDK's default credential chain finds no credentials)", ptr: &c.Emulator},
		{Name: "emulator-addr", Arg: "HOST:PORT", Env: "MPSAAS_EMULATOR_ADDR", Def: "localhost:8081", Runtimes: Serve, Usage: "address the embedded emulator and buyer simulator listen on", ptr: &c.EmulatorAddr},
		{Name: "emulator-url", Arg: "URL", Env: "MPSAAS_EMULATOR_URL", Runtimes: Serve, Usage: "a running \"mpsaas emulator\" to use instead of the embedded one: its API endpoints and its notifications", ptr: &c.EmulatorURL},
		{Name: "metering-endpoint", Arg: "URL", Env: "MPSAAS_METERING_ENDPOINT", Runtimes: Both, Usage: "override the Marketplace Metering endpoint (e.g. a standalone emulator)", ptr: &c.MeteringEndpoint},
		{Name: "entitlement-endpoint", Arg: "URL", Env: "MPSAAS_ENTITLEMENT_ENDPOINT", Runtimes: Both, Usage: "override the Marketplace Entitlement endpoint", ptr: &c.EntitlementEndpoint},
		{Name: "agreement-endpoint", Arg: "URL", Env: "MPSAAS_AGREEMENT_ENDPOINT", Runtimes: Both, Usage: "override the Marketplace Agreement API endpoint (free trials are read from the buyer's agreement)", ptr: &c.AgreementEndpoint},
		{Name: "region", Arg: "REGION", Env: "AWS_REGION", Def: "us-east-1", Runtimes: Serve, Usage: "AWS region for metering", ptr: &c.Region},
		{Name: "products-file", Arg: "PATH", Env: "MPSAAS_PRODUCTS_FILE", Runtimes: Both, Usage: "YAML file of per-product settings (listing type, name, sign-in URL, dimensions, webhook URL, resource id) for a deployment selling several products; see the README", ptr: &c.ProductsFile},
		{Name: "products", Arg: "YAML", Env: "MPSAAS_PRODUCTS", Runtimes: Both, Usage: "the products file's content itself (the SAM template's ProductsConfig parameter); not with MPSAAS_PRODUCTS_FILE", ptr: &c.ProductsText},
		{Name: "admin-password-hash", Arg: "HASH", Env: "MPSAAS_ADMIN_PASSWORD_HASH", Runtimes: Both, Usage: "turns the seller console at /admin on: the hash of its password, made by `mpsaas admin-password` (off when unset: /admin answers 404)", Secret: true, ptr: &c.AdminPasswordHash},
		{Name: "admin-session-ttl", Arg: "DURATION", Env: "MPSAAS_ADMIN_SESSION_TTL", Def: "12h", Runtimes: Both, Usage: "how long a console sign-in lasts (5m to 720h)", ptr: &c.AdminSessionTTLText},
		{Name: "usage-api-keys", Arg: "KEYS", Env: "MPSAAS_USAGE_API_KEYS", Runtimes: Both, Usage: "comma-separated API keys accepted by the usage API (Authorization: Bearer <key>); with the emulator a random key is made and printed", Secret: true, list: &c.UsageAPIKeys},
		{Name: "meter-interval", Arg: "DURATION", Env: "MPSAAS_METER_INTERVAL", Def: "1m", Runtimes: Serve, Usage: "how often serve seals closed hours and sends usage to AWS", ptr: &c.MeterIntervalText},
		{Name: "metrics-addr", Arg: "HOST:PORT", Env: "MPSAAS_METRICS_ADDR", Runtimes: Serve, Usage: "address to serve Prometheus metrics at /metrics on (off when unset; keep it private)", ptr: &c.MetricsAddr},
		{Name: "meter-grace", Arg: "DURATION", Env: "MPSAAS_METER_GRACE", Def: "5m", Runtimes: Both, Usage: "how long after an hour ends its usage is still collected before the hour is sealed and billed (1s to 4h); longer bills late usage in its own hour but delays every bill", ptr: &c.MeterGraceText},
		{Name: "revoke-on-cancel", Arg: "BOOL", Env: "MPSAAS_REVOKE_ON_CANCEL", Def: "false", Runtimes: Both, Usage: "revoke access as soon as a buyer cancels (true), instead of keeping it (pending-cancellation) until the one-hour final metering window ends", ptr: &c.RevokeOnCancelText},
		{Name: "dimensions", Arg: "NAMES", Env: "MPSAAS_DIMENSIONS", Runtimes: Both, Usage: "comma-separated dimensions of your product; usage for any other is refused with 400 (default: any)", ptr: &c.DimensionsText},
		{Name: "heartbeat-dimension", Arg: "NAME", Env: "MPSAAS_HEARTBEAT_DIMENSION", Runtimes: Both, Usage: "dimension of the zero-quantity record sent every hour for every subscribed buyer without usage (required by AWS for subscriptions)", ptr: &c.HeartbeatDimension},
		{Name: "meter-concurrency", Arg: "N", Env: "MPSAAS_METER_CONCURRENCY", Def: "4", Runtimes: Both, Usage: "BatchMeterUsage calls in flight at once", ptr: &c.MeterConcurrencyTxt},
		{Name: "sqs-queue-url", Arg: "URL", Env: "MPSAAS_SQS_QUEUE_URL", Runtimes: Serve, Usage: "SQS queue of AWS Marketplace notifications (subscribed to the Marketplace SNS topics, or an EventBridge rule target) to consume", ptr: &c.SQSQueueURL},
		{Name: "sqs-endpoint", Arg: "URL", Env: "MPSAAS_SQS_ENDPOINT", Runtimes: Serve, Usage: "override the SQS endpoint (e.g. goaws); overrides speak SQS's Query protocol", ptr: &c.SQSEndpoint},
		{Name: "access-topic-arn", Arg: "ARN", Env: "MPSAAS_ACCESS_TOPIC_ARN", Runtimes: Both, Usage: "SNS topic to publish every access change to", ptr: &c.AccessTopicArn},
		{Name: "sns-endpoint", Arg: "URL", Env: "MPSAAS_SNS_ENDPOINT", Runtimes: Both, Usage: "override the SNS endpoint (e.g. goaws)", ptr: &c.SNSEndpoint},
		{Name: "log-level", Arg: "LEVEL", Env: "MPSAAS_LOG_LEVEL", Def: "info", Runtimes: Both, Usage: "debug, info, warn or error", ptr: &c.LogLevel},
		{Name: "log-format", Arg: "FORMAT", Env: "MPSAAS_LOG_FORMAT", Def: "text", Runtimes: Serve, Usage: "text or json (the Lambda functions always log JSON)", ptr: &c.LogFormat},

		{Name: "function", Env: "MPSAAS_FUNCTION", Runtimes: Lambda, Usage: "the Lambda function's role: api, events, dispatch or meter", ptr: &c.Function},
		{Name: "dynamodb-endpoint", Env: "MPSAAS_DYNAMODB_ENDPOINT", Runtimes: Lambda, Usage: "override the DynamoDB endpoint (e.g. DynamoDB Local)", ptr: &c.DynamoDBEndpoint},
		{Name: "subscribers-table", Env: "MPSAAS_SUBSCRIBERS_TABLE", Def: "AWSMarketplaceSubscribers", Runtimes: Lambda, Usage: "DynamoDB table of subscribers (the sample stack's)", ptr: &c.SubscribersTable},
		{Name: "events-table", Env: "MPSAAS_EVENTS_TABLE", Def: "MpsaasEvents", Runtimes: Lambda, Usage: "DynamoDB table of subscription events", ptr: &c.EventsTable},
		{Name: "outbox-table", Env: "MPSAAS_OUTBOX_TABLE", Def: "MpsaasOutbox", Runtimes: Lambda, Usage: "DynamoDB table of queued access changes", ptr: &c.OutboxTable},
		{Name: "meter-table", Env: "MPSAAS_METER_TABLE", Def: "MpsaasMeterHours", Runtimes: Lambda, Usage: "DynamoDB table of metering: usage per buyer, dimension and hour, usage requests, BatchMeterUsage batches (docs/dynamodb.md)", ptr: &c.MeterTable},
		{Name: "retention", Env: "MPSAAS_RETENTION", Def: "30d", Runtimes: Lambda, Usage: "how long DynamoDB keeps finished items (usage request idempotency keys, delivered access changes, finished batches) before its time to live deletes them: a duration such as 30d or 720h, at least 2d; 0 keeps them", ptr: &c.RetentionText},
		{Name: "sample-metering-table", Env: "MPSAAS_SAMPLE_METERING_TABLE", Runtimes: Lambda, Usage: "the sample stack's metering table to take usage from (applications that write to it keep working)", ptr: &c.SampleMeteringTable},
	}
}

// LoadEnv reads every setting of rt from the environment (the Lambda
// functions: no flags).
func (c *Config) LoadEnv(rt Runtime, getenv func(string) string) {
	for _, s := range c.Settings() {
		if s.Runtimes&rt != 0 {
			s.set(valueOf(s, getenv))
		}
	}
}

func valueOf(s Setting, getenv func(string) string) string {
	if v := getenv(s.Env); v != "" {
		return v
	}
	return s.Def
}

func (s Setting) set(v string) {
	if s.list != nil {
		*s.list = SplitList(v)
	} else {
		*s.ptr = v
	}
}

// Load reads serve's settings from the environment, then flags from args.
// With flags named, only those settings are command-line flags (a
// subcommand shows only its own); every setting is still read from the
// environment.
func (c *Config) Load(fs *flag.FlagSet, args []string, getenv func(string) string, flags ...string) error {
	for _, s := range c.Settings() {
		if s.Runtimes&Serve == 0 {
			continue
		}
		v := valueOf(s, getenv)
		s.set(v)
		if len(flags) > 0 && !slices.Contains(flags, s.Name) {
			continue
		}
		usage := s.Usage + " [$" + s.Env + "]"
		if s.Arg != "" {
			usage = "`" + s.Arg + "`: " + usage // flag shows the quoted word as the value's name
		}
		switch {
		case s.list != nil:
			fs.Func(s.Name, usage, func(x string) error { *s.list = SplitList(x); return nil })
		case s.Secret:
			fs.StringVar(s.ptr, s.Name, "", usage) // never print a secret as a default
			*s.ptr = v
		default:
			fs.StringVar(s.ptr, s.Name, v, usage)
		}
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// SplitList splits a comma-separated setting, dropping blanks.
func SplitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func httpURL(v string) bool {
	u, err := url.Parse(v)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// Validate checks the settings rt reads and fills the parsed values.
// Errors name the environment variable to fix. For Lambda, the
// requirements depend on the function's role: only the api function needs
// the signing secret, only the dispatch function the webhook secret.
func (c *Config) Validate(rt Runtime) error {
	var errs []error
	if err := c.loadProducts(); err != nil {
		errs = append(errs, err)
	}
	switch c.Listing {
	case mpsaas.ListingSubscriptions, mpsaas.ListingContracts, mpsaas.ListingContractsWithSubscription:
	default:
		errs = append(errs, fmt.Errorf("MPSAAS_LISTING %q: want subscriptions, contracts or contracts_with_subscription", c.Listing))
	}
	if rt == Lambda && !slices.Contains(Roles, c.Function) {
		errs = append(errs, fmt.Errorf("MPSAAS_FUNCTION %q: want api, events, dispatch, meter or reconcile", c.Function))
	}
	switch {
	case rt == Lambda && c.Function == RoleAPI && len(c.Secret) < 32:
		errs = append(errs, errors.New("MPSAAS_SECRET: required for the api function, at least 32 characters"))
	case c.Secret != "" && len(c.Secret) < 32:
		errs = append(errs, errors.New("MPSAAS_SECRET: must be at least 32 characters"))
	}
	if c.WebhookURL != "" {
		if !httpURL(c.WebhookURL) {
			errs = append(errs, fmt.Errorf("MPSAAS_WEBHOOK_URL %q: want an http(s) URL", c.WebhookURL))
		}
	}
	if c.hasWebhooks() && c.Sends(rt) && len(c.WebhookSecret) < 16 {
		errs = append(errs, errors.New("MPSAAS_WEBHOOK_SECRET: required with MPSAAS_WEBHOOK_URL (or a product's webhook_url), at least 16 characters"))
	}
	if c.SMTPAddr != "" && c.SMTPFrom == "" {
		errs = append(errs, errors.New("MPSAAS_SMTP_FROM: required with MPSAAS_SMTP_ADDR"))
	}
	if c.SMTPAddr != "" && c.SESFrom != "" {
		errs = append(errs, errors.New("MPSAAS_SES_FROM and MPSAAS_SMTP_ADDR: set one way of sending email, not both"))
	}
	if c.AccessTopicArn != "" && !strings.HasPrefix(c.AccessTopicArn, "arn:") {
		errs = append(errs, fmt.Errorf("MPSAAS_ACCESS_TOPIC_ARN %q: want an SNS topic ARN", c.AccessTopicArn))
	}
	for name, v := range map[string]string{"MPSAAS_METERING_ENDPOINT": c.MeteringEndpoint, "MPSAAS_ENTITLEMENT_ENDPOINT": c.EntitlementEndpoint, "MPSAAS_AGREEMENT_ENDPOINT": c.AgreementEndpoint,
		"MPSAAS_SNS_ENDPOINT": c.SNSEndpoint, "MPSAAS_SES_ENDPOINT": c.SESEndpoint, "MPSAAS_DYNAMODB_ENDPOINT": c.DynamoDBEndpoint} {
		if v != "" && !httpURL(v) {
			errs = append(errs, fmt.Errorf("%s %q: want an http(s) URL", name, v))
		}
	}
	if c.SignupURL != "" && !httpURL(c.SignupURL) {
		errs = append(errs, fmt.Errorf("MPSAAS_SIGNUP_URL %q: want an http(s) URL", c.SignupURL))
	}
	c.ProductResources = map[string]string{}
	for _, pair := range strings.Split(c.ProductResourcesText, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		code, id, ok := strings.Cut(pair, "=")
		switch {
		case !ok || code == "" || id == "":
			errs = append(errs, fmt.Errorf("MPSAAS_PRODUCT_RESOURCES %q: want CODE=RESOURCE_ID pairs separated by commas, such as abc123=prod-xyz789", c.ProductResourcesText))
		case !slices.Contains(c.ProductCodes, code):
			errs = append(errs, fmt.Errorf("MPSAAS_PRODUCT_RESOURCES: %s is not one of MPSAAS_PRODUCT_CODES %v", code, c.ProductCodes))
		default:
			c.ProductResources[code] = id
		}
	}
	// The products file's resource ids, where MPSAAS_PRODUCT_RESOURCES
	// does not name one.
	for code, p := range c.Products {
		if _, set := c.ProductResources[code]; !set && p.Resource != "" {
			c.ProductResources[code] = p.Resource
		}
	}
	if c.AdminPasswordHash != "" {
		if err := admin.ParseHash(c.AdminPasswordHash); err != nil {
			errs = append(errs, fmt.Errorf("MPSAAS_ADMIN_PASSWORD_HASH: %w", err))
		}
	}
	if d, err := time.ParseDuration(c.AdminSessionTTLText); err != nil || d < 5*time.Minute || d > 720*time.Hour {
		errs = append(errs, fmt.Errorf("MPSAAS_ADMIN_SESSION_TTL %q: want a duration from 5m to 720h, such as 12h", c.AdminSessionTTLText))
	} else {
		c.AdminSessionTTL = d
	}
	if c.Reconcile != "apply" && c.Reconcile != "report" {
		errs = append(errs, fmt.Errorf("MPSAAS_RECONCILE %q: want apply or report", c.Reconcile))
	}
	if rt == Serve {
		if d, err := time.ParseDuration(c.ReconcileIntervalText); err != nil || (d != 0 && d < time.Minute) {
			errs = append(errs, fmt.Errorf("MPSAAS_RECONCILE_INTERVAL %q: want 0 (never) or a duration of at least 1m, such as 24h", c.ReconcileIntervalText))
		} else {
			c.ReconcileInterval = d
		}
	}
	if d, err := time.ParseDuration(c.ClaimTTLText); err != nil || d < time.Minute || d > 24*time.Hour {
		errs = append(errs, fmt.Errorf("MPSAAS_CLAIM_TTL %q: want a duration from 1m to 24h, such as 10m", c.ClaimTTLText))
	} else {
		c.ClaimTTL = d
	}
	var err error
	if c.WebPages, err = strconv.ParseBool(c.WebPagesText); err != nil {
		errs = append(errs, fmt.Errorf("MPSAAS_WEB_PAGES %q: want true or false", c.WebPagesText))
	}
	if n, err := strconv.Atoi(c.MeterConcurrencyTxt); err != nil || n < 1 || n > 64 {
		errs = append(errs, fmt.Errorf("MPSAAS_METER_CONCURRENCY %q: want 1 to 64", c.MeterConcurrencyTxt))
	} else {
		c.MeterConcurrency = n
	}
	if c.Dimensions, err = metering.ParseDimensions(c.DimensionsText); err != nil {
		errs = append(errs, err)
	}
	if c.RevokeOnCancel, err = subscription.ParseRevokeOnCancel(c.RevokeOnCancelText); err != nil {
		errs = append(errs, err)
	}
	if c.MeterGrace, err = metering.ParseSealGrace(c.MeterGraceText); err != nil {
		errs = append(errs, err)
	}
	for _, k := range c.UsageAPIKeys {
		if len(k) < 16 {
			errs = append(errs, errors.New("MPSAAS_USAGE_API_KEYS: each key must be at least 16 characters"))
			break
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("MPSAAS_LOG_LEVEL %q: want debug, info, warn or error", c.LogLevel))
	}
	if rt&Lambda != 0 {
		if c.Retention, err = ParseRetention(c.RetentionText); err != nil {
			errs = append(errs, err)
		}
	}
	if rt&Serve != 0 {
		errs = append(errs, c.validateServe()...)
	}
	return errors.Join(errs...)
}

// ParseRetention reads MPSAAS_RETENTION: a Go duration or a number of
// days ("30d"), at least two days (a client may retry a usage request
// until its idempotency key expires), or "0" to keep everything.
func ParseRetention(v string) (time.Duration, error) {
	if v == "0" || v == "0d" {
		return 0, nil
	}
	var d time.Duration
	var err error
	if days, ok := strings.CutSuffix(v, "d"); ok {
		var n int
		n, err = strconv.Atoi(days)
		d = time.Duration(n) * 24 * time.Hour
	} else {
		d, err = time.ParseDuration(v)
	}
	if err != nil || d < 48*time.Hour || d > 10*365*24*time.Hour {
		return 0, fmt.Errorf("MPSAAS_RETENTION %q: want a duration from 2d to 3650d (such as 30d or 720h), or 0 to keep everything", v)
	}
	return d, nil
}

// Sends reports whether this process delivers access changes (and so
// needs the channels' secrets): serve, and the dispatch function.
func (c *Config) Sends(rt Runtime) bool {
	return rt&Serve != 0 || c.Function == RoleDispatch
}

func (c *Config) validateServe() []error {
	var errs []error
	switch c.Emulator {
	case "auto", "on", "off":
	default:
		errs = append(errs, fmt.Errorf("MPSAAS_EMULATOR %q: want auto, on or off", c.Emulator))
	}
	if c.PublicURL != "" {
		if !httpURL(c.PublicURL) {
			errs = append(errs, fmt.Errorf("MPSAAS_PUBLIC_URL %q: want an http(s) URL", c.PublicURL))
		}
		c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	}
	if d, err := time.ParseDuration(c.MeterIntervalText); err != nil || d < time.Second {
		errs = append(errs, fmt.Errorf("MPSAAS_METER_INTERVAL %q: want a duration of at least 1s, such as 1m", c.MeterIntervalText))
	} else {
		c.MeterInterval = d
	}
	if c.EmulatorURL != "" {
		if !httpURL(c.EmulatorURL) {
			errs = append(errs, fmt.Errorf("MPSAAS_EMULATOR_URL %q: want the emulator's URL, such as http://localhost:8081", c.EmulatorURL))
		}
		c.EmulatorURL = strings.TrimRight(c.EmulatorURL, "/")
		if c.MeteringEndpoint == "" {
			c.MeteringEndpoint = c.EmulatorURL
		}
		if c.EntitlementEndpoint == "" {
			c.EntitlementEndpoint = c.EmulatorURL
		}
		if c.AgreementEndpoint == "" {
			c.AgreementEndpoint = c.EmulatorURL
		}
	}
	if c.SQSQueueURL != "" && !httpURL(c.SQSQueueURL) {
		errs = append(errs, fmt.Errorf("MPSAAS_SQS_QUEUE_URL %q: want the queue's URL, such as https://sqs.us-east-1.amazonaws.com/123456789012/mpsaas", c.SQSQueueURL))
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("MPSAAS_LOG_FORMAT %q: want text or json", c.LogFormat))
	}
	return errs
}

// CredentialProbeTimeout bounds how long "auto" asks the SDK's credential
// chain (the last link, EC2 instance metadata, can take that long to fail
// off EC2; AWS_EC2_METADATA_DISABLED=true skips it).
const CredentialProbeTimeout = 3 * time.Second

// UseEmulator decides whether serve runs the embedded emulator. "auto"
// runs it only when nothing points at AWS: no endpoint override, and the
// AWS SDK's own default credential chain (environment, ~/.aws files
// including the [default] profile, SSO, web identity, ECS and EC2 instance
// roles) yields no credentials. Real usage must never be billed to an
// in-memory emulator.
func (c *Config) UseEmulator(ctx context.Context, getenv func(string) string) bool {
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
	found, _ := AWSCredentialsFound(ctx, c.Region)
	return !found
}

// AWSCredentialsFound asks the SDK's default credential chain for
// credentials, within CredentialProbeTimeout; it returns their source.
func AWSCredentialsFound(ctx context.Context, region string) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, CredentialProbeTimeout)
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

// Dump writes the settings rt reads, secrets redacted.
func (c *Config) Dump(w io.Writer, rt Runtime) {
	var lines []string
	for _, s := range c.Settings() {
		if s.Runtimes&rt == 0 {
			continue
		}
		v := ""
		if s.list != nil {
			v = strings.Join(*s.list, ",")
		} else {
			v = *s.ptr
		}
		if s.Secret && v != "" {
			v = "<redacted>"
		}
		lines = append(lines, fmt.Sprintf("%s=%s", s.Env, v))
	}
	sort.Strings(lines)
	fmt.Fprintln(w, strings.Join(lines, "\n"))
}

// placeholderPrefix is the "ARG: " a setting's usage starts with so that
// flag names the value (see Load); PrintFlags drops it from the text.
var placeholderPrefix = regexp.MustCompile(`(\n\s*\t)[A-Z][A-Z:_]*: `)

// PrintFlags prints fs's flags like PrintDefaults, placeholders named
// ("-addr HOST:PORT") and not repeated in the description.
func PrintFlags(fs *flag.FlagSet) {
	var b strings.Builder
	out := fs.Output()
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(out)
	fmt.Fprint(out, placeholderPrefix.ReplaceAllString(b.String(), "$1"))
}

// loadProducts reads the products file (or MPSAAS_PRODUCTS) and adds its
// codes to ProductCodes (its resource ids join ProductResources in
// Validate).
func (c *Config) loadProducts() error {
	c.Products = nil
	var name string
	var b []byte
	switch {
	case c.ProductsFile != "" && c.ProductsText != "":
		return errors.New("MPSAAS_PRODUCTS_FILE and MPSAAS_PRODUCTS: set one, not both")
	case c.ProductsFile != "":
		f, err := os.Open(c.ProductsFile)
		if err != nil {
			return fmt.Errorf("MPSAAS_PRODUCTS_FILE: %w", err)
		}
		defer f.Close()
		if b, err = io.ReadAll(io.LimitReader(f, maxProductsFile+1)); err != nil {
			return fmt.Errorf("MPSAAS_PRODUCTS_FILE: %w", err)
		}
		name = c.ProductsFile
	case strings.TrimSpace(c.ProductsText) != "":
		name, b = "MPSAAS_PRODUCTS", []byte(c.ProductsText)
	default:
		return nil
	}
	products, err := ParseProducts(name, b)
	if err != nil {
		return err
	}
	c.Products = map[string]mpsaas.Product{}
	for _, p := range products {
		c.Products[p.Code] = p
		if !slices.Contains(c.ProductCodes, p.Code) {
			c.ProductCodes = append(c.ProductCodes, p.Code)
		}
	}
	return nil
}

// hasWebhooks reports whether access changes go to a webhook: the
// deployment's, or one product's.
func (c *Config) hasWebhooks() bool {
	if c.WebhookURL != "" {
		return true
	}
	for _, p := range c.Products {
		if p.WebhookURL != "" {
			return true
		}
	}
	return false
}

// productWebhooks maps product codes to their own webhook URLs.
func (c *Config) productWebhooks() map[string]string {
	out := map[string]string{}
	for code, p := range c.Products {
		if p.WebhookURL != "" {
			out[code] = p.WebhookURL
		}
	}
	return out
}

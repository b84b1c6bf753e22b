// Command lambda is the AWS Lambda entry point of mpsaas (runtime
// provided.al2023, handler bootstrap). One binary serves every function;
// MPSAAS_FUNCTION picks the role:
//
//	api       HTTP API: fulfillment URL, registration page and API, status page
//	events    SQS batches of Marketplace SNS messages, and EventBridge agreement/license events
//	dispatch  scheduled: deliver queued access changes (webhook, SNS topic)
//	meter     scheduled: seal closed hours and send usage with BatchMeterUsage
//
// Each is a thin adapter (package awslambda) over the services `mpsaas serve`
// uses; storage is DynamoDB.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/sesv2"
	awssns "github.com/aws/aws-sdk-go-v2/service/sns"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/awslambda"
	"github.com/mpsaas/mpsaas/dynamodb"
	"github.com/mpsaas/mpsaas/marketplace"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/notify"
	mpsaassns "github.com/mpsaas/mpsaas/sns"
	"github.com/mpsaas/mpsaas/subscription"
	"github.com/mpsaas/mpsaas/web"
	"github.com/mpsaas/mpsaas/webhook"
	"github.com/mpsaas/mpsaas/worker"
)

func main() {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	slog.SetDefault(logger)
	app, err := build(context.Background(), os.Getenv, logger)
	if err != nil {
		logger.Error("start", "err", err)
		os.Exit(1)
	}
	lambda.StartWithOptions(app.handler(), lambda.WithEnableSIGTERM())
}

// App holds one function's object graph.
type App struct {
	role       string
	svc        *subscription.Service
	web        *web.Server
	dispatcher *worker.Dispatcher
	meter      *metering.Service
	sample     *dynamodb.SampleMeteringTable
	logger     *slog.Logger
	// metrics are CloudWatch metrics written to the log stream (EMF).
	metrics *awslambda.Metrics
}

// Environment variables the functions read (the SAM template sets them).
var envVars = []string{
	"MPSAAS_FUNCTION", "MPSAAS_LISTING", "MPSAAS_PRODUCT_CODES", "MPSAAS_PRODUCT_NAME", "MPSAAS_SECRET",
	"MPSAAS_SIGN_IN_URL", "MPSAAS_SUPPORT_EMAIL", "MPSAAS_CORS_ORIGINS", "MPSAAS_WEB_PAGES",
	"MPSAAS_SUBSCRIBERS_TABLE", "MPSAAS_EVENTS_TABLE", "MPSAAS_OUTBOX_TABLE",
	"MPSAAS_WEBHOOK_URL", "MPSAAS_WEBHOOK_SECRET", "MPSAAS_ACCESS_TOPIC_ARN",
	"MPSAAS_DYNAMODB_ENDPOINT", "MPSAAS_METERING_ENDPOINT", "MPSAAS_ENTITLEMENT_ENDPOINT", "MPSAAS_SNS_ENDPOINT",
	"MPSAAS_USAGE_TABLE", "MPSAAS_USAGE_REQUESTS_TABLE", "MPSAAS_METER_RECORDS_TABLE", "MPSAAS_METER_BATCHES_TABLE",
	"MPSAAS_USAGE_API_KEYS", "MPSAAS_HEARTBEAT_DIMENSION", "MPSAAS_METER_GRACE", "MPSAAS_SES_FROM", "MPSAAS_ADMIN_EMAIL", "MPSAAS_SES_ENDPOINT",
	"MPSAAS_SAMPLE_METERING_TABLE", "MPSAAS_REVOKE_ON_CANCEL", "MPSAAS_DIMENSIONS",
}

// awsActions are the AWS API actions each role's code calls; the template's
// IAM policies must allow them (checked by TestTemplate, and recorded from
// the real calls by TestBuyerJourneyThroughLambdaHandlers).
var awsActions = map[string][]string{
	"api": {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:Scan", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem",
		"aws-marketplace:ResolveCustomer", "aws-marketplace:GetEntitlements"},
	"meter": {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:Scan", "dynamodb:BatchGetItem", "aws-marketplace:BatchMeterUsage",
		"aws-marketplace:GetEntitlements"},
	"events":   {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:Query", "aws-marketplace:GetEntitlements"},
	"dispatch": {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:Query", "sns:Publish", "ses:SendEmail"},
}

// requiredEnv are the variables the template must set for each role.
var requiredEnv = map[string][]string{
	"api":      {"MPSAAS_FUNCTION", "MPSAAS_SECRET", "MPSAAS_LISTING", "MPSAAS_PRODUCT_CODES", "MPSAAS_SUBSCRIBERS_TABLE", "MPSAAS_EVENTS_TABLE", "MPSAAS_OUTBOX_TABLE"},
	"events":   {"MPSAAS_FUNCTION", "MPSAAS_LISTING", "MPSAAS_PRODUCT_CODES", "MPSAAS_SUBSCRIBERS_TABLE", "MPSAAS_EVENTS_TABLE", "MPSAAS_OUTBOX_TABLE"},
	"dispatch": {"MPSAAS_FUNCTION", "MPSAAS_SUBSCRIBERS_TABLE", "MPSAAS_OUTBOX_TABLE", "MPSAAS_ACCESS_TOPIC_ARN"},
	"meter": {"MPSAAS_FUNCTION", "MPSAAS_LISTING", "MPSAAS_SUBSCRIBERS_TABLE", "MPSAAS_USAGE_TABLE", "MPSAAS_USAGE_REQUESTS_TABLE",
		"MPSAAS_METER_RECORDS_TABLE", "MPSAAS_METER_BATCHES_TABLE"},
}

func build(ctx context.Context, getenv func(string) string, logger *slog.Logger, awsOpts ...func(*awsconfig.LoadOptions) error) (*App, error) {
	role := getenv("MPSAAS_FUNCTION")
	if !slices.Contains([]string{"api", "events", "dispatch", "meter"}, role) {
		return nil, fmt.Errorf("MPSAAS_FUNCTION %q: want api, events, dispatch or meter", role)
	}
	listing := getenv("MPSAAS_LISTING")
	if listing == "" {
		listing = mpsaas.ListingContractsWithSubscription
	}
	if listing != mpsaas.ListingSubscriptions && !mpsaas.IsContract(listing) {
		return nil, fmt.Errorf("MPSAAS_LISTING %q: want subscriptions, contracts or contracts_with_subscription", listing)
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, awsOpts...)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	client := ddb.NewFromConfig(awsCfg, func(o *ddb.Options) {
		if e := getenv("MPSAAS_DYNAMODB_ENDPOINT"); e != "" {
			o.BaseEndpoint = aws.String(e)
		}
	})
	tables := dynamodb.DefaultTables()
	for _, t := range []struct {
		env string
		dst *string
	}{{"MPSAAS_SUBSCRIBERS_TABLE", &tables.Subscribers}, {"MPSAAS_EVENTS_TABLE", &tables.Events}, {"MPSAAS_OUTBOX_TABLE", &tables.Outbox},
		{"MPSAAS_USAGE_TABLE", &tables.Usage}, {"MPSAAS_USAGE_REQUESTS_TABLE", &tables.UsageRequests},
		{"MPSAAS_METER_RECORDS_TABLE", &tables.MeterRecords}, {"MPSAAS_METER_BATCHES_TABLE", &tables.MeterBatches}} {
		if v := getenv(t.env); v != "" {
			*t.dst = v
		}
	}
	store := dynamodb.New(client, tables)
	// Every function that decides access queues changes on the configured
	// channels; only the dispatch function sends (and needs the secrets).
	channels := []string{}
	senders := map[string]worker.Sender{}
	if u := getenv("MPSAAS_WEBHOOK_URL"); u != "" {
		channels = append(channels, mpsaas.ChannelWebhook)
		if role == "dispatch" {
			secret := getenv("MPSAAS_WEBHOOK_SECRET")
			if len(secret) < 16 {
				return nil, errors.New("MPSAAS_WEBHOOK_SECRET: required with MPSAAS_WEBHOOK_URL, at least 16 characters")
			}
			senders[mpsaas.ChannelWebhook] = &webhook.Sender{URL: u, Secret: []byte(secret)}
		}
	}
	if arn := getenv("MPSAAS_ACCESS_TOPIC_ARN"); arn != "" {
		channels = append(channels, mpsaas.ChannelSNS)
		senders[mpsaas.ChannelSNS] = &mpsaassns.Sender{TopicArn: arn, Client: awssns.NewFromConfig(awsCfg, func(o *awssns.Options) {
			if e := getenv("MPSAAS_SNS_ENDPOINT"); e != "" {
				o.BaseEndpoint = aws.String(e)
			}
		})}
	}
	if from := getenv("MPSAAS_SES_FROM"); from != "" {
		channels = append(channels, mpsaas.ChannelNotify)
		senders[mpsaas.ChannelNotify] = &notify.SESSender{From: from, AdminEmail: getenv("MPSAAS_ADMIN_EMAIL"), ProductName: getenv("MPSAAS_PRODUCT_NAME"),
			Client: sesv2.NewFromConfig(awsCfg, func(o *sesv2.Options) {
				if e := getenv("MPSAAS_SES_ENDPOINT"); e != "" {
					o.BaseEndpoint = aws.String(e)
				}
			})}
	}
	codes := list(getenv("MPSAAS_PRODUCT_CODES"))
	app := &App{role: role, logger: logger,
		metrics: &awslambda.Metrics{W: os.Stdout, Namespace: "mpsaas", Dimensions: map[string]string{"Function": role}}}
	mp := marketplace.New(awsCfg, marketplace.Options{MeteringEndpoint: getenv("MPSAAS_METERING_ENDPOINT"), EntitlementEndpoint: getenv("MPSAAS_ENTITLEMENT_ENDPOINT")})
	if t := getenv("MPSAAS_SAMPLE_METERING_TABLE"); t != "" {
		app.sample = &dynamodb.SampleMeteringTable{Client: client, Table: t}
	}
	grace, err := metering.ParseSealGrace(getenv("MPSAAS_METER_GRACE"))
	if err != nil {
		return nil, err
	}
	revokeOnCancel, err := subscription.ParseRevokeOnCancel(getenv("MPSAAS_REVOKE_ON_CANCEL"))
	if err != nil {
		return nil, err
	}
	dimensions, err := metering.ParseDimensions(getenv("MPSAAS_DIMENSIONS"))
	if err != nil {
		return nil, err
	}
	app.meter = &metering.Service{Store: store, Subscribers: store, Meterer: mp, Logger: logger, Listing: listing,
		HeartbeatDimension: getenv("MPSAAS_HEARTBEAT_DIMENSION"), SealGrace: grace, Dimensions: dimensions}
	app.svc = &subscription.Service{
		Store: store, Logger: logger, Listing: listing, ProductCodes: codes, Channels: channels,
		Marketplace: mp, RevokeOnCancel: revokeOnCancel,
	}
	switch role {
	case "api":
		secret := getenv("MPSAAS_SECRET")
		if len(secret) < 32 {
			return nil, errors.New("MPSAAS_SECRET: required for the api function, at least 32 characters")
		}
		cors := list(getenv("MPSAAS_CORS_ORIGINS"))
		app.web = web.New(web.Config{Secret: []byte(secret), ProductName: getenv("MPSAAS_PRODUCT_NAME"), SignInURL: getenv("MPSAAS_SIGN_IN_URL"),
			SupportEmail: getenv("MPSAAS_SUPPORT_EMAIL"), CORSOrigins: cors, Logger: logger, EmailsBuyers: getenv("MPSAAS_SES_FROM") != "",
			APIOnly: getenv("MPSAAS_WEB_PAGES") == "false"}, app.svc)
		keys := list(getenv("MPSAAS_USAGE_API_KEYS"))
		(&web.UsageAPI{Keys: keys, Metering: app.meter, Ledger: store, Logger: logger}).Register(app.web)
	case "dispatch":
		app.dispatcher = &worker.Dispatcher{Outbox: store, Senders: senders, Logger: logger}
	}
	return app, nil
}

// list splits a comma-separated setting, dropping blanks.
func list(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// handler returns the Lambda handler of the app's role.
func (a *App) handler() any {
	switch a.role {
	case "api":
		return awslambda.HTTPHandler(a.web)
	case "events":
		return a.handleEvent
	case "meter":
		return awslambda.ScheduledHandler(a.meterRun)
	default:
		return awslambda.ScheduledHandler(a.dispatchAll)
	}
}

// handleEvent takes both event sources of the events function: an SQS batch
// (answered with partial batch failures) or an EventBridge event.
func (a *App) handleEvent(ctx context.Context, raw json.RawMessage) (any, error) {
	var probe struct {
		Records []json.RawMessage `json:"Records"`
	}
	if err := json.Unmarshal(raw, &probe); err == nil && probe.Records != nil {
		var ev events.SQSEvent
		if err := json.Unmarshal(raw, &ev); err != nil {
			return nil, fmt.Errorf("decode SQS event: %w", err)
		}
		return awslambda.SQSHandler(a.svc, a.logger)(ctx, ev)
	}
	return nil, awslambda.EventBridgeHandler(a.svc)(ctx, raw)
}

// meterRun seals closed hours and sends what is due, again while work is
// outstanding and the invocation has time left (retries wait for the next one).
func (a *App) meterRun(ctx context.Context) error {
	// Cancelling buyers whose final metering window has passed lose access
	// (no EventBridge event says so).
	if n, err := a.svc.EndFinalWindows(ctx); err != nil {
		a.logger.ErrorContext(ctx, "ending final metering windows", "err", err)
	} else if n > 0 {
		a.logger.InfoContext(ctx, "access revoked at the end of the final metering window", "buyers", n)
	}
	if err := a.importSample(ctx); err != nil {
		return err
	}
	for {
		res, err := a.meter.Run(ctx)
		if err != nil {
			return err
		}
		a.logger.InfoContext(ctx, "metering run", "sealed", res.Sealed, "calls", res.Calls, "billed", res.Billed,
			"rejected", res.Rejected, "flagged", res.Flagged, "retrying", res.Retrying, "violations", res.Violations)
		// Alarm on MeteringInvariantViolations > 0 (and on Flagged).
		if err := a.metrics.Put(map[string]int64{"MeteringInvariantViolations": int64(res.Violations), "MeterRecordsSealed": int64(res.Sealed),
			"MeterRecordsBilled": int64(res.Billed), "MeterRecordsRejected": int64(res.Rejected), "MeterRecordsFlagged": int64(res.Flagged),
			"BatchMeterUsageCalls": int64(res.Calls)}); err != nil {
			a.logger.WarnContext(ctx, "writing metrics", "err", err)
		}
		if res.Calls == 0 || res.Retrying > 0 {
			return nil
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < 10*time.Second {
			return nil
		}
	}
}

// importSample takes the usage existing applications write to the sample
// stack's metering table, keyed by its table key so that a repeat counts
// once, and marks each item the way the sample did (metering_pending
// removed, metering_failed, metering_response).
func (a *App) importSample(ctx context.Context) error {
	if a.sample == nil {
		return nil
	}
	items, err := a.sample.Pending(ctx)
	if err != nil {
		return err
	}
	for _, it := range items {
		reqs, err := web.ParseSampleStackItems(it.JSON)
		if err == nil {
			for _, req := range reqs {
				var rec mpsaas.UsageReceipt
				if rec, err = a.meter.Ingest(ctx, req); err != nil {
					break
				}
				resp, _ := json.Marshal(map[string]any{"mpsaas": "accepted", "idempotencyKey": rec.IdempotencyKey, "firstUsageId": rec.FirstID, "records": rec.Accepted})
				if err := a.sample.Done(ctx, it, false, string(resp)); err != nil {
					return err
				}
			}
		}
		if err != nil {
			if mpsaas.ErrorCode(err) != mpsaas.EINVALID {
				return err // transient: the next run tries again
			}
			a.logger.WarnContext(ctx, "sample metering record refused", "customerIdentifier", it.CustomerIdentifier, "create_timestamp", it.CreateTimestamp, "err", err)
			if err := a.sample.Done(ctx, it, true, mpsaas.ErrorMessage(err)); err != nil {
				return err
			}
		}
	}
	return nil
}

// dispatchAll delivers every due access change.
func (a *App) dispatchAll(ctx context.Context) error {
	for {
		n, err := a.dispatcher.RunOnce(ctx)
		if err != nil || n == 0 {
			return err
		}
	}
}

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
// uses, built from the same settings by the same code (internal/config);
// storage is DynamoDB.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/awslambda"
	"github.com/mpsaas/mpsaas/dynamodb"
	"github.com/mpsaas/mpsaas/internal/config"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/reconcile"
	"github.com/mpsaas/mpsaas/subscription"
	"github.com/mpsaas/mpsaas/web"
	"github.com/mpsaas/mpsaas/worker"
)

func main() {
	var level slog.LevelVar
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: &level}))
	slog.SetDefault(logger)
	app, err := build(context.Background(), os.Getenv, logger)
	if err != nil {
		logger.Error("start", "err", err)
		os.Exit(1)
	}
	_ = level.UnmarshalText([]byte(app.logLevel)) // MPSAAS_LOG_LEVEL, validated
	lambda.StartWithOptions(app.handler(), lambda.WithEnableSIGTERM())
}

// App holds one function's object graph.
type App struct {
	role       string
	svc        *subscription.Service
	web        *web.Server
	dispatcher *worker.Dispatcher
	meter      *metering.Service
	reconcile  *reconcile.Service
	// applyRepairs: MPSAAS_RECONCILE=apply.
	applyRepairs bool
	sample       *dynamodb.SampleMeteringTable
	logger       *slog.Logger
	logLevel     string
	// metrics are CloudWatch metrics written to the log stream (EMF).
	metrics *awslambda.Metrics
	// deliveries counts the dispatch function's delivery attempts of one
	// invocation, written as one EMF line at its end.
	deliveries struct {
		sync.Mutex
		n map[string]int64
	}
}

// awsActions are the AWS API actions each role's code calls; the template's
// IAM policies must allow them (checked by TestTemplate, and recorded from
// the real calls by TestBuyerJourneyThroughLambdaHandlers).
var awsActions = map[string][]string{
	// The seller console scans the subscribers table (buyer list).
	"api": {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:BatchGetItem", "dynamodb:Scan",
		"aws-marketplace:ResolveCustomer", "aws-marketplace:GetEntitlements", "aws-marketplace:SearchAgreements", "aws-marketplace:GetAgreementTerms"},
	"meter": {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:Scan", "dynamodb:BatchGetItem", "dynamodb:DeleteItem", "aws-marketplace:BatchMeterUsage",
		"aws-marketplace:GetEntitlements"},
	"events": {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:Query", "aws-marketplace:GetEntitlements"},
	"reconcile": {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:Scan", "aws-marketplace:SearchAgreements",
		"aws-marketplace:GetEntitlements"},
	"dispatch": {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:Query", "sns:Publish", "ses:SendEmail"},
}

// requiredEnv are the variables the template must set for each role.
var requiredEnv = map[string][]string{
	"api":       {"MPSAAS_FUNCTION", "MPSAAS_SECRET", "MPSAAS_LISTING", "MPSAAS_PRODUCT_CODES", "MPSAAS_SUBSCRIBERS_TABLE", "MPSAAS_EVENTS_TABLE", "MPSAAS_OUTBOX_TABLE", "MPSAAS_METER_TABLE"},
	"events":    {"MPSAAS_FUNCTION", "MPSAAS_LISTING", "MPSAAS_PRODUCT_CODES", "MPSAAS_SUBSCRIBERS_TABLE", "MPSAAS_EVENTS_TABLE", "MPSAAS_OUTBOX_TABLE"},
	"dispatch":  {"MPSAAS_FUNCTION", "MPSAAS_SUBSCRIBERS_TABLE", "MPSAAS_OUTBOX_TABLE", "MPSAAS_ACCESS_TOPIC_ARN"},
	"meter":     {"MPSAAS_FUNCTION", "MPSAAS_LISTING", "MPSAAS_SUBSCRIBERS_TABLE", "MPSAAS_METER_TABLE"},
	"reconcile": {"MPSAAS_FUNCTION", "MPSAAS_LISTING", "MPSAAS_PRODUCT_CODES", "MPSAAS_SUBSCRIBERS_TABLE", "MPSAAS_EVENTS_TABLE", "MPSAAS_OUTBOX_TABLE"},
}

func build(ctx context.Context, getenv func(string) string, logger *slog.Logger, awsOpts ...func(*awsconfig.LoadOptions) error) (*App, error) {
	var cfg config.Config
	cfg.LoadEnv(config.Lambda, getenv)
	if err := cfg.Validate(config.Lambda); err != nil {
		return nil, err
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, awsOpts...)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	client := ddb.NewFromConfig(awsCfg, func(o *ddb.Options) {
		if cfg.DynamoDBEndpoint != "" {
			o.BaseEndpoint = aws.String(cfg.DynamoDBEndpoint)
		}
	})
	tables := dynamodb.New(client, dynamodb.Tables{Subscribers: cfg.SubscribersTable, Events: cfg.EventsTable, Outbox: cfg.OutboxTable,
		MeterHours: cfg.MeterTable})
	tables.Retention = cfg.Retention
	store := dynamodb.NewHourStore(tables)
	role := cfg.Function
	app := &App{role: role, logger: logger, logLevel: cfg.LogLevel, applyRepairs: cfg.Reconcile == "apply",
		metrics: &awslambda.Metrics{W: os.Stdout, Namespace: "mpsaas", Dimensions: map[string]string{"Function": role}}}
	// Registrations and usage records as EMF lines (the same counts serve
	// gives Prometheus).
	put := func(counts map[string]int64) {
		if err := app.metrics.Put(counts); err != nil {
			logger.Warn("writing metrics", "err", err)
		}
	}
	svc := cfg.Build(config.Deps{Runtime: config.Lambda, Store: store, AWS: awsCfg, ChannelAWS: awsCfg, Logger: logger, Web: role == config.RoleAPI,
		OnRegister: func(string) { put(map[string]int64{"Registrations": 1}) },
		OnIngest: func(stored, refused int) {
			put(map[string]int64{"UsageRecordsStored": int64(stored), "UsageRecordsRefused": int64(refused)})
		}})
	app.svc, app.meter, app.web, app.reconcile = svc.Subscriptions, svc.Metering, svc.Web, svc.Reconcile
	if cfg.SampleMeteringTable != "" {
		app.sample = &dynamodb.SampleMeteringTable{Client: client, Table: cfg.SampleMeteringTable}
	}
	if role == config.RoleDispatch {
		app.dispatcher = &worker.Dispatcher{Outbox: store, Senders: svc.Senders, Logger: logger,
			Observe: func(channel string, err error) {
				app.deliveries.Lock()
				defer app.deliveries.Unlock()
				if app.deliveries.n == nil {
					app.deliveries.n = map[string]int64{}
				}
				if err != nil {
					app.deliveries.n["AccessChangesFailed"]++
				} else {
					app.deliveries.n["AccessChangesDelivered"]++
				}
			}}
	}
	return app, nil
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
	case "reconcile":
		return awslambda.ScheduledHandler(a.reconcileRun)
	default:
		return awslambda.ScheduledHandler(a.dispatchAll)
	}
}

// reconcileRun compares the buyers with AWS's agreements and, unless
// MPSAAS_RECONCILE=report, records the events lost notifications would
// have carried; the drift goes to the log and to the ReconcileDrift metric.
func (a *App) reconcileRun(ctx context.Context) error {
	rep, err := a.reconcile.Run(ctx, a.applyRepairs)
	if err != nil {
		return err
	}
	rep.Log(ctx, a.logger)
	return a.metrics.Put(map[string]int64{"ReconcileDrift": int64(len(rep.Drift))})
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
	defer func() {
		// How far behind metering is, after the runs (alarm: two hours).
		if lag, ok, err := a.meter.Lag(context.WithoutCancel(ctx)); err != nil {
			a.logger.WarnContext(ctx, "metering lag", "err", err)
		} else if ok {
			if err := a.metrics.Put(map[string]int64{"MeteringLagSeconds": int64(lag.Seconds())}); err != nil {
				a.logger.WarnContext(ctx, "writing metrics", "err", err)
			}
		}
	}()
	return a.meter.RunWhileTime(ctx, 10*time.Second, func(res metering.RunResult) {
		a.logger.InfoContext(ctx, "metering run", "sealed", res.Sealed, "calls", res.Calls, "billed", res.Billed,
			"rejected", res.Rejected, "flagged", res.Flagged, "retrying", res.Retrying, "violations", res.Violations)
		// Alarm on MeteringInvariantViolations > 0 (and on Flagged).
		if err := a.metrics.Put(map[string]int64{"MeteringInvariantViolations": int64(res.Violations), "MeterRecordsSealed": int64(res.Sealed),
			"MeterRecordsBilled": int64(res.Billed), "MeterRecordsRejected": int64(res.Rejected), "MeterRecordsFlagged": int64(res.Flagged),
			"BatchMeterUsageCalls": int64(res.Calls)}); err != nil {
			a.logger.WarnContext(ctx, "writing metrics", "err", err)
		}
	})
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
	defer func() {
		a.deliveries.Lock()
		counts := a.deliveries.n
		a.deliveries.n = nil
		a.deliveries.Unlock()
		if err := a.metrics.Put(counts); err != nil {
			a.logger.WarnContext(ctx, "writing metrics", "err", err)
		}
	}()
	for {
		n, err := a.dispatcher.RunOnce(ctx)
		if err != nil || n == 0 {
			return err
		}
	}
}

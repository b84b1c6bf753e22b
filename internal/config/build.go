package config

import (
	"context"
	"log/slog"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sesv2"
	awssns "github.com/aws/aws-sdk-go-v2/service/sns"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/admin"
	"github.com/mpsaas/mpsaas/marketplace"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/notify"
	"github.com/mpsaas/mpsaas/reconcile"
	mpsaassns "github.com/mpsaas/mpsaas/sns"
	"github.com/mpsaas/mpsaas/subscription"
	"github.com/mpsaas/mpsaas/web"
	"github.com/mpsaas/mpsaas/webhook"
	"github.com/mpsaas/mpsaas/worker"
)

// Store is what the services need of a store (SQLite or DynamoDB).
type Store interface {
	mpsaas.SubscriberStore
	mpsaas.Outbox
	mpsaas.MeterStore
	mpsaas.ConsoleStore
	mpsaas.UsageHistory
}

// Deps are what the runtime provides around the services.
type Deps struct {
	Runtime Runtime
	Store   Store
	// AWS is the configuration of the AWS Marketplace clients (with
	// Config.MeteringEndpoint and EntitlementEndpoint as overrides), and
	// ChannelAWS that of the SNS and SES clients that deliver access
	// changes (zero: AWS).
	AWS, ChannelAWS aws.Config
	Logger          *slog.Logger
	// Clock, when set, is the time the subscription and metering services
	// follow (the embedded emulator's clock); nil is the wall clock.
	Clock mpsaas.Clock
	// LogEmails sends emails to the log when neither SMTP nor SES is set
	// (serve, so that a local run shows them).
	LogEmails bool
	// Web builds the buyer pages and JSON APIs.
	Web bool
	// Emulator tells the pages that metering goes to an emulator.
	Emulator bool
	// Observe and Ready are web.Config's (metrics and /readyz of serve).
	Observe func(route string, status int, d time.Duration)
	Ready   func(ctx context.Context) error
	// OnRegister and OnIngest count registrations and usage records
	// (Prometheus in serve, CloudWatch EMF on Lambda).
	OnRegister func(productCode string)
	OnIngest   func(stored, refused int)
}

// Services are the configured services of one process.
type Services struct {
	Marketplace   *marketplace.Client
	Subscriptions *subscription.Service
	Metering      *metering.Service
	// Reconcile compares the buyers with AWS's agreements.
	Reconcile *reconcile.Service
	// Web is nil unless Deps.Web.
	Web *web.Server
	// Channels are the channels access changes are queued on: every
	// process that decides access queues on all of them.
	Channels []string
	// Senders deliver them, one per channel; nil in a process that does
	// not send (a Lambda function other than dispatch has no secrets).
	Senders map[string]worker.Sender
}

// Build turns a validated configuration into the services.
func (c *Config) Build(d Deps) *Services {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	logger := d.Logger
	s := &Services{Marketplace: marketplace.New(d.AWS, marketplace.Options{MeteringEndpoint: c.MeteringEndpoint, EntitlementEndpoint: c.EntitlementEndpoint,
		AgreementEndpoint: c.AgreementEndpoint})}
	s.Channels, s.Senders = c.channels(d)
	s.Subscriptions = &subscription.Service{
		Store: d.Store, Marketplace: s.Marketplace, Agreements: s.Marketplace, Logger: logger, Clock: d.Clock,
		Listing: c.Listing, Products: c.Products, ProductCodes: c.ProductCodes, Channels: s.Channels, RevokeOnCancel: c.RevokeOnCancel,
	}
	s.Subscriptions.OnRegister = d.OnRegister
	s.Metering = c.MeteringService(d.Store, d.Store, s.Marketplace, logger)
	s.Metering.Clock, s.Metering.OnIngest = d.Clock, d.OnIngest
	s.Reconcile = &reconcile.Service{Agreements: s.Marketplace, Store: d.Store, Events: s.Subscriptions, Products: c.Resources(), Clock: d.Clock,
		Logger: logger.With("component", "reconcile")}
	if d.Web {
		s.Web = web.New(web.Config{
			Secret: []byte(c.Secret), ProductName: c.ProductName, SignInURL: c.SignInURL, SupportEmail: c.SupportEmail,
			SignupURL: c.SignupURL, ClaimTTL: c.ClaimTTL, Observe: d.Observe, Ready: d.Ready, Products: c.Products,
			CORSOrigins: c.CORSOrigins, APIOnly: !c.WebPages, EmailsBuyers: c.emails(), Emulator: d.Emulator,
			Logger: logger,
		}, s.Subscriptions)
		(&web.UsageAPI{Keys: c.UsageAPIKeys, Metering: s.Metering, Ledger: d.Store, Subscribers: s.Metering, Claims: s.Web, Logger: logger}).Register(s.Web)
		if c.AdminPasswordHash != "" {
			// Validate checked the hash and the secret.
			console, err := admin.New(admin.Config{PasswordHash: c.AdminPasswordHash, Secret: []byte(c.Secret), SessionTTL: c.AdminSessionTTL,
				Channels: s.Channels, Products: c.ProductCodes, Logger: logger, Clock: d.Clock}, d.Store, s.Metering)
			if err != nil {
				panic(err)
			}
			console.Register(s.Web)
		}
	}
	return s
}

// MeteringService is the metering service on store, sending with m
// (nil: a service that only reads, verifies or replays).
func (c *Config) MeteringService(store mpsaas.MeterStore, subs metering.Subscribers, m mpsaas.Meterer, logger *slog.Logger) *metering.Service {
	return &metering.Service{
		Store: store, Subscribers: subs, Meterer: m, Logger: logger.With("component", "metering"),
		Listing: c.Listing, HeartbeatDimension: c.HeartbeatDimension, Concurrency: c.MeterConcurrency, SealGrace: c.MeterGrace,
		Dimensions: c.Dimensions, Products: c.Products,
	}
}

// Resources maps each product code to the resource id the Agreement API
// knows the product by: MPSAAS_PRODUCT_RESOURCES, or the code itself (as
// the emulator knows it).
func (c *Config) Resources() map[string]string {
	out := make(map[string]string, len(c.ProductCodes))
	for _, code := range c.ProductCodes {
		out[code] = code
		if id, ok := c.ProductResources[code]; ok {
			out[code] = id
		}
	}
	return out
}

// emails reports whether access-change emails reach buyers.
func (c *Config) emails() bool { return c.SMTPAddr != "" || c.SESFrom != "" }

// channels decides the channels from the settings alone, so that every
// process queues on what the sending process delivers, and builds the
// senders where this process sends.
func (c *Config) channels(d Deps) ([]string, map[string]worker.Sender) {
	var channels []string
	var senders map[string]worker.Sender
	sends := c.Sends(d.Runtime)
	if sends {
		senders = map[string]worker.Sender{}
	}
	if c.emails() || d.LogEmails {
		channels = append(channels, mpsaas.ChannelNotify)
		if sends {
			switch {
			case c.SMTPAddr != "":
				senders[mpsaas.ChannelNotify] = &notify.SMTPSender{Addr: c.SMTPAddr, Username: c.SMTPUsername, Password: c.SMTPPassword,
					From: c.SMTPFrom, AdminEmail: c.AdminEmail, ProductName: c.ProductName}
			case c.SESFrom != "":
				senders[mpsaas.ChannelNotify] = &notify.SESSender{From: c.SESFrom, AdminEmail: c.AdminEmail, ProductName: c.ProductName,
					Client: sesv2.NewFromConfig(d.ChannelAWS, func(o *sesv2.Options) {
						if c.SESEndpoint != "" {
							o.BaseEndpoint = aws.String(c.SESEndpoint)
						}
					})}
			default:
				senders[mpsaas.ChannelNotify] = notify.LogSender{Logger: d.Logger}
			}
		}
	}
	if c.hasWebhooks() {
		channels = append(channels, mpsaas.ChannelWebhook)
		if sends {
			senders[mpsaas.ChannelWebhook] = &webhook.Sender{URL: c.WebhookURL, ProductURLs: c.productWebhooks(), Secret: []byte(c.WebhookSecret)}
		}
	}
	if c.AccessTopicArn != "" {
		channels = append(channels, mpsaas.ChannelSNS)
		if sends {
			senders[mpsaas.ChannelSNS] = &mpsaassns.Sender{TopicArn: c.AccessTopicArn, Client: awssns.NewFromConfig(d.ChannelAWS, func(o *awssns.Options) {
				if c.SNSEndpoint != "" {
					o.BaseEndpoint = aws.String(c.SNSEndpoint)
				}
			})}
		}
	}
	return channels, senders
}

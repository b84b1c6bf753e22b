package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/internal/config"
	"github.com/mpsaas/mpsaas/marketplace"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/metrics"
	"github.com/mpsaas/mpsaas/reconcile"
	"github.com/mpsaas/mpsaas/sqlite"
	mpsaassqs "github.com/mpsaas/mpsaas/sqs"
	"github.com/mpsaas/mpsaas/subscription"
	"github.com/mpsaas/mpsaas/web"
	"github.com/mpsaas/mpsaas/worker"
)

// Demo products the embedded emulator starts with: one legacy listing
// (CustomerIdentifier + ProductCode) and one created after 2026-06-01
// (CustomerAWSAccountId + LicenseArn).
const (
	demoLegacyProduct  = "mpsaas-demo-legacy"
	demoLicenseProduct = "mpsaas-demo"
)

// App is a running `mpsaas serve`: the web server, the workers and,
// optionally, the embedded emulator.
type App struct {
	cfg Config
	log *slog.Logger
	db  *sqlite.DB
	em  *emulator.Server
	svc *subscription.Service
	// reconcile compares the buyers with AWS's agreements (every
	// MPSAAS_RECONCILE_INTERVAL).
	reconcile *reconcile.Service
	meter     *metering.Service
	web       *web.Server
	queue     *worker.QueueWorker
	disp      *worker.Dispatcher
	poller    *mpsaassqs.Poller
	webLn     net.Listener
	emLn      net.Listener
	// metrics are served on metricsLn (MPSAAS_METRICS_ADDR) when set.
	metrics   *metrics.Metrics
	metricsLn net.Listener
	// started and lastMeterOK (unix nanoseconds) tell /readyz whether
	// metering keeps up.
	started     time.Time
	lastMeterOK atomic.Int64
	wakeQ       chan struct{}
	wakeD       chan struct{}
	closed      bool

	generatedUsageKey bool
}

// openApp builds the object graph and binds the listeners; Run serves.
func openApp(ctx context.Context, cfg Config, getenv func(string) string, logger *slog.Logger) (_ *App, err error) {
	a := &App{cfg: cfg, log: logger, wakeQ: make(chan struct{}, 1), wakeD: make(chan struct{}, 1), started: time.Now()}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	if a.cfg.Secret == "" {
		a.cfg.Secret = randomSecret()
		logger.Warn("MPSAAS_SECRET is not set: using a random secret, so registration forms and status links stop working when mpsaas restarts")
	}
	if a.db, err = sqlite.Open(ctx, cfg.DB); err != nil {
		return nil, err
	}
	if a.webLn, err = net.Listen("tcp", cfg.Addr); err != nil {
		return nil, fmt.Errorf("listen on MPSAAS_ADDR %s: %w", cfg.Addr, err)
	}
	if a.cfg.PublicURL == "" {
		a.cfg.PublicURL = "http://" + displayAddr(cfg.Addr, a.webLn.Addr())
	}

	var awsCfg aws.Config
	mpOpts := marketplace.Options{MeteringEndpoint: cfg.MeteringEndpoint, EntitlementEndpoint: cfg.EntitlementEndpoint, AgreementEndpoint: cfg.AgreementEndpoint}
	target := targetAWS
	if cfg.UseEmulator(ctx, getenv) {
		target = targetEmulator
		if a.emLn, err = net.Listen("tcp", cfg.EmulatorAddr); err != nil {
			return nil, fmt.Errorf("listen on MPSAAS_EMULATOR_ADDR %s: %w", cfg.EmulatorAddr, err)
		}
		emURL := a.EmulatorURL()
		a.em = emulator.New(emulatorConfig(logger))
		if err := seedDemo(a.em, a.cfg.PublicURL+"/fulfillment", cfg.Listing, cfg.ProductName); err != nil {
			return nil, err
		}
		if err := seedProducts(a.em, a.cfg.PublicURL+"/fulfillment", cfg); err != nil {
			return nil, err
		}
		if len(a.cfg.ProductCodes) == 0 {
			a.cfg.ProductCodes = []string{demoLegacyProduct, demoLicenseProduct}
		}
		// Local mode: the emulator's notifications feed the durable local
		// queue, unless notifications come from an SQS queue.
		a.em.OnNotification(func(n emulator.Notification) {
			if cfg.SQSQueueURL != "" {
				return
			}
			if err := a.db.Enqueue(context.Background(), n.Body); err != nil {
				logger.Error("enqueue emulator notification", "err", err)
				return
			}
			wake(a.wakeQ)
		})
		awsCfg = aws.Config{Region: cfg.Region, Credentials: credentials.NewStaticCredentialsProvider("emulator", "emulator", "")}
		mpOpts = marketplace.Options{MeteringEndpoint: emURL, EntitlementEndpoint: emURL, AgreementEndpoint: emURL}
	} else {
		var local bool
		if awsCfg, local, err = marketplaceAWS(ctx, cfg, getenv, cfg.MeteringEndpoint, cfg.EntitlementEndpoint); err != nil {
			return nil, err
		}
		if local {
			target = targetEmulator
		}
	}

	if err := checkMeteringTarget(ctx, a.db, target); err != nil {
		return nil, err
	}
	if target == targetEmulator {
		logger.Warn("EMULATOR MODE: usage is metered to an AWS Marketplace emulator, not to AWS; nothing is billed to buyers")
	}

	var channelAWS aws.Config
	if cfg.AccessTopicArn != "" || cfg.SQSQueueURL != "" || cfg.SESFrom != "" {
		if channelAWS, err = awsServiceConfig(ctx, cfg, getenv); err != nil {
			return nil, err
		}
	}
	if cfg.SQSQueueURL != "" {
		a.poller = &mpsaassqs.Poller{QueueURL: cfg.SQSQueueURL, Logger: logger, Client: awssqs.NewFromConfig(channelAWS, func(o *awssqs.Options) {
			if cfg.SQSEndpoint != "" {
				o.BaseEndpoint = aws.String(cfg.SQSEndpoint)
				mpsaassqs.QueryProtocol(o)
			}
		})}
	}
	if len(a.cfg.UsageAPIKeys) == 0 && a.em != nil {
		a.cfg.UsageAPIKeys = []string{"local-" + randomSecret()[:32]}
		a.generatedUsageKey = true
	}
	built := a.cfg
	built.MeteringEndpoint, built.EntitlementEndpoint, built.AgreementEndpoint = mpOpts.MeteringEndpoint, mpOpts.EntitlementEndpoint, mpOpts.AgreementEndpoint
	a.metrics = metrics.New(a.db)
	if cfg.MetricsAddr != "" {
		if a.metricsLn, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return nil, fmt.Errorf("listen on MPSAAS_METRICS_ADDR %s: %w", cfg.MetricsAddr, err)
		}
	}
	deps := config.Deps{Runtime: config.Serve, Store: outboxWaker{a.db, a.wakeD}, AWS: awsCfg, ChannelAWS: channelAWS, Logger: logger,
		LogEmails: true, Web: true, Emulator: target == targetEmulator, Observe: a.metrics.ObserveRequest,
		OnRegister: a.metrics.ObserveRegistration, OnIngest: a.metrics.ObserveIngest,
		Ready: a.ready(mpOpts.MeteringEndpoint)}
	if a.em != nil {
		// The subscription lifecycle and metering follow the embedded
		// emulator's clock, so advancing it (buyer simulator, control API)
		// ends final metering windows and contracts as it would on AWS.
		deps.Clock = mpsaas.ClockFunc(a.em.Clock.Now)
	}
	svc := built.Build(deps)
	a.svc, a.meter, a.web, a.reconcile = svc.Subscriptions, svc.Metering, svc.Web, svc.Reconcile
	if a.poller != nil {
		a.poller.Handler = a.svc
	}
	a.queue = &worker.QueueWorker{Queue: a.db, Handler: a.svc, Logger: logger, Wake: a.wakeQ}
	a.disp = &worker.Dispatcher{Outbox: a.db, Senders: svc.Senders, Logger: logger, Wake: a.wakeD, Observe: a.metrics.ObserveDelivery}
	return a, nil
}

// httpTimeouts bound every connection of the servers mpsaas runs (the web
// server, the emulator): a client that sends its headers slowly
// (slowloris), or never reads, cannot hold a connection open. A variable
// so a test can shorten it.
var httpTimeouts = struct{ header, read, write, idle time.Duration }{10 * time.Second, 30 * time.Second, 60 * time.Second, 2 * time.Minute}

func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: httpTimeouts.header, ReadTimeout: httpTimeouts.read, WriteTimeout: httpTimeouts.write, IdleTimeout: httpTimeouts.idle}
}

// ready answers /readyz: the database takes a write, the AWS Marketplace
// metering endpoint (or the emulator) accepts a connection, and metering
// keeps up (no hour with pending usage ended more than two hours ago).
func (a *App) ready(meteringEndpoint string) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := a.db.Writable(ctx); err != nil {
			return err
		}
		host := fmt.Sprintf("metering.marketplace.%s.amazonaws.com:443", a.cfg.Region)
		if meteringEndpoint != "" {
			if u, err := url.Parse(meteringEndpoint); err == nil {
				host = u.Host
				if u.Port() == "" {
					host += map[bool]string{true: ":443", false: ":80"}[u.Scheme == "https"]
				}
			}
		}
		d := net.Dialer{Timeout: 3 * time.Second}
		conn, err := d.DialContext(ctx, "tcp", host)
		if err != nil {
			return fmt.Errorf("AWS Marketplace metering endpoint %s unreachable: %w", host, err)
		}
		conn.Close()
		// Metering keeps up when its loop completes runs: a failing or
		// stuck loop is not ready. (Old usage waiting to be sealed is not:
		// a backfill must not take the process out of service; the
		// mpsaas_unsealed_hour_age_seconds gauge shows it.)
		window := max(3*a.cfg.MeterInterval, 5*time.Minute)
		last := time.Unix(0, a.lastMeterOK.Load())
		if a.lastMeterOK.Load() == 0 {
			last = a.started
		}
		if since := time.Since(last); since > window {
			return fmt.Errorf("metering is behind: no metering run completed in %s", since.Round(time.Second))
		}
		return nil
	}
}

// awsServiceConfig is the AWS configuration for SQS, SNS and SES: the default
// chain, or static local credentials when only endpoint overrides are used.
func awsServiceConfig(ctx context.Context, cfg Config, getenv func(string) string) (aws.Config, error) {
	if (cfg.SQSEndpoint != "" || cfg.SNSEndpoint != "" || cfg.SESEndpoint != "") && getenv("AWS_ACCESS_KEY_ID") == "" && getenv("AWS_PROFILE") == "" {
		return aws.Config{Region: cfg.Region, Credentials: credentials.NewStaticCredentialsProvider("local", "local", "")}, nil
	}
	c, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(cfg.Region))
	if err != nil {
		return aws.Config{}, fmt.Errorf("load AWS configuration: %w", err)
	}
	return c, nil
}

func emulatorConfig(logger *slog.Logger) emulator.Config {
	c := emulator.DefaultConfig()
	c.Logger = logger.With("component", "emulator")
	return c
}

// outboxWaker wakes the dispatcher after every save, so access changes go
// out at once instead of at the next poll.
type outboxWaker struct {
	*sqlite.DB
	wake chan struct{}
}

func (o outboxWaker) SaveSubscriber(ctx context.Context, s *mpsaas.Subscriber, c *mpsaas.AccessChange, ch []string) error {
	err := o.DB.SaveSubscriber(ctx, s, c, ch)
	if err == nil && c != nil {
		wake(o.wake)
	}
	return err
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func seedDemo(em *emulator.Server, fulfillmentURL, listing, name string) error {
	dims := []emulator.Dimension{{Name: "users", Description: "Active users"}, {Name: "requests", Description: "API requests"}}
	for _, p := range []emulator.Product{
		{Code: demoLicenseProduct, Name: name, Type: listing, LicenseBased: true, Dimensions: dims, FulfillmentURL: fulfillmentURL},
		{Code: demoLegacyProduct, Name: name + " (legacy listing)", Type: listing, Dimensions: dims, FulfillmentURL: fulfillmentURL},
	} {
		if _, err := em.AddProduct(p); err != nil {
			return fmt.Errorf("seed emulator: %w", err)
		}
	}
	for _, b := range []emulator.Buyer{{AccountID: "123456789012", Name: "Example Buyer Inc."}, {AccountID: "210987654321", Name: "Another Customer LLC"}} {
		if _, err := em.AddBuyer(b); err != nil {
			return fmt.Errorf("seed emulator: %w", err)
		}
	}
	return nil
}

// seedProducts adds the products file's products to the emulator (those
// it does not have yet), so a seller can try each of them locally: its
// listing type, name and dimensions (the demo's when it names none).
func seedProducts(em *emulator.Server, fulfillmentURL string, cfg Config) error {
	have := map[string]bool{}
	for _, p := range em.Products() {
		have[p.Code] = true
	}
	codes := make([]string, 0, len(cfg.Products))
	for code := range cfg.Products {
		codes = append(codes, code)
	}
	sort.Strings(codes)
	for _, code := range codes {
		if have[code] {
			continue
		}
		p := cfg.Products[code]
		ep := emulator.Product{Code: code, Name: p.Name, Type: p.Listing, LicenseBased: true, FulfillmentURL: fulfillmentURL}
		if ep.Name == "" {
			ep.Name = cfg.ProductName
		}
		if ep.Type == "" {
			ep.Type = cfg.Listing
		}
		for _, d := range p.Dimensions {
			ep.Dimensions = append(ep.Dimensions, emulator.Dimension{Name: d})
		}
		if len(ep.Dimensions) == 0 {
			ep.Dimensions = []emulator.Dimension{{Name: "users", Description: "Active users"}, {Name: "requests", Description: "API requests"}}
		}
		if _, err := em.AddProduct(ep); err != nil {
			return fmt.Errorf("seed emulator with product %s: %w", code, err)
		}
	}
	return nil
}

// URL is where buyers reach the web server.
func (a *App) URL() string { return a.cfg.PublicURL }

// EmulatorURL is the embedded emulator's base URL ("" when not running).
func (a *App) EmulatorURL() string {
	if a.emLn == nil {
		return ""
	}
	return "http://" + displayAddr(a.cfg.EmulatorAddr, a.emLn.Addr())
}

// displayAddr keeps the host name the user configured (e.g. localhost) with
// the port actually bound (which differs when the port was 0).
func displayAddr(configured string, bound net.Addr) string {
	host, _, err := net.SplitHostPort(configured)
	_, port, err2 := net.SplitHostPort(bound.String())
	if err != nil || err2 != nil || host == "" || host == "0.0.0.0" || host == "::" {
		return bound.String()
	}
	return net.JoinHostPort(host, port)
}

// PrintBanner tells the user where to click.
func (a *App) PrintBanner(w io.Writer) {
	fmt.Fprintf(w, "mpsaas is running (database %s, listing %s).\n", a.cfg.DB, a.cfg.Listing)
	fmt.Fprintf(w, "  Fulfillment URL:   %s/fulfillment\n", a.URL())
	fmt.Fprintf(w, "  Registration API:  %s/subscriber\n", a.URL())
	if a.em != nil {
		fmt.Fprintf(w, "  Buyer simulator:   %s/emulator/   <- open this to subscribe as a buyer\n", a.EmulatorURL())
		fmt.Fprintf(w, "  Marketplace API:   %s (AWS Marketplace emulator)\n", a.EmulatorURL())
	} else if a.cfg.EmulatorURL != "" {
		fmt.Fprintf(w, "  Buyer simulator:   %s/emulator/\n", a.cfg.EmulatorURL)
		fmt.Fprintf(w, "  Marketplace API:   %s (standalone emulator)\n", a.cfg.EmulatorURL)
	} else {
		fmt.Fprintf(w, "  Marketplace API:   AWS (region %s)\n", a.cfg.Region)
	}
	if a.cfg.WebhookURL != "" {
		fmt.Fprintf(w, "  Webhooks to:       %s\n", a.cfg.WebhookURL)
	}
	if a.cfg.SQSQueueURL != "" {
		fmt.Fprintf(w, "  Notifications from: %s\n", a.cfg.SQSQueueURL)
	}
	if a.cfg.AccessTopicArn != "" {
		fmt.Fprintf(w, "  Access changes to: %s\n", a.cfg.AccessTopicArn)
	}
	fmt.Fprintf(w, "  Usage API:         %s/v1/usage (metering every %s)\n", a.URL(), a.cfg.MeterInterval)
	if a.generatedUsageKey {
		fmt.Fprintf(w, "  Usage API key:     %s   (local only; set MPSAAS_USAGE_API_KEYS)\n", a.cfg.UsageAPIKeys[0])
	}
	fmt.Fprintln(w, "Press Ctrl+C to stop.")
}

// Run serves until ctx is done, then shuts down in order: stop intake,
// drain the workers, close the store.
func (a *App) Run(ctx context.Context) error {
	webSrv := newHTTPServer(a.web)
	var emSrv *http.Server
	errc := make(chan error, 3)
	go func() { errc <- webSrv.Serve(a.webLn) }()
	if a.em != nil {
		emSrv = newHTTPServer(a.em.Handler())
		go func() { errc <- emSrv.Serve(a.emLn) }()
	}
	var metricsSrv *http.Server
	if a.metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", a.metrics.Handler())
		metricsSrv = newHTTPServer(mux)
		go func() { errc <- metricsSrv.Serve(a.metricsLn) }()
	}
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { a.queue.Run(workCtx) })
	wg.Go(func() { a.disp.Run(workCtx) })
	wg.Go(func() { a.meterLoop(workCtx) })
	if a.cfg.ReconcileInterval > 0 && len(a.cfg.ProductCodes) > 0 {
		wg.Go(func() { a.reconcileLoop(workCtx) })
	}
	if a.poller != nil {
		wg.Go(func() { a.poller.Run(workCtx) })
	}
	if a.cfg.EmulatorURL != "" {
		wg.Go(func() { a.followEmulator(workCtx) })
	}
	if a.em != nil {
		wg.Go(func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-workCtx.Done():
					return
				case <-t.C:
					a.em.RunDue()
				}
			}
		})
	}
	var runErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			runErr = fmt.Errorf("http server: %w", err)
		}
	}
	a.log.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_ = webSrv.Shutdown(shutCtx)
	if emSrv != nil {
		_ = emSrv.Shutdown(shutCtx)
	}
	if metricsSrv != nil {
		_ = metricsSrv.Shutdown(shutCtx)
	}
	stopWork()
	wg.Wait()
	a.close()
	return runErr
}

// followEmulator takes the notifications of a standalone `mpsaas emulator`
// from its control API onto the durable local queue. After a restart it
// reads them all again; events are stored once by id, so that is harmless.
func (a *App) followEmulator(ctx context.Context) {
	after := 0
	client := &http.Client{Timeout: 10 * time.Second}
	for {
		n, err := a.pullEmulator(ctx, client, &after)
		if err != nil && ctx.Err() == nil {
			a.log.Warn("reading emulator notifications", "url", a.cfg.EmulatorURL, "err", err)
		}
		if n > 0 {
			wake(a.wakeQ)
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (a *App) pullEmulator(ctx context.Context, client *http.Client, after *int) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/emulator/api/notifications?after=%d", a.cfg.EmulatorURL, *after), nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	var ns []emulator.Notification
	if err := json.NewDecoder(resp.Body).Decode(&ns); err != nil {
		return 0, err
	}
	for _, n := range ns {
		if err := a.db.Enqueue(ctx, n.Body); err != nil {
			return 0, err
		}
		*after = n.Seq
	}
	return len(ns), nil
}

// meterLoop runs metering at start and then every interval.
// reconcileFirst is how long after start serve first reconciles, and
// reconcileEvery the interval it uses for MPSAAS_RECONCILE_INTERVAL
// (variables for tests).
var (
	reconcileFirst = time.Minute
	reconcileEvery = func(setting time.Duration) time.Duration { return setting }
)

// reconcileLoop compares the buyers with AWS's agreements a minute after
// start, then every MPSAAS_RECONCILE_INTERVAL, recording the repairs unless
// MPSAAS_RECONCILE=report.
func (a *App) reconcileLoop(ctx context.Context) {
	wait := reconcileFirst
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = reconcileEvery(a.cfg.ReconcileInterval)
		rep, err := a.reconcile.Run(ctx, a.cfg.Reconcile == "apply")
		if ctx.Err() != nil {
			return
		}
		a.metrics.ObserveReconcile(len(rep.Drift), err)
		if err != nil {
			a.log.Error("reconciliation with AWS failed", "err", err)
			continue
		}
		rep.Log(ctx, a.log)
	}
}

func (a *App) meterLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.MeterInterval)
	defer t.Stop()
	for {
		res, err := a.meter.Run(ctx)
		if err == nil {
			a.lastMeterOK.Store(time.Now().UnixNano())
		}
		if ctx.Err() == nil {
			a.metrics.ObserveRun(metrics.Run{Err: err, Sealed: res.Sealed, Heartbeats: res.Heartbeats, Calls: res.Calls, Billed: res.Billed,
				Rejected: res.Rejected, Flagged: res.Flagged, Unp: res.Unprocessed, Violations: res.Violations})
		}
		switch {
		case err != nil && ctx.Err() == nil:
			a.log.Error("metering run failed", "err", err)
		case res.Calls > 0 || res.Sealed > 0 || res.Heartbeats > 0:
			a.log.Info("metering run", "sealed", res.Sealed, "heartbeats", res.Heartbeats, "calls", res.Calls,
				"billed", res.Billed, "rejected", res.Rejected, "flagged", res.Flagged, "retrying", res.Retrying)
		}
		// Cancelling buyers whose final metering window has ended lose
		// access (no EventBridge event says so; SNS says unsubscribe-success).
		if n, err := a.svc.EndFinalWindows(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("ending final metering windows", "err", err)
		} else if n > 0 {
			a.log.Info("access revoked at the end of the final metering window", "buyers", n)
		}
		// Keep the WAL small: a burst of usage leaves it large otherwise.
		if busy, err := a.db.Checkpoint(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("SQLite checkpoint failed", "err", err)
		} else if busy {
			a.log.Debug("SQLite checkpoint postponed by readers or writers")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *App) close() {
	if a.closed {
		return
	}
	a.closed = true
	if a.webLn != nil {
		a.webLn.Close()
	}
	if a.emLn != nil {
		a.emLn.Close()
	}
	if a.metricsLn != nil {
		a.metricsLn.Close()
	}
	if a.db != nil {
		a.db.Close()
	}
}

// Kinds of Marketplace endpoint a database meters to.
const (
	targetAWS      = "aws"
	targetEmulator = "emulator"
)

// checkMeteringTarget refuses to meter a database to AWS once it has
// billed to an emulator, or the other way round: usage billed to an
// emulator is gone, and a database that mixes both cannot say what AWS
// billed. It records the target otherwise.
func checkMeteringTarget(ctx context.Context, db *sqlite.DB, target string) error {
	prev, err := db.MeteringTarget(ctx)
	if err != nil {
		return err
	}
	if prev != "" && prev != target {
		billed, err := db.HasBilled(ctx)
		if err != nil {
			return err
		}
		if billed {
			return fmt.Errorf("the database %s has billed usage to %s; it will not meter to %s too. Use another MPSAAS_DB for %s (keep this one for its records)",
				db.Path(), describeTarget(prev), describeTarget(target), describeTarget(target))
		}
	}
	if prev != target {
		return db.SetMeteringTarget(ctx, target)
	}
	return nil
}

func describeTarget(t string) string {
	if t == targetEmulator {
		return "an AWS Marketplace emulator"
	}
	return "AWS Marketplace"
}

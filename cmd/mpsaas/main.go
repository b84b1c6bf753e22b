// Command mpsaas is an AWS Marketplace SaaS integration in one binary.
//
//	mpsaas serve      run the integration (web, workers, embedded emulator)
//	mpsaas emulator   run only the AWS Marketplace emulator and buyer simulator
//	mpsaas usage      send usage records to a running mpsaas
//	mpsaas meter      run metering now, show the ledger, replay flagged records
//	mpsaas version    print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/internal/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if dims, ok := os.LookupEnv(benchEmulatorEnv); ok { // the DynamoDB bench's child process
		if err := runBenchEmulator(dims, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "mpsaas bench emulator:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mpsaas:", err)
		if errors.As(err, new(usageError)) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

const usage = `mpsaas: AWS Marketplace SaaS integration (registration, access, metering)

Usage:
  mpsaas serve [flags]      run the integration; with no AWS configuration it
                            also runs the AWS Marketplace emulator and buyer simulator
  mpsaas emulator [flags]   run only the AWS Marketplace emulator and buyer simulator
  mpsaas usage record ...   send usage records to a running mpsaas
  mpsaas meter run          send pending usage to AWS now (also: meter status, meter replay)
  mpsaas reconcile [--apply]
                            compare every buyer with AWS's agreements and repair the
                            drift lost notifications leave (a dry run by default)
  mpsaas admin-password     hash the seller console's password (read from standard
                            input) for MPSAAS_ADMIN_PASSWORD_HASH
  mpsaas bench [flags]      measure ingestion and metering of 1,000,000 records for 100,000 buyers
  mpsaas bench http [flags] measure a running serve over HTTP: ingestion by N clients,
                            status latency, idle CPU
  mpsaas bench dynamodb [flags]
                            measure the serverless metering on DynamoDB (Local): records/s,
                            meter invocations, heap, read/write units, hot partition keys
  mpsaas dynamodb prepare   add mpsaas's indexes to the sample stack's subscribers table
                            (migrating with template parameter SubscribersTableExists)
  mpsaas version            print the version

Run "mpsaas <command> -h" for the flags of a command. Every flag can also be
set with the MPSAAS_* environment variable shown in its help.
`

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], getenv, stdout, stderr)
	case "emulator":
		return runEmulator(ctx, args[1:], stdout, stderr)
	case "meter":
		return runMeter(ctx, args[1:], getenv, stdout, stderr)
	case "usage":
		return runUsage(ctx, args[1:], getenv, stdout, stderr)
	case "reconcile":
		return runReconcile(ctx, args[1:], getenv, stdout, stderr)
	case "admin-password":
		return runAdminPassword(args[1:], stdout, stderr)
	case "dynamodb":
		return runDynamoDB(ctx, args[1:], getenv, stdout, stderr)
	case "bench":
		if len(args) > 1 && args[1] == "http" {
			return runBenchHTTP(ctx, args[2:], stdout, stderr)
		}
		if len(args) > 1 && args[1] == "dynamodb" {
			return runBenchDynamoDB(ctx, args[2:], stdout, stderr)
		}
		return runBench(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "mpsaas", version)
		return nil
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mpsaas serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	dump := fs.Bool("config-dump", false, "print the configuration (secrets redacted) and exit")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: mpsaas serve [flags]\n\nRuns the buyer-facing web server (fulfillment URL, registration, status pages),\nthe notification worker and the access-change dispatcher on a SQLite file.\nWith no AWS credentials or endpoints configured it also runs the AWS Marketplace\nemulator with a buyer simulator, so the whole buyer journey works offline.\n\nFlags:\n")
		config.PrintFlags(fs)
	}
	if err := cfg.Load(fs, args, getenv); err != nil {
		return err
	}
	if err := cfg.Validate(config.Serve); err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	if *dump {
		cfg.Dump(stdout, config.Serve)
		return nil
	}
	logger := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	app, err := openApp(ctx, cfg, getenv, logger)
	if err != nil {
		return err
	}
	app.PrintBanner(stdout)
	return app.Run(ctx)
}

func runEmulator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mpsaas emulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", envOr(os.Getenv, "MPSAAS_EMULATOR_ADDR", "localhost:8081"), "`HOST:PORT` to listen on [$MPSAAS_EMULATOR_ADDR]")
	fulfillment := fs.String("fulfillment-url", "http://localhost:8080/fulfillment", "fulfillment `URL` of the demo products")
	listing := fs.String("listing", envOr(os.Getenv, "MPSAAS_LISTING", "contracts_with_subscription"), "`TYPE` of the demo products: subscriptions, contracts or contracts_with_subscription [$MPSAAS_LISTING]")
	seed := fs.Bool("seed", true, "create the demo products and buyers")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: mpsaas emulator [flags]\n\nRuns the AWS Marketplace emulator: the Metering (awsJson1_1) and Entitlement\n(awsJson1_1 and RPC v2 CBOR) APIs for SDK clients with an endpoint override,\nits control API under /emulator/api/ and the buyer simulator at /emulator/.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *listing {
	case "subscriptions", "contracts", "contracts_with_subscription":
	default:
		return fmt.Errorf("--listing %q: want subscriptions, contracts or contracts_with_subscription", *listing)
	}
	logger := newLogger(stderr, "info", "text")
	em := emulator.New(emulatorConfig(logger))
	if *seed {
		if err := seedDemo(em, *fulfillment, *listing, "Example SaaS"); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *addr, err)
	}
	url := "http://" + ln.Addr().String()
	fmt.Fprintf(stdout, "AWS Marketplace emulator listening on %s\n  Buyer simulator: %s/emulator/\n  SDK endpoint:    %s (set BaseEndpoint or AWS_ENDPOINT_URL_MARKETPLACE_METERING / _ENTITLEMENT_SERVICE)\n",
		strings.TrimPrefix(url, "http://"), url, url)
	srv := newHTTPServer(em.Handler())
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				em.RunDue()
			}
		}
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/mpsaas/mpsaas/internal/config"
)

const reconcileUsage = `Usage: mpsaas reconcile [flags]

Compares every buyer in the database with the purchase agreements AWS
Marketplace holds for the products (MPSAAS_PRODUCT_CODES), read with the
Agreement API as the seller (SearchAgreements, 50 a page; the products' resource
ids from MPSAAS_PRODUCT_RESOURCES), and prints the
drift that lost notifications leave:

  ended-in-aws     the agreement ended; mpsaas still grants access
  active-in-aws    the agreement is active; mpsaas never saw it start (or saw it end)
  unknown-to-aws   mpsaas grants access; AWS has no agreement for the account and product
  not-registered   an active agreement whose buyer never completed registration

It is a dry run unless --apply: then the first two are repaired by recording
the event AWS would have sent (agreement-created or agreement-ended) through
the same path a notification takes, so access changes reach the webhook,
topic and email as usual (a running serve delivers them). Repairs have ids of
their own: running it again adds nothing. The others are reported only.

It needs AWS credentials with aws-marketplace:SearchAgreements (and
GetEntitlements), or MPSAAS_AGREEMENT_ENDPOINT and MPSAAS_ENTITLEMENT_ENDPOINT
of a running emulator.

Flags:
`

func runReconcile(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mpsaas reconcile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), reconcileUsage); config.PrintFlags(fs) }
	var cfg Config
	var apply, asJSON bool
	fs.BoolVar(&apply, "apply", false, "record the repairs (default: a dry run that changes nothing)")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	if err := cfg.Load(fs, args, getenv, "db", "log-level", "log-format", "listing", "product-codes", "product-resources", "region", "entitlement-endpoint", "agreement-endpoint",
		"webhook-url", "access-topic-arn", "ses-from", "smtp-addr", "admin-email", "revoke-on-cancel"); err != nil {
		return err
	}
	if err := cfg.Validate(config.Serve); err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	if len(cfg.ProductCodes) == 0 {
		return usageError{errors.New("reconcile: set MPSAAS_PRODUCT_CODES (or --product-codes): the products whose agreements to compare")}
	}
	db, err := openExistingDB(ctx, cfg.DB)
	if err != nil {
		return err
	}
	defer db.Close()
	logger := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	awsCfg, _, err := marketplaceAWS(ctx, cfg, getenv, cfg.AgreementEndpoint, cfg.EntitlementEndpoint)
	if err != nil {
		return err
	}
	var channelAWS aws.Config
	if cfg.AccessTopicArn != "" || cfg.SESFrom != "" {
		if channelAWS, err = awsServiceConfig(ctx, cfg, getenv); err != nil {
			return err
		}
	}
	svc := cfg.Build(config.Deps{Runtime: config.Serve, Store: db, AWS: awsCfg, ChannelAWS: channelAWS, Logger: logger})
	rep, err := svc.Reconcile.Run(ctx, apply)
	if err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(stdout).Encode(rep)
	}
	fmt.Fprintf(stdout, "%d buyers and %d agreements compared; %d differ\n", rep.Buyers, rep.Agreements, len(rep.Drift))
	if rep.Unmatched > 0 {
		fmt.Fprintf(stdout, "%d buyers have no AWS account id to compare by (registered before AWS returned one)\n", rep.Unmatched)
	}
	if len(rep.Drift) > 0 {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DRIFT\tBUYER\tACCOUNT\tPRODUCT\tAGREEMENT\tAWS\tMPSAAS\tREPAIR")
		for _, d := range rep.Drift {
			repair := d.Fix
			switch {
			case d.Applied:
				repair = "recorded " + d.Fix + ": now " + d.After
			case d.Fix == "":
				repair = "report only: " + d.Note
			case !apply:
				repair = "would record " + d.Fix
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Kind, dash(d.Subscriber), dash(d.AccountID), d.ProductCode, dash(d.AgreementID), dash(d.AWSStatus), dash(d.MpsaasStatus), repair)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if !apply && len(rep.Drift) > 0 {
		fmt.Fprintln(stdout, "dry run: nothing changed; run with --apply to record the repairs")
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

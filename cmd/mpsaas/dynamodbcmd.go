package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/mpsaas/mpsaas/dynamodb"
	"github.com/mpsaas/mpsaas/internal/config"
)

const dynamodbUsage = `Usage: mpsaas dynamodb prepare --subscribers-table NAME [flags]

Prepares the sample stack's existing subscribers table for mpsaas, for a
seller who migrates and keeps it (template parameter SubscribersTableExists):
adds the indexes mpsaas queries (licenseId-index, outboxPending-index), one
at a time, and waits until DynamoDB has built them from the existing items.
Items are not changed. Safe to run again: indexes that exist are left alone.
It uses the AWS SDK's default credentials and region; the caller needs
dynamodb:DescribeTable and dynamodb:UpdateTable on the table.

Flags:
`

func runDynamoDB(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "prepare" {
		fmt.Fprint(stderr, dynamodbUsage)
		if len(args) == 0 {
			return usageError{errors.New("dynamodb: no subcommand given (want prepare)")}
		}
		return usageError{fmt.Errorf("dynamodb: unknown subcommand %q (want prepare)", args[0])}
	}
	fs := flag.NewFlagSet("mpsaas dynamodb prepare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	table := fs.String("subscribers-table", getenv("MPSAAS_SUBSCRIBERS_TABLE"), "`NAME` of the existing subscribers table [$MPSAAS_SUBSCRIBERS_TABLE]")
	endpoint := fs.String("endpoint", getenv("MPSAAS_DYNAMODB_ENDPOINT"), "DynamoDB endpoint `URL` override (e.g. DynamoDB Local) [$MPSAAS_DYNAMODB_ENDPOINT]")
	region := fs.String("region", envOr(getenv, "AWS_REGION", "us-east-1"), "AWS `REGION` of the table [$AWS_REGION]")
	fs.Usage = func() { fmt.Fprint(fs.Output(), dynamodbUsage); config.PrintFlags(fs) }
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("dynamodb prepare: unexpected argument %q", fs.Arg(0))}
	}
	if strings.TrimSpace(*table) == "" {
		return usageError{errors.New("dynamodb prepare: --subscribers-table is required")}
	}
	var awsCfg aws.Config
	if *endpoint != "" && getenv("AWS_ACCESS_KEY_ID") == "" && getenv("AWS_PROFILE") == "" {
		awsCfg = aws.Config{Region: *region, Credentials: credentials.NewStaticCredentialsProvider("local", "local", "")}
	} else {
		var err error
		if awsCfg, err = awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(*region)); err != nil {
			return fmt.Errorf("load AWS configuration: %w", err)
		}
	}
	client := ddb.NewFromConfig(awsCfg, func(o *ddb.Options) {
		if *endpoint != "" {
			o.BaseEndpoint = aws.String(*endpoint)
		}
	})
	added, err := dynamodb.New(client, dynamodb.Tables{Subscribers: *table}).PrepareSubscribersTable(ctx, stdout)
	if err != nil {
		return err
	}
	if len(added) == 0 {
		fmt.Fprintf(stdout, "%s is ready for mpsaas (nothing to add)\n", *table)
	} else {
		fmt.Fprintf(stdout, "%s is ready for mpsaas: added %s\n", *table, strings.Join(added, ", "))
	}
	return nil
}

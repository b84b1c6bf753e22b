package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/mpsaas/mpsaas/dynamodb"
	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/internal/testenv"
)

// fixture is what the Lambda tests share: the emulator with products,
// fresh DynamoDB tables in dynalite, and the environment the functions read.
type fixture struct {
	em     *emulator.Server
	client *ddb.Client
	store  *dynamodb.HourStore
	suffix string
	env    map[string]string
}

func newFixture(t *testing.T, products ...emulator.Product) *fixture {
	t.Helper()
	endpoint := testenv.DynamoDB(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "local")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "local")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CA_BUNDLE", "") // loopback only; lets a recording HTTP client stand in
	em := emulator.New(emulator.DefaultConfig())
	emSrv := httptest.NewServer(em.Handler())
	t.Cleanup(emSrv.Close)
	for _, p := range products {
		if _, err := em.AddProduct(p); err != nil {
			t.Fatal(err)
		}
	}
	suffix := fmt.Sprint(time.Now().UnixNano())
	tables := dynamodb.Tables{Subscribers: "Subs" + suffix, Events: "Events" + suffix, Outbox: "Outbox" + suffix, MeterHours: "Meter" + suffix}
	client := ddb.New(ddb.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), Credentials: credentials.NewStaticCredentialsProvider("l", "l", "")})
	store := dynamodb.NewHourStore(dynamodb.New(client, tables))
	if err := store.CreateTables(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &fixture{em: em, client: client, store: store, suffix: suffix, env: map[string]string{
		"MPSAAS_LISTING":           "subscriptions",
		"MPSAAS_SUBSCRIBERS_TABLE": tables.Subscribers, "MPSAAS_EVENTS_TABLE": tables.Events, "MPSAAS_OUTBOX_TABLE": tables.Outbox,
		"MPSAAS_METER_TABLE":       tables.MeterHours,
		"MPSAAS_DYNAMODB_ENDPOINT": endpoint, "MPSAAS_METERING_ENDPOINT": emSrv.URL, "MPSAAS_ENTITLEMENT_ENDPOINT": emSrv.URL, "MPSAAS_AGREEMENT_ENDPOINT": emSrv.URL,
	}}
}

// build builds the function of role from the fixture's environment.
func (f *fixture) build(t *testing.T, role string, opts ...func(*awsconfig.LoadOptions) error) *App {
	t.Helper()
	f.env["MPSAAS_FUNCTION"] = role
	app, err := build(context.Background(), func(k string) string { return f.env[k] }, slog.New(slog.DiscardHandler), opts...)
	if err != nil {
		t.Fatal(err)
	}
	app.metrics.W = io.Discard // tests that check metrics set their own
	return app
}

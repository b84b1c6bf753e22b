package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/client"
	"github.com/mpsaas/mpsaas/internal/config"
	"github.com/mpsaas/mpsaas/marketplace"
	"github.com/mpsaas/mpsaas/metering"
	"github.com/mpsaas/mpsaas/sqlite"
)

const meterUsage = `Usage:
  mpsaas meter run [flags]      seal closed hours and send usage to AWS until nothing is left to send
  mpsaas meter status [flags]   usage records by state; with --state or --customer, the records
  mpsaas meter replay [flags]   move flagged records (or --id ...) into the current hour to resend them
  mpsaas meter verify [flags]   check that every usage record is pending or in exactly one meter record
                                whose quantity is its usage's sum; exits 1 with the offending keys

They work on the database directly (MPSAAS_DB). "meter run" needs AWS
credentials or MPSAAS_METERING_ENDPOINT (e.g. a running "mpsaas emulator").
`

func runMeter(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, meterUsage)
		if len(args) == 0 {
			return errors.New("meter: no subcommand given")
		}
		return nil
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("mpsaas meter "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintf(fs.Output(), "Usage of %s:\n", fs.Name()); config.PrintFlags(fs) }
	var cfg Config
	var once, asJSON bool
	var state, customer string
	var ids idList
	var limit int
	switch sub {
	case "run":
		fs.BoolVar(&once, "once", false, "make one pass instead of running until nothing is left to send")
	case "status":
		fs.StringVar(&state, "state", "", "list records in this state (pending, sealed, batched, billed, rejected, flagged, covered)")
		fs.StringVar(&customer, "customer", "", "list records of this customer (subscriber key)")
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	case "replay":
		fs.Var(&ids, "id", "ledger id of a flagged record to replay (repeatable; default: all flagged)")
	case "verify":
		fs.BoolVar(&asJSON, "json", false, "print the violations as JSON")
		fs.IntVar(&limit, "limit", 100, "report at most this many violations (0: all)")
	default:
		fmt.Fprint(stderr, meterUsage)
		return fmt.Errorf("meter: unknown subcommand %q", sub)
	}
	flags := []string{"db", "log-level", "log-format"}
	switch sub {
	case "run":
		flags = append(flags, "metering-endpoint", "entitlement-endpoint", "region", "listing", "meter-grace", "meter-concurrency", "heartbeat-dimension", "emulator")
	case "replay", "verify":
		flags = append(flags, "listing", "meter-grace")
	}
	if err := cfg.Load(fs, args, getenv, flags...); err != nil {
		return err
	}
	if state != "" && !slices.Contains(ledgerStates, state) {
		return usageError{fmt.Errorf("meter status: unknown --state %q: want one of %s", state, strings.Join(ledgerStates, ", "))}
	}
	if err := cfg.Validate(config.Serve); err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	db, err := openExistingDB(ctx, cfg.DB)
	if err != nil {
		return err
	}
	defer db.Close()
	logger := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	switch sub {
	case "status":
		return meterStatus(ctx, db, state, customer, asJSON, stdout)
	case "verify":
		return meterVerify(ctx, cfg.MeteringService(db, db, nil, logger), limit, asJSON, stdout)
	case "replay":
		m := cfg.MeteringService(db, db, nil, logger)
		n, err := m.Replay(ctx, ids)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "replayed %d flagged records into the current hour; the next metering run sends them\n", n)
		return nil
	}
	if path := getenv("MPSAAS_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if getenv("MPSAAS_MEMSTATS") == "1" {
		defer func() {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			status, _ := os.ReadFile("/proc/self/status")
			var hwm string
			for _, l := range strings.Split(string(status), "\n") {
				if strings.HasPrefix(l, "VmHWM") || strings.HasPrefix(l, "VmRSS") {
					hwm += strings.Join(strings.Fields(l), " ") + " "
				}
			}
			fmt.Fprintf(stderr, "memstats: go sys %d MB, heap sys %d MB, %s\n", ms.Sys>>20, ms.HeapSys>>20, hwm)
		}()
	}
	if path := getenv("MPSAAS_MEMPROFILE"); path != "" {
		defer func() {
			if f, err := os.Create(path); err == nil {
				_ = pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	mp, target, err := meteringClient(ctx, cfg, getenv)
	if err != nil {
		return err
	}
	if err := checkMeteringTarget(ctx, db, target); err != nil {
		return err
	}
	m := cfg.MeteringService(db, db, mp, logger)
	for pass := 1; ; pass++ {
		res, err := m.Run(ctx)
		if err != nil {
			return fmt.Errorf("metering run: %w", err)
		}
		fmt.Fprintf(stdout, "pass %d: sealed %d, zero records %d, calls %d, billed %d, rejected %d, flagged %d, retrying %d\n",
			pass, res.Sealed, res.Heartbeats, res.Calls, res.Billed, res.Rejected, res.Flagged, res.Retrying)
		if res.Violations > 0 {
			return fmt.Errorf("metering run: %d violations of the metering invariant (see the log; run 'mpsaas meter verify')", res.Violations)
		}
		more, err := m.Outstanding(ctx)
		if err != nil {
			return err
		}
		if !more || once {
			if more {
				fmt.Fprintln(stdout, "records are still waiting for a retry; run again later")
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// errViolations is the error of a verify that found violations.
var errViolations = errors.New("the metering invariant does not hold")

// meterVerify checks the whole database and prints what it found.
func meterVerify(ctx context.Context, m *metering.Service, limit int, asJSON bool, w io.Writer) error {
	vs, err := m.Verify(ctx, limit)
	if err != nil {
		return err
	}
	if asJSON {
		if vs == nil {
			vs = []mpsaas.MeterViolation{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(map[string]any{"violations": vs}); err != nil {
			return err
		}
	} else if len(vs) == 0 {
		fmt.Fprintln(w, "ok: every usage record is pending or in exactly one meter record, and every meter record sums its usage")
	} else {
		for _, v := range vs {
			fmt.Fprintln(w, v.String())
		}
	}
	if len(vs) > 0 {
		more := ""
		if limit > 0 && len(vs) == limit {
			more = " (the first; --limit 0 lists all)"
		}
		return fmt.Errorf("%w: %d violations%s", errViolations, len(vs), more)
	}
	return nil
}

// meteringClient builds the SDK client for metering: AWS, or the endpoint
// overrides. `meter run` never starts an emulator of its own.
// openExistingDB opens the database of a command that works on serve's
// data: it must exist (a typo must not create an empty one).
func openExistingDB(ctx context.Context, path string) (*sqlite.DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("database %s: %w (set MPSAAS_DB or --db)", path, err)
	}
	return sqlite.Open(ctx, path)
}

// marketplaceAWS is the AWS configuration of the Marketplace clients: when
// every one of endpoints is overridden and no AWS credentials are set, an
// emulator (which accepts any signature; local is true); otherwise the
// SDK's default chain.
func marketplaceAWS(ctx context.Context, cfg Config, getenv func(string) string, endpoints ...string) (awsCfg aws.Config, local bool, err error) {
	local = getenv("AWS_ACCESS_KEY_ID") == "" && getenv("AWS_PROFILE") == ""
	for _, e := range endpoints {
		local = local && e != ""
	}
	if local {
		return aws.Config{Region: cfg.Region, Credentials: credentials.NewStaticCredentialsProvider("local", "local", "")}, true, nil
	}
	if awsCfg, err = awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(cfg.Region)); err != nil {
		return aws.Config{}, false, fmt.Errorf("load AWS configuration: %w", err)
	}
	return awsCfg, false, nil
}

func meteringClient(ctx context.Context, cfg Config, getenv func(string) string) (*marketplace.Client, string, error) {
	opts := marketplace.Options{MeteringEndpoint: cfg.MeteringEndpoint, EntitlementEndpoint: cfg.EntitlementEndpoint}
	if cfg.MeteringEndpoint != "" {
		awsCfg, local, err := marketplaceAWS(ctx, cfg, getenv, cfg.MeteringEndpoint)
		if err != nil {
			return nil, "", err
		}
		target := targetAWS
		if local {
			target = targetEmulator
		}
		return marketplace.New(awsCfg, opts), target, nil
	}
	if cfg.UseEmulator(ctx, getenv) {
		return nil, "", errors.New("no AWS configuration: set AWS credentials (or AWS_PROFILE), or MPSAAS_METERING_ENDPOINT to a running emulator")
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(cfg.Region))
	if err != nil {
		return nil, "", fmt.Errorf("load AWS configuration: %w", err)
	}
	return marketplace.New(awsCfg, opts), targetAWS, nil
}

func meterStatus(ctx context.Context, db *sqlite.DB, state, customer string, asJSON bool, w io.Writer) error {
	if state != "" || customer != "" {
		entries, err := db.Ledger(ctx, mpsaas.LedgerFilter{State: state, SubscriberKey: customer, Limit: 10000})
		if err != nil {
			return err
		}
		if asJSON {
			return json.NewEncoder(w).Encode(entries)
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tCUSTOMER\tDIMENSION\tQUANTITY\tHOUR\tSTATE\tBATCH\tMETERING RECORD\tREASON")
		for _, e := range entries {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.SubscriberKey, e.Dimension, e.Quantity, e.Hour.Format("2006-01-02 15h"), e.State, e.BatchID, e.MeteringRecordID, e.Reason)
		}
		return tw.Flush()
	}
	sum, err := db.MeterSummary(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(w).Encode(sum)
	}
	states := make([]string, 0, len(sum))
	for s := range sum {
		states = append(states, s)
	}
	sort.Strings(states)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATE\tRECORDS\tQUANTITY\tHOURLY RECORDS\tSENT TO AWS")
	for _, s := range states {
		c := sum[s]
		if s == mpsaas.UsagePending {
			fmt.Fprintf(tw, "%s\t%d\t%d\t-\t-\n", s, c.Records, c.Quantity)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\n", s, c.Records, c.Quantity, c.MeterRecords, c.MeterQuantity)
	}
	if len(states) == 0 {
		fmt.Fprintln(tw, "(no usage recorded)")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nQUANTITY is usage; SENT TO AWS is what the hourly records carry (usage less contract entitlements): for billed, what AWS billed.")
	if sum[mpsaas.UsageFlagged].Records > 0 {
		fmt.Fprintln(w, "\nFlagged records need you: see them with --state flagged, fix the cause, then \"mpsaas meter replay\".")
	}
	return nil
}

type idList []int64

func (l *idList) String() string { return fmt.Sprint(*l) }
func (l *idList) Set(v string) error {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return fmt.Errorf("id %q: want a positive integer", v)
	}
	*l = append(*l, n)
	return nil
}

type tagList map[string]string

func (t tagList) String() string { return fmt.Sprint(map[string]string(t)) }
func (t tagList) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" || val == "" {
		return fmt.Errorf("tag %q: want key=value", v)
	}
	t[k] = val
	return nil
}

const usageUsage = `Usage:
  mpsaas usage record --customer KEY --dimension NAME --quantity N [--time RFC3339] [--tag k=v]... [--key IDEMPOTENCY-KEY]
  mpsaas usage record --file records.jsonl     one JSON usage record per line: {"customer","dimension","quantity","time","tags"}

Sends usage to a running mpsaas (MPSAAS_URL, default http://localhost:8080) with
an API key (MPSAAS_USAGE_API_KEY).

What is counted once: a record sent again with the same --customer, --dimension,
--quantity, --time and --tag values (or the same --key), and a --file sent again.
Without --time the time is "now", which differs on every run: such a record sent
twice is counted twice. Give --time (or --key) when a run may be repeated.
`

func runUsage(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "record" {
		fmt.Fprint(stdout, usageUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return nil
		}
		return errors.New("usage: want the subcommand \"record\"")
	}
	fs := flag.NewFlagSet("mpsaas usage record", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usageUsage, "\nFlags:\n"); fs.PrintDefaults() }
	baseURL := fs.String("url", envOr(getenv, "MPSAAS_URL", "http://localhost:8080"), "mpsaas URL [$MPSAAS_URL]")
	apiKey := fs.String("api-key", "", "usage API key [$MPSAAS_USAGE_API_KEY]")
	customer := fs.String("customer", "", "buyer: subscriber key, CustomerIdentifier or license ARN")
	dimension := fs.String("dimension", "", "pricing dimension")
	quantity := fs.Int64("quantity", -1, "quantity (0 to 2147483647)")
	at := fs.String("time", "", "when the usage happened (RFC 3339; default now, which makes every run a new record)")
	key := fs.String("key", "", "idempotency key (default: derived from the record, its time included: the same record with the same --time is counted once)")
	file := fs.String("file", "", "JSON-lines file of usage records")
	tags := tagList{}
	fs.Var(tags, "tag", "usage allocation tag key=value (repeatable, at most 5)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *apiKey == "" {
		*apiKey = getenv("MPSAAS_USAGE_API_KEY")
	}
	if *apiKey == "" {
		return errors.New("an API key is required: --api-key or MPSAAS_USAGE_API_KEY")
	}
	c := client.New(*baseURL, *apiKey)
	if *file != "" {
		return recordFile(ctx, c, *file, stdout)
	}
	if *customer == "" || *dimension == "" || *quantity < 0 {
		fs.Usage()
		return errors.New("--customer, --dimension and --quantity are required (or --file)")
	}
	t := time.Now().UTC()
	if *at != "" {
		var err error
		if t, err = time.Parse(time.RFC3339, *at); err != nil {
			return fmt.Errorf("--time %q: want RFC 3339, such as 2026-11-23T12:00:00Z", *at)
		}
	}
	u := mpsaas.Usage{Customer: *customer, Dimension: *dimension, Quantity: *quantity, Time: t, Tags: tags}
	if *key == "" {
		*key = "cli:" + (mpsaas.UsageRequest{Records: []mpsaas.Usage{u}}).Hash()[:32]
	}
	rec, err := c.RecordUsage(ctx, *key, []mpsaas.Usage{u})
	if err != nil {
		return err
	}
	if rec.Replayed {
		fmt.Fprintf(stdout, "already recorded under key %s (ledger id %d); not counted again\n", rec.IdempotencyKey, rec.FirstID)
		return nil
	}
	fmt.Fprintf(stdout, "recorded under key %s (ledger id %d)\n", rec.IdempotencyKey, rec.FirstID)
	return nil
}

// recordFile sends a JSON-lines file in chunks; each chunk's key derives
// from the file's content and position, so resending the file is safe.
func recordFile(ctx context.Context, c *client.Client, path string, stdout io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	const chunk = 5000
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var recs []mpsaas.Usage
	line, sent, replayed := 0, 0, 0
	h := sha256.New()
	flush := func() error {
		if len(recs) == 0 {
			return nil
		}
		key := fmt.Sprintf("file:%s:%d", hex.EncodeToString(h.Sum(nil))[:24], line)
		rec, err := c.RecordUsage(ctx, key, recs)
		if err != nil {
			return fmt.Errorf("records up to line %d: %w", line, err)
		}
		if rec.Replayed {
			replayed += len(recs)
		} else {
			sent += len(recs)
		}
		fmt.Fprintf(stdout, "\r%d records sent, %d already recorded", sent, replayed)
		recs = recs[:0]
		return nil
	}
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		h.Write([]byte(text))
		var u mpsaas.Usage
		dec := json.NewDecoder(strings.NewReader(text))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&u); err != nil {
			return fmt.Errorf("%s:%d: %v", path, line, err)
		}
		recs = append(recs, u)
		if len(recs) == chunk {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := flush(); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	return nil
}

func envOr(getenv func(string) string, k, def string) string {
	if v := getenv(k); v != "" {
		return v
	}
	return def
}

// ledgerStates are the states a usage record can be in.
var ledgerStates = []string{mpsaas.UsagePending, mpsaas.UsageSealed, mpsaas.UsageBatched, mpsaas.UsageBilled,
	mpsaas.UsageRejected, mpsaas.UsageFlagged, mpsaas.UsageCovered}

// usageError is a mistake on the command line: the command exits 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

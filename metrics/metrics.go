// Package metrics exposes what mpsaas does as Prometheus metrics, served
// by `mpsaas serve` on its own listen address (MPSAAS_METRICS_ADDR): HTTP
// requests by route and status, metering runs and BatchMeterUsage
// outcomes, access-change deliveries by channel, and gauges read from the
// store at scrape time (outbox, oldest unsealed hour, database size).
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds the collectors of one process.
type Metrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	meterRuns  *prometheus.CounterVec
	records    *prometheus.CounterVec
	calls      prometheus.Counter
	violations prometheus.Counter
	deliveries *prometheus.CounterVec
	reconciles *prometheus.CounterVec
	drift      prometheus.Gauge
	registers  *prometheus.CounterVec
	usage      *prometheus.CounterVec
}

// Gauges are read from the store when Prometheus scrapes.
type Gauges interface {
	// Gauges returns: access changes waiting for delivery and the age of
	// the oldest; the age of the oldest closed hour with usage not yet
	// sealed (0: none); the database size in bytes.
	Gauges(ctx context.Context, now time.Time) (outboxPending int64, outboxOldest, unsealedOldest time.Duration, dbBytes int64, err error)
}

// New returns the metrics, with gauges read from g (nil: none).
func New(g Gauges) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mpsaas_http_requests_total", Help: "HTTP requests by route pattern and status."}, []string{"route", "status"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mpsaas_http_request_duration_seconds", Help: "HTTP request latency by route pattern.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}, []string{"route"})
	m.meterRuns = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mpsaas_meter_runs_total", Help: "Metering runs by result (ok, error)."}, []string{"result"})
	m.records = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mpsaas_meter_records_total", Help: "Hourly meter records by outcome (sealed, heartbeat, billed, rejected, flagged, unprocessed)."}, []string{"outcome"})
	m.calls = prometheus.NewCounter(prometheus.CounterOpts{Name: "mpsaas_batch_meter_usage_calls_total", Help: "BatchMeterUsage calls made."})
	m.violations = prometheus.NewCounter(prometheus.CounterOpts{Name: "mpsaas_metering_invariant_violations_total", Help: "Violations of the metering invariant found by runs (alert on any)."})
	m.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mpsaas_access_change_deliveries_total", Help: "Access-change delivery attempts by channel and result (delivered, failed)."}, []string{"channel", "result"})
	m.reconciles = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mpsaas_reconcile_runs_total", Help: "Reconciliations with AWS's agreements by result (ok, error)."}, []string{"result"})
	m.registers = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mpsaas_registrations_total", Help: "Buyers' first registrations by product code."}, []string{"product"})
	m.usage = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mpsaas_usage_records_total", Help: "Usage records received by result (stored, refused)."}, []string{"result"})
	m.drift = prometheus.NewGauge(prometheus.GaugeOpts{Name: "mpsaas_reconcile_drift", Help: "Differences between mpsaas and AWS's agreements the last reconciliation found (repaired unless MPSAAS_RECONCILE=report)."})
	m.reg.MustRegister(m.requests, m.latency, m.meterRuns, m.records, m.calls, m.violations, m.deliveries, m.reconciles, m.drift, m.registers, m.usage,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if g != nil {
		m.reg.MustRegister(gaugeCollector{g: g})
	}
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Timeout: 10 * time.Second})
}

// ObserveRequest counts one HTTP request (web.Config.Observe).
func (m *Metrics) ObserveRequest(route string, status int, d time.Duration) {
	if route == "" {
		route = "unmatched"
	}
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.latency.WithLabelValues(route).Observe(d.Seconds())
}

// Run is what one metering run did (metering.RunResult's counts).
type Run struct {
	Err                                                       error
	Sealed, Heartbeats, Calls, Billed, Rejected, Flagged, Unp int
	Violations                                                int
}

// ObserveRun counts a metering run.
func (m *Metrics) ObserveRun(r Run) {
	result := "ok"
	if r.Err != nil {
		result = "error"
	}
	m.meterRuns.WithLabelValues(result).Inc()
	for outcome, n := range map[string]int{"sealed": r.Sealed, "heartbeat": r.Heartbeats, "billed": r.Billed, "rejected": r.Rejected, "flagged": r.Flagged, "unprocessed": r.Unp} {
		if n > 0 {
			m.records.WithLabelValues(outcome).Add(float64(n))
		}
	}
	m.calls.Add(float64(r.Calls))
	m.violations.Add(float64(r.Violations))
}

// ObserveReconcile counts a reconciliation with AWS and the drift it found.
func (m *Metrics) ObserveReconcile(drift int, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.reconciles.WithLabelValues(result).Inc()
	if err == nil {
		m.drift.Set(float64(drift))
	}
}

// ObserveDelivery counts one delivery attempt of an access change.
func (m *Metrics) ObserveDelivery(channel string, err error) {
	result := "delivered"
	if err != nil {
		result = "failed"
	}
	m.deliveries.WithLabelValues(channel, result).Inc()
}

var (
	outboxPendingDesc  = prometheus.NewDesc("mpsaas_outbox_pending", "Access changes waiting for delivery.", nil, nil)
	outboxOldestDesc   = prometheus.NewDesc("mpsaas_outbox_oldest_seconds", "Age of the oldest access change waiting for delivery.", nil, nil)
	unsealedOldestDesc = prometheus.NewDesc("mpsaas_unsealed_hour_age_seconds", "Age of the oldest closed hour with usage not yet sealed (0: none; metering is behind when it grows).", nil, nil)
	dbBytesDesc        = prometheus.NewDesc("mpsaas_database_bytes", "Size of the database (SQLite file and WAL).", nil, nil)
	gaugeErrDesc       = prometheus.NewDesc("mpsaas_gauges_error", "1 when the store's gauges could not be read at this scrape.", nil, nil)
)

type gaugeCollector struct{ g Gauges }

func (c gaugeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{outboxPendingDesc, outboxOldestDesc, unsealedOldestDesc, dbBytesDesc, gaugeErrDesc} {
		ch <- d
	}
}

func (c gaugeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pending, outboxOldest, unsealed, size, err := c.g.Gauges(ctx, time.Now())
	failed := 0.0
	if err != nil {
		failed = 1
	} else {
		ch <- prometheus.MustNewConstMetric(outboxPendingDesc, prometheus.GaugeValue, float64(pending))
		ch <- prometheus.MustNewConstMetric(outboxOldestDesc, prometheus.GaugeValue, outboxOldest.Seconds())
		ch <- prometheus.MustNewConstMetric(unsealedOldestDesc, prometheus.GaugeValue, unsealed.Seconds())
		ch <- prometheus.MustNewConstMetric(dbBytesDesc, prometheus.GaugeValue, float64(size))
	}
	ch <- prometheus.MustNewConstMetric(gaugeErrDesc, prometheus.GaugeValue, failed)
}

// ObserveRegistration counts a buyer's first registration
// (subscription.Service.OnRegister).
func (m *Metrics) ObserveRegistration(product string) { m.registers.WithLabelValues(product).Inc() }

// ObserveIngest counts usage records stored and refused
// (metering.Service.OnIngest).
func (m *Metrics) ObserveIngest(stored, refused int) {
	if stored > 0 {
		m.usage.WithLabelValues("stored").Add(float64(stored))
	}
	if refused > 0 {
		m.usage.WithLabelValues("refused").Add(float64(refused))
	}
}

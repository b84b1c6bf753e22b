package awslambda_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/awslambda"
	"github.com/mpsaas/mpsaas/subscription"
)

func load(t *testing.T, name string, v any) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// The HTTP adapter must pass everything a handler can see, and return
// everything it writes (round trip).
func TestHTTPHandlerRoundTrip(t *testing.T) {
	var ev events.APIGatewayV2HTTPRequest
	load(t, "apigw-v2-form-post.json", &ev)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		c1, _ := r.Cookie("c1")
		if r.Method != "POST" || r.URL.Path != "/echo/path" || r.URL.Query().Get("b") != "two" || c1 == nil || c1.Value != "v1" ||
			r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" || r.Host != "abc123.execute-api.us-east-1.amazonaws.com" ||
			string(body) != "x-amzn-marketplace-token=abc%2B123" || r.RemoteAddr != "203.0.113.9" {
			t.Errorf("request seen by the handler: %s %s %v cookie %v host %s body %q remote %s", r.Method, r.URL, r.Header, c1, r.Host, body, r.RemoteAddr)
		}
		if form, err := url.ParseQuery(string(body)); err != nil || form.Get("x-amzn-marketplace-token") != "abc+123" {
			t.Errorf("form = %v, %v", form, err)
		}
		http.SetCookie(w, &http.Cookie{Name: "s", Value: "1"})
		w.Header().Set("Content-Type", "image/png")
		w.WriteHeader(http.StatusTeapot)
		_, _ = w.Write([]byte{0x89, 'P', 'N', 'G'})
	})
	res, err := awslambda.HTTPHandler(h)(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := base64.StdEncoding.DecodeString(res.Body)
	if res.StatusCode != http.StatusTeapot || !res.IsBase64Encoded || string(body) != "\x89PNG" || len(res.Cookies) != 1 || res.Headers["Content-Type"] != "image/png" {
		t.Errorf("response = %+v", res)
	}
	// Text bodies stay text; a stage prefix is removed.
	ev.IsBase64Encoded, ev.Body = false, ""
	ev.RawPath, ev.RequestContext.Stage = "/prod/healthz", "prod"
	mux := http.NewServeMux()
	mux.HandleFunc("POST /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	res, _ = awslambda.HTTPHandler(mux)(context.Background(), ev)
	if res.StatusCode != 200 || res.Body != "ok" || res.IsBase64Encoded {
		t.Errorf("staged text response = %+v", res)
	}
}

type recorder struct{ bodies []string }

func (r *recorder) HandleMessage(_ context.Context, b []byte) error {
	r.bodies = append(r.bodies, string(b))
	_, err := subscription.ParseMessage(b, mpsaas.SystemClock{}.Now())
	return err
}

func TestSQSHandlerReportsOnlyFailures(t *testing.T) {
	var ev events.SQSEvent
	load(t, "sqs-sns.json", &ev)
	rec := &recorder{}
	res, err := awslambda.SQSHandler(rec, nil)(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.bodies) != 2 || !strings.Contains(rec.bodies[0], `"Type":"Notification"`) {
		t.Errorf("bodies handled = %q", rec.bodies)
	}
	if len(res.BatchItemFailures) != 1 || res.BatchItemFailures[0].ItemIdentifier != "2e1424d4-f796-459a-8184-9c92662be6da" {
		t.Errorf("failures = %+v, want only the malformed message", res.BatchItemFailures)
	}
}

func TestEventBridgeAndScheduledHandlers(t *testing.T) {
	rec := &recorder{}
	body := []byte(`{"version":"0","id":"e1","detail-type":"License Updated - Manufacturer","source":"aws.agreement-marketplace","time":"2026-11-23T12:00:00Z","detail":{"agreement":{"id":"agmt-1"},"license":{"arn":"aws:license-manager:us-east-1:1:l-abc"}}}`)
	if err := awslambda.EventBridgeHandler(rec)(context.Background(), body); err != nil {
		t.Errorf("EventBridge handler: %v", err)
	}
	if err := awslambda.EventBridgeHandler(rec)(context.Background(), []byte(`{"detail-type":"x"}`)); err == nil {
		t.Error("malformed EventBridge event accepted")
	}
	var sched events.EventBridgeEvent
	load(t, "scheduled.json", &sched)
	calls := 0
	h := awslambda.ScheduledHandler(func(context.Context) error { calls++; return nil })
	if err := h(context.Background(), sched); err != nil || calls != 1 {
		t.Errorf("scheduled handler: %v, calls %d", err, calls)
	}
	fail := awslambda.ScheduledHandler(func(context.Context) error { return errors.New("boom") })
	if err := fail(context.Background(), sched); err == nil {
		t.Error("scheduled handler swallowed an error")
	}
}

func TestMetricsEMF(t *testing.T) {
	var buf strings.Builder
	m := &awslambda.Metrics{W: &buf, Namespace: "mpsaas", Dimensions: map[string]string{"Function": "meter"}, Now: func() time.Time { return time.UnixMilli(1764000000000) }}
	if err := m.Put(map[string]int64{"MeteringInvariantViolations": 0, "MeterRecordsBilled": 25}); err != nil {
		t.Fatal(err)
	}
	want := `{"Function":"meter","MeterRecordsBilled":25,"MeteringInvariantViolations":0,"_aws":{"CloudWatchMetrics":[{"Dimensions":[["Function"]],"Metrics":[{"Name":"MeterRecordsBilled","Unit":"Count"},{"Name":"MeteringInvariantViolations","Unit":"Count"}],"Namespace":"mpsaas"}],"Timestamp":1764000000000}}` + "\n"
	if buf.String() != want {
		t.Errorf("EMF line\n%s\nwant\n%s", buf.String(), want)
	}
}

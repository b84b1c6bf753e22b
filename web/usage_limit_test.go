package web

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
)

// slowMetering takes its time over every request.
type slowMetering struct{ delay time.Duration }

func (m slowMetering) Ingest(ctx context.Context, req mpsaas.UsageRequest) (mpsaas.UsageReceipt, error) {
	time.Sleep(m.delay)
	return mpsaas.UsageReceipt{IdempotencyKey: req.IdempotencyKey, Accepted: len(req.Records)}, nil
}
func (slowMetering) Replay(context.Context, []int64) (int, error) { return 0, nil }

func usageServer(t *testing.T, api *UsageAPI) *httptest.Server {
	s := New(Config{Secret: []byte(strings.Repeat("x", 32))}, oneSubscriber{})
	api.Keys = []string{"usage-key-0123456789"}
	api.Register(s)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return srv
}

func postUsage(url string, body []byte) (*http.Response, error) {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer usage-key-0123456789")
	return http.DefaultClient.Do(req)
}

// TestUsageBodiesAreBounded (issue 9): beyond MaxBodies requests at once, a
// request waits a moment, then gets 503 with Retry-After.
func TestUsageBodiesAreBounded(t *testing.T) {
	srv := usageServer(t, &UsageAPI{Metering: slowMetering{delay: 1500 * time.Millisecond}, MaxBodies: 2})
	body := []byte(`{"idempotencyKey":"k","records":[{"customer":"c","dimension":"users","quantity":1,"time":"2026-01-01T00:00:00Z"}]}`)
	var wg sync.WaitGroup
	var ok, busy atomic.Int32
	for range 4 {
		wg.Go(func() {
			resp, err := postUsage(srv.URL+"/v1/usage", body)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusAccepted:
				ok.Add(1)
			case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "1":
				busy.Add(1)
			default:
				t.Errorf("status %d", resp.StatusCode)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 2 || busy.Load() != 2 {
		t.Errorf("%d accepted, %d told to retry; want 2 and 2", ok.Load(), busy.Load())
	}
}

// TestUsageBurstMemory (slow: MPSAAS_SLOW_TESTS=1): 200 concurrent 4 MiB
// sample-stack bodies keep the heap under 300 MB.
func TestUsageBurstMemory(t *testing.T) {
	if os.Getenv("MPSAAS_SLOW_TESTS") != "1" {
		t.Skip("set MPSAAS_SLOW_TESTS=1 to run the memory burst test")
	}
	srv := usageServer(t, &UsageAPI{Metering: slowMetering{}})
	// One 4 MiB body shared by every client: an array of items whose
	// customer identifiers are long strings.
	var b strings.Builder
	b.WriteString("[")
	for i := 0; b.Len() < maxUsageBody-5000; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`{"create_timestamp":1700000000,"customerIdentifier":"` + strings.Repeat("c", 4000) + `","dimension_usage":[{"dimension":"users","value":1}]}`)
	}
	b.WriteString("]")
	body := []byte(b.String())
	runtime.GC()
	var peak atomic.Uint64
	stop := make(chan struct{})
	go func() {
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
		}
	}()
	var wg sync.WaitGroup
	for range 200 {
		wg.Go(func() {
			resp, err := postUsage(srv.URL+"/v1/usage/sample-stack", body)
			if err == nil {
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	close(stop)
	if p := peak.Load(); p > 300<<20 {
		t.Errorf("peak heap %d MB under 200 concurrent 4 MiB bodies, want under 300 MB", p>>20)
	} else {
		t.Logf("peak heap %d MB", p>>20)
	}
}

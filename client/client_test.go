package client_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/client"
)

func TestRecordUsageRetriesWithTheSameKey(t *testing.T) {
	var calls atomic.Int32
	keys := make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			IdempotencyKey string `json:"idempotencyKey"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		keys <- body.IdempotencyKey
		if r.Header.Get("Authorization") != "Bearer k" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if calls.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(mpsaas.UsageReceipt{IdempotencyKey: body.IdempotencyKey, Accepted: 1, FirstID: 7})
	}))
	defer srv.Close()
	c := client.New(srv.URL, "k")
	rec, err := c.RecordUsage(context.Background(), "job-1", []mpsaas.Usage{{Customer: "c", Dimension: "d", Quantity: 1, Time: time.Now()}})
	if err != nil || rec.FirstID != 7 || calls.Load() != 3 {
		t.Fatalf("RecordUsage = %+v, %v after %d calls; want success on the third", rec, err, calls.Load())
	}
	close(keys)
	for k := range keys {
		if k != "job-1" {
			t.Errorf("a retry used key %q", k)
		}
	}
}

func TestClientErrors(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusConflict)
		_, _ = w.Write([]byte(`{"error":"idempotency key \"x\" was already used for different usage records","code":"conflict"}`))
	}))
	defer srv.Close()
	_, err := client.New(srv.URL, "k").RecordUsage(context.Background(), "x", nil)
	if !client.IsConflict(err) || calls.Load() != 1 {
		t.Errorf("err = %v after %d calls; want one call and a conflict", err, calls.Load())
	}
	dead := client.New("http://127.0.0.1:1", "k")
	dead.Attempts = 2
	if _, err := dead.Status(context.Background()); err == nil {
		t.Error("unreachable server: no error")
	}
}

package webhook_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/webhook"
)

func TestSendAndVerify(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	var gotKey string
	var verr error
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		gotKey = r.Header.Get("Idempotency-Key")
		verr = webhook.Verify(secret, r.Header.Get(webhook.SignatureHeader), body, time.Now(), 5*time.Minute)
		if verr != nil {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	defer srv.Close()
	s := &webhook.Sender{URL: srv.URL, Secret: secret}
	m := mpsaas.OutboxMessage{ID: "1", IdempotencyKey: "K:1", Payload: []byte(`{"access":"granted"}`)}
	if err := s.Send(context.Background(), m); err != nil {
		t.Fatalf("Send: %v (receiver: %v)", err, verr)
	}
	if gotKey != "K:1" {
		t.Errorf("Idempotency-Key = %q, want K:1", gotKey)
	}
	// Wrong secret: the receiver refuses and Send reports the failure.
	bad := &webhook.Sender{URL: srv.URL, Secret: []byte("other")}
	if err := bad.Send(context.Background(), m); err == nil {
		t.Error("Send with a wrong secret succeeded")
	}
}

func TestVerify(t *testing.T) {
	secret := []byte("s3cret")
	body := []byte(`{"a":1}`)
	now := time.Unix(1_800_000_000, 0)
	good := webhook.Sign(secret, body, now)
	tests := []struct {
		name   string
		header string
		body   []byte
		now    time.Time
		want   error
	}{
		{"valid", good, body, now, nil},
		{"tampered body", good, []byte(`{"a":2}`), now, webhook.ErrBadSignature},
		{"too old", good, body, now.Add(10 * time.Minute), webhook.ErrStale},
		{"garbage", "nonsense", body, now, webhook.ErrMalformed},
		{"no v1", "t=1", body, now, webhook.ErrMalformed},
	}
	for _, tt := range tests {
		if err := webhook.Verify(secret, tt.header, tt.body, tt.now, 5*time.Minute); err != tt.want {
			t.Errorf("%s: Verify = %v, want %v", tt.name, err, tt.want)
		}
	}
}

func FuzzVerify(f *testing.F) {
	f.Add("t=1800000000,v1=00", []byte("{}"))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		_ = webhook.Verify([]byte("k"), header, body, time.Unix(1_800_000_000, 0), time.Minute)
	})
}

// TestSendDoesNotFollowRedirects (issue 9): a redirect is a delivery
// failure that says where it pointed; the signed body goes nowhere else.
func TestSendDoesNotFollowRedirects(t *testing.T) {
	var elsewhere int
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere++ }))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/moved", http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	s := &webhook.Sender{URL: srv.URL, Secret: []byte("0123456789abcdef")}
	err := s.Send(context.Background(), mpsaas.OutboxMessage{ID: "1", IdempotencyKey: "K:1", Payload: []byte(`{}`)})
	if err == nil || !strings.Contains(err.Error(), "redirect") || !strings.Contains(err.Error(), "/moved") {
		t.Errorf("Send to a redirect: %v, want a failure naming the redirect", err)
	}
	if elsewhere != 0 {
		t.Errorf("the webhook was posted to the redirect target %d times", elsewhere)
	}
}

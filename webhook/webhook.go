// Package webhook delivers access changes to the seller's system as
// HMAC-signed HTTP POSTs, and verifies such signatures (for sellers' Go
// receivers and for tests).
//
// Each request carries:
//
//	Content-Type: application/json
//	Idempotency-Key: <subscriber key>:<access version>  (stable across retries)
//	X-Mpsaas-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>
//
// Any 2xx answer counts as delivered; anything else is retried.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mpsaas/mpsaas"
)

// SignatureHeader is the header that carries the signature.
const SignatureHeader = "X-Mpsaas-Signature"

// Sender posts outbox messages to URL.
type Sender struct {
	URL string
	// ProductURLs send a product's access changes to its own URL (the
	// products file); a product in neither has no webhook: its changes
	// are skipped (done, nothing posted).
	ProductURLs map[string]string
	Secret      []byte
	Client      *http.Client // default: 10s timeout, redirects not followed
	Now         func() time.Time
}

// noRedirects makes a redirect answer the response: a webhook that
// redirects is a delivery failure (the signed body is never re-posted to
// another place).
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// Send posts one message.
func (s *Sender) Send(ctx context.Context, m mpsaas.OutboxMessage) error {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	client := s.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second, CheckRedirect: noRedirects}
	}
	target := s.URL
	if len(s.ProductURLs) > 0 {
		var change struct {
			Subscriber struct {
				ProductCode string `json:"productCode"`
			} `json:"subscriber"`
		}
		if err := json.Unmarshal(m.Payload, &change); err != nil {
			return fmt.Errorf("webhook payload: %w", err)
		}
		if u := s.ProductURLs[change.Subscriber.ProductCode]; u != "" {
			target = u
		}
	}
	if target == "" {
		return nil // this product has no webhook
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(m.Payload))
	if err != nil {
		return fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "mpsaas-webhook/1")
	req.Header.Set("Idempotency-Key", m.IdempotencyKey)
	req.Header.Set(SignatureHeader, Sign(s.Secret, m.Payload, now()))
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook POST: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 300 && resp.StatusCode <= 399 {
		return fmt.Errorf("webhook POST: status %d redirect to %q: not followed; set MPSAAS_WEBHOOK_URL to the final URL", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("webhook POST: status %d", resp.StatusCode)
	}
	return nil
}

// Sign returns the signature header value for body at time t.
func Sign(secret, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + mac(secret, ts, body)
}

func mac(secret []byte, ts string, body []byte) string {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(ts))
	h.Write([]byte("."))
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// Errors returned by Verify.
var (
	ErrBadSignature = errors.New("webhook signature does not match")
	ErrStale        = errors.New("webhook signature timestamp outside tolerance")
	ErrMalformed    = errors.New("webhook signature header malformed")
)

// Verify checks a signature header against body; tolerance bounds the age
// of the timestamp to stop replays (0 disables the check).
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrMalformed
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrMalformed
	}
	if tolerance > 0 {
		if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
			return ErrStale
		}
	}
	want := mac(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal([]byte(s), []byte(want)) {
			return nil
		}
	}
	return ErrBadSignature
}

// Package client is a small Go client for the mpsaas usage API. A seller's
// application uses it to report usage, and to ask whether a buyer is
// entitled (c.Entitled(ctx, customer, "requests"), cached):
//
//	c := client.New("https://mpsaas.example.com", os.Getenv("MPSAAS_USAGE_API_KEY"))
//	receipt, err := c.RecordUsage(ctx, "order-1234", []mpsaas.Usage{{
//		Customer: subscriberKey, Dimension: "requests", Quantity: 42, Time: time.Now(),
//	}})
//
// RecordUsage retries network errors and 5xx answers with the same
// idempotency key, so a record is counted once however often it is sent.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mpsaas/mpsaas"
)

// Client calls the usage API.
type Client struct {
	BaseURL string
	APIKey  string
	HTTP    *http.Client
	// Attempts is how many times a request is tried (default 5).
	Attempts int
	// CacheTTL is how long Entitled trusts an answer before it asks again
	// (default a minute; Invalidate forgets one at once).
	CacheTTL time.Duration

	cacheMu sync.Mutex
	cache   map[string]cachedView
}

// New returns a client for baseURL authenticated with apiKey.
func New(baseURL, apiKey string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), APIKey: apiKey, HTTP: &http.Client{Timeout: 30 * time.Second}}
}

// Error is an error answer of the API.
type Error struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"error"`
}

// newError reads an error answer: the API's JSON, or the body as text.
func newError(status int, body []byte) *Error {
	e := &Error{Status: status}
	if json.Unmarshal(body, e) != nil {
		e.Message = strings.TrimSpace(string(body))
	}
	return e
}

func (e *Error) Error() string {
	return fmt.Sprintf("mpsaas API: %d %s: %s", e.Status, e.Code, e.Message)
}

// RecordUsage sends usage records under an idempotency key.
func (c *Client) RecordUsage(ctx context.Context, idempotencyKey string, records []mpsaas.Usage) (mpsaas.UsageReceipt, error) {
	var rec mpsaas.UsageReceipt
	err := c.do(ctx, http.MethodPost, "/v1/usage", map[string]any{"idempotencyKey": idempotencyKey, "records": records}, &rec)
	return rec, err
}

// Ledger lists usage records and their fate.
func (c *Client) Ledger(ctx context.Context, f mpsaas.LedgerFilter) ([]mpsaas.LedgerEntry, error) {
	q := url.Values{}
	if f.SubscriberKey != "" {
		q.Set("customer", f.SubscriberKey)
	}
	if f.State != "" {
		q.Set("state", f.State)
	}
	if f.AfterID > 0 {
		q.Set("after", strconv.FormatInt(f.AfterID, 10))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out struct {
		Entries []mpsaas.LedgerEntry `json:"entries"`
	}
	err := c.do(ctx, http.MethodGet, "/v1/usage/ledger?"+q.Encode(), nil, &out)
	return out.Entries, err
}

// Status counts usage records by state.
func (c *Client) Status(ctx context.Context) (map[string]mpsaas.StateCount, error) {
	var out struct {
		States map[string]mpsaas.StateCount `json:"states"`
	}
	err := c.do(ctx, http.MethodGet, "/v1/meter/status", nil, &out)
	return out.States, err
}

// Replay moves flagged records (all when ids is empty) into the open hour.
func (c *Client) Replay(ctx context.Context, ids []int64) (int, error) {
	var out struct {
		Replayed int `json:"replayed"`
	}
	err := c.do(ctx, http.MethodPost, "/v1/meter/replay", map[string]any{"ids": ids}, &out)
	return out.Replayed, err
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	attempts := c.Attempts
	if attempts <= 0 {
		attempts = 5
	}
	httpc := c.HTTP
	if httpc == nil {
		httpc = http.DefaultClient
	}
	var lastErr error
	for i := 0; i < attempts; i++ {
		if i > 0 {
			d := time.Duration(rand.Int64N(int64(100*time.Millisecond) << i))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
			}
		}
		req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.APIKey)
		if in != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := httpc.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			lastErr = err
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			lastErr = err
			continue
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			if out != nil {
				return json.Unmarshal(b, out)
			}
			return nil
		}
		apiErr := newError(resp.StatusCode, b)
		if resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
			return apiErr
		}
		lastErr = apiErr
	}
	return fmt.Errorf("after %d attempts: %w", attempts, lastErr)
}

// IsConflict reports whether err says the idempotency key was reused with
// other records.
func IsConflict(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusConflict
}

package web

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mpsaas/mpsaas"
)

// Metering is what the usage API drives.
type Metering interface {
	Ingest(ctx context.Context, req mpsaas.UsageRequest) (mpsaas.UsageReceipt, error)
	Replay(ctx context.Context, ids []int64) (int, error)
}

// Claims redeems claim codes (Server.RedeemClaim).
type Claims interface {
	RedeemClaim(ctx context.Context, code, accountID string) (*mpsaas.Subscriber, error)
}

// Subscribers finds buyers as usage names them.
type Subscribers interface {
	Subscriber(ctx context.Context, customer string) (*mpsaas.Subscriber, error)
}

// Ledger answers questions about usage records.
type Ledger interface {
	Ledger(ctx context.Context, f mpsaas.LedgerFilter) ([]mpsaas.LedgerEntry, error)
	MeterSummary(ctx context.Context) (map[string]mpsaas.StateCount, error)
}

// UsageAPI is the authenticated JSON API for usage ingestion and the
// metering ledger:
//
//	POST /v1/usage               {"idempotencyKey": "...", "records": [{customer, dimension, quantity, time, tags}]}
//	POST /v1/usage/sample-stack  sample-stack metering-table items (plain or DynamoDB JSON)
//	GET  /v1/usage/ledger        ?customer=&state=&after=&limit=
//	GET  /v1/meter/status        usage records and quantities by state
//	POST /v1/meter/replay        {"ids": [...]} (empty: all flagged)
//
// Every request needs "Authorization: Bearer <key>" with one of Keys.
type UsageAPI struct {
	Keys     []string
	Metering Metering
	Ledger   Ledger
	// Subscribers answers the entitlements API; nil turns it off.
	Subscribers Subscribers
	// Claims redeems sign-up handoff codes (POST /v1/claims/{code}); nil
	// turns it off.
	Claims Claims
	Logger *slog.Logger
	// MaxBodies bounds how many request bodies are read and decoded at
	// once (default 8: at most 32 MiB of bodies, a few times that decoded).
	// A request beyond it waits up to a second, then gets 503 with
	// Retry-After, so a burst of large requests cannot exhaust memory.
	MaxBodies int

	once  sync.Once
	slots chan struct{}
}

// acquire takes a body slot, waiting briefly; false means answer 503.
func (a *UsageAPI) acquire(r *http.Request) bool {
	a.once.Do(func() {
		n := a.MaxBodies
		if n <= 0 {
			n = 8
		}
		a.slots = make(chan struct{}, n)
	})
	select {
	case a.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case a.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-r.Context().Done():
	}
	return false
}

func (a *UsageAPI) release() { <-a.slots }

// limited runs next with a body slot, or answers 503 with Retry-After.
func (a *UsageAPI) limited(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.acquire(r) {
			w.Header().Set("Retry-After", "1")
			a.fail(w, mpsaas.Errorf(mpsaas.EUNAVAILABLE, "too many usage requests at once; retry after a second"))
			return
		}
		defer a.release()
		next(w, r)
	}
}

// Register mounts the API on s.
func (a *UsageAPI) Register(s *Server) {
	s.Handle("POST /v1/usage", a.auth(a.limited(a.handleUsage)))
	s.Handle("POST /v1/usage/sample-stack", a.auth(a.limited(a.handleSampleStack)))
	s.Handle("GET /v1/usage/ledger", a.auth(a.handleLedger))
	s.Handle("GET /v1/meter/status", a.auth(a.handleStatus))
	s.Handle("POST /v1/meter/replay", a.auth(a.handleReplay))
	if a.Subscribers != nil {
		s.Handle("GET /v1/entitlements", a.auth(a.handleEntitlements))
	}
	if a.Claims != nil {
		s.Handle("POST /v1/claims/{code}", a.auth(a.handleClaim))
	}
}

// handleClaim redeems a claim code from the seller's sign-up: the answer
// is the buyer's identity and access; with {"accountId": ...} the buyer is
// linked to the seller's account. A code redeems once (409 after).
func (a *UsageAPI) handleClaim(w http.ResponseWriter, r *http.Request) {
	var body struct {
		AccountID string `json:"accountId"`
	}
	if r.ContentLength != 0 {
		if err := decodeStrict(w, r, &body); err != nil {
			a.fail(w, err)
			return
		}
	}
	if len(body.AccountID) > 256 || !utf8.ValidString(body.AccountID) || strings.ContainsFunc(body.AccountID, unicode.IsControl) {
		a.fail(w, mpsaas.Errorf(mpsaas.EINVALID, "accountId must be at most 256 characters of text"))
		return
	}
	sub, err := a.Claims.RedeemClaim(r.Context(), r.PathValue("code"), body.AccountID)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, mpsaas.NewAccessView(sub.Key, sub))
}

// handleEntitlements answers whether a buyer has access, and to what, from
// the store (no AWS call). The answer carries an ETag (If-None-Match gets
// 304) and may be cached briefly; webhooks tell of changes at once.
func (a *UsageAPI) handleEntitlements(w http.ResponseWriter, r *http.Request) {
	customer := r.URL.Query().Get("customer")
	if customer == "" || len(customer) > 2048 || !utf8.ValidString(customer) || strings.ContainsFunc(customer, unicode.IsControl) {
		a.fail(w, mpsaas.Errorf(mpsaas.EINVALID, "customer is required: ?customer= a subscriber key, CustomerIdentifier or LicenseArn"))
		return
	}
	sub, err := a.Subscribers.Subscriber(r.Context(), customer)
	if err != nil {
		if mpsaas.ErrorCode(err) == mpsaas.ENOTFOUND {
			err = mpsaas.Errorf(mpsaas.ENOTFOUND, "no buyer %q", customer)
		}
		a.fail(w, err)
		return
	}
	body, err := json.Marshal(mpsaas.NewAccessView(customer, sub))
	if err != nil {
		a.fail(w, err)
		return
	}
	sum := sha256.Sum256(body)
	etag := `"` + hex.EncodeToString(sum[:16]) + `"`
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "private, max-age=30")
	for _, m := range strings.Split(r.Header.Get("If-None-Match"), ",") {
		if strings.TrimSpace(m) == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(body, '\n'))
}

type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func (a *UsageAPI) fail(w http.ResponseWriter, err error) {
	status := errorStatus(err)
	if status >= 500 && a.Logger != nil {
		a.Logger.Error("usage API failed", "err", err)
	}
	writeJSON(w, status, apiError{Error: mpsaas.ErrorMessage(err), Code: mpsaas.ErrorCode(err)})
}

func (a *UsageAPI) auth(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(a.Keys) == 0 {
			a.fail(w, mpsaas.Errorf(mpsaas.EUNAVAILABLE, "the usage API is disabled: set MPSAAS_USAGE_API_KEYS"))
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		valid := false
		for _, k := range a.Keys {
			if ok && subtle.ConstantTimeCompare([]byte(got), []byte(k)) == 1 {
				valid = true
			}
		}
		if !valid {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mpsaas usage API"`)
			a.fail(w, mpsaas.Errorf(mpsaas.EUNAUTHORIZED, "a valid API key is required (Authorization: Bearer <key>)"))
			return
		}
		next(w, r)
	})
}

// usageBody is the request of POST /v1/usage.
type usageBody struct {
	IdempotencyKey string         `json:"idempotencyKey"`
	Records        []mpsaas.Usage `json:"records"`
}

// maxUsageBody bounds a request (10,000 records of about 200 bytes).
const maxUsageBody = 4 << 20

func (a *UsageAPI) handleUsage(w http.ResponseWriter, r *http.Request) {
	var body usageBody
	if err := decodeStrict(w, r, &body); err != nil {
		a.fail(w, err)
		return
	}
	if body.IdempotencyKey == "" {
		body.IdempotencyKey = r.Header.Get("Idempotency-Key")
	}
	rec, err := a.Metering.Ingest(r.Context(), mpsaas.UsageRequest{IdempotencyKey: body.IdempotencyKey, Records: body.Records})
	if err != nil {
		a.fail(w, err)
		return
	}
	status := http.StatusAccepted
	if rec.Replayed {
		status = http.StatusOK
	}
	writeJSON(w, status, rec)
}

func decodeStrict(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxUsageBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return mpsaas.Errorf(mpsaas.EINVALID, "request body larger than %d bytes", maxUsageBody)
		}
		return mpsaas.Errorf(mpsaas.EINVALID, "invalid JSON body: %v", err)
	}
	if dec.More() {
		return mpsaas.Errorf(mpsaas.EINVALID, "invalid JSON body: more than one value")
	}
	return nil
}

// handleSampleStack accepts items in the sample stack's metering-table
// format, one or an array. Each item's key is its table key
// (customerIdentifier + create_timestamp), so a resend is counted once.
func (a *UsageAPI) handleSampleStack(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxUsageBody))
	if err != nil {
		a.fail(w, mpsaas.Errorf(mpsaas.EINVALID, "request body larger than %d bytes", maxUsageBody))
		return
	}
	reqs, err := ParseSampleStackItems(b)
	if err != nil {
		a.fail(w, err)
		return
	}
	receipts := make([]mpsaas.UsageReceipt, 0, len(reqs))
	for _, req := range reqs {
		rec, err := a.Metering.Ingest(r.Context(), req)
		if err != nil {
			a.fail(w, fmt.Errorf("item %s: %w", req.IdempotencyKey, err))
			return
		}
		receipts = append(receipts, rec)
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"receipts": receipts})
}

// ParseSampleStackItems reads the sample stack's metering-table items:
//
//	{"create_timestamp": 113123, "customerIdentifier": "ifAPi5AcF3",
//	 "dimension_usage": [{"dimension": "users", "value": 3}], "metering_pending": "true"}
//
// as plain JSON or DynamoDB JSON ({"N": "113123"}, {"S": ...}, {"L": [...]}, {"M": {...}}),
// one item or an array of them.
func ParseSampleStackItems(b []byte) ([]mpsaas.UsageRequest, error) {
	var raw any
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "invalid JSON body: %v", err)
	}
	var items []any
	switch v := raw.(type) {
	case []any:
		items = v
	case map[string]any:
		items = []any{v}
	default:
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "body must be a metering-table item or an array of them")
	}
	if len(items) == 0 || len(items) > 1000 {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "send 1 to 1000 items (got %d)", len(items))
	}
	out := make([]mpsaas.UsageRequest, 0, len(items))
	for i, it := range items {
		m, ok := undynamo(it).(map[string]any)
		if !ok {
			return nil, mpsaas.Errorf(mpsaas.EINVALID, "item %d is not an object", i+1)
		}
		cust, _ := m["customerIdentifier"].(string)
		if cust == "" {
			return nil, mpsaas.Errorf(mpsaas.EINVALID, "item %d: customerIdentifier is required", i+1)
		}
		ts, err := number(m["create_timestamp"])
		if err != nil || ts <= 0 || ts > 1<<40 {
			return nil, mpsaas.Errorf(mpsaas.EINVALID, "item %d: create_timestamp must be UNIX seconds", i+1)
		}
		dims, ok := m["dimension_usage"].([]any)
		if !ok || len(dims) == 0 {
			return nil, mpsaas.Errorf(mpsaas.EINVALID, "item %d: dimension_usage must be a non-empty list", i+1)
		}
		req := mpsaas.UsageRequest{IdempotencyKey: fmt.Sprintf("sample-stack:%s:%d", cust, ts)}
		for j, d := range dims {
			dm, ok := d.(map[string]any)
			if !ok {
				return nil, mpsaas.Errorf(mpsaas.EINVALID, "item %d: dimension_usage[%d] is not an object", i+1, j)
			}
			name, _ := dm["dimension"].(string)
			v, err := number(dm["value"])
			if err != nil {
				return nil, mpsaas.Errorf(mpsaas.EINVALID, "item %d: dimension_usage[%d].value must be a whole number", i+1, j)
			}
			req.Records = append(req.Records, mpsaas.Usage{Customer: cust, Dimension: name, Quantity: v, Time: time.Unix(ts, 0).UTC()})
		}
		out = append(out, req)
	}
	return out, nil
}

// undynamo turns DynamoDB JSON into plain values; plain JSON passes through.
func undynamo(v any) any {
	switch x := v.(type) {
	case map[string]any:
		if len(x) == 1 {
			for k, inner := range x {
				switch k {
				case "S", "N", "BOOL":
					return inner
				case "L":
					if l, ok := inner.([]any); ok {
						out := make([]any, len(l))
						for i, e := range l {
							out[i] = undynamo(e)
						}
						return out
					}
				case "M":
					return undynamo(inner)
				}
			}
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = undynamo(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = undynamo(e)
		}
		return out
	}
	return v
}

func number(v any) (int64, error) {
	switch x := v.(type) {
	case json.Number:
		return strconv.ParseInt(x.String(), 10, 64)
	case string:
		return strconv.ParseInt(x, 10, 64)
	}
	return 0, fmt.Errorf("not a number: %v", v)
}

func (a *UsageAPI) handleLedger(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := mpsaas.LedgerFilter{SubscriberKey: q.Get("customer"), State: q.Get("state")}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			a.fail(w, mpsaas.Errorf(mpsaas.EINVALID, "after must be a non-negative integer"))
			return
		}
		f.AfterID = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			a.fail(w, mpsaas.Errorf(mpsaas.EINVALID, "limit must be between 1 and 10000"))
			return
		}
		f.Limit = n
	}
	if f.SubscriberKey != "" && a.Subscribers != nil {
		// Any name of the buyer: key, CustomerIdentifier, license, linked account.
		sub, err := a.Subscribers.Subscriber(r.Context(), f.SubscriberKey)
		switch {
		case err == nil:
			f.SubscriberKey = sub.Key
		case mpsaas.ErrorCode(err) != mpsaas.ENOTFOUND:
			a.fail(w, err)
			return
		}
	}
	entries, err := a.Ledger.Ledger(r.Context(), f)
	if err != nil {
		a.fail(w, err)
		return
	}
	if entries == nil {
		entries = []mpsaas.LedgerEntry{}
	}
	if err := a.withLinkedAccounts(r.Context(), entries); err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": entries})
}

// withLinkedAccounts adds the seller's linked account id of each entry's
// buyer (one lookup per buyer on the page).
func (a *UsageAPI) withLinkedAccounts(ctx context.Context, entries []mpsaas.LedgerEntry) error {
	if a.Subscribers == nil {
		return nil
	}
	linked := map[string]string{}
	for i := range entries {
		key := entries[i].SubscriberKey
		id, ok := linked[key]
		if !ok {
			sub, err := a.Subscribers.Subscriber(ctx, key)
			switch {
			case err == nil:
				id = sub.LinkedAccountID
			case mpsaas.ErrorCode(err) != mpsaas.ENOTFOUND:
				return err
			}
			linked[key] = id
		}
		entries[i].LinkedAccountID = id
	}
	return nil
}

func (a *UsageAPI) handleStatus(w http.ResponseWriter, r *http.Request) {
	sum, err := a.Ledger.MeterSummary(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"states": sum})
}

func (a *UsageAPI) handleReplay(w http.ResponseWriter, r *http.Request) {
	var body struct {
		IDs []int64 `json:"ids"`
	}
	if err := decodeStrict(w, r, &body); err != nil {
		a.fail(w, err)
		return
	}
	n, err := a.Metering.Replay(r.Context(), body.IDs)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"replayed": n})
}

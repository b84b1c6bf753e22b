package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas/webhook"
)

// TestReceiver: the example redeems a claim code against (a stand-in for)
// mpsaas's claims API and links the account; it takes webhooks signed by
// mpsaas's own signer, refuses forged or stale ones, and applies each
// change once, newest version last.
func TestReceiver(t *testing.T) {
	claims := 0
	mpsaas := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct{ AccountID string }
		_ = json.NewDecoder(r.Body).Decode(&body)
		if r.URL.Path != "/v1/claims/CODE1" || r.Header.Get("Authorization") != "Bearer key" || !strings.HasPrefix(body.AccountID, "acct-") {
			http.Error(w, `{"error":"no"}`, http.StatusNotFound)
			return
		}
		if claims++; claims > 1 {
			http.Error(w, `{"error":"already redeemed"}`, http.StatusConflict)
			return
		}
		_, _ = w.Write([]byte(`{"subscriberKey":"license:l-1","access":"","version":0}`))
	}))
	defer mpsaas.Close()
	secret := []byte("webhook-secret-0123456789")
	h := newApp(config{MpsaasURL: mpsaas.URL, APIKey: "key", WebhookSecret: string(secret)})
	do := func(method, path string, body string, header map[string]string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		for k, v := range header {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := do("GET", "/signup?code=CODE1", "", nil); rec.Code != 200 || !strings.Contains(rec.Body.String(), `value="CODE1"`) {
		t.Fatalf("sign-up form: %d %s", rec.Code, rec.Body)
	}
	form := url.Values{"code": {"CODE1"}, "email": {"ann@acme.example"}}.Encode()
	ct := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	if rec := do("POST", "/signup", form, ct); rec.Code != 200 || !strings.Contains(rec.Body.String(), "linked to account acct-1") {
		t.Fatalf("sign-up: %d %s", rec.Code, rec.Body)
	}
	if rec := do("POST", "/signup", form, ct); rec.Code != http.StatusConflict {
		t.Errorf("second sign-up with the code: %d", rec.Code)
	}
	hook := func(key, access string, version int, at time.Time, forge bool) int {
		body := `{"idempotencyKey":"` + key + `","access":"` + access + `","version":` + string(rune('0'+version)) + `,"subscriber":{"key":"license:l-1","linkedAccountId":"acct-1"}}`
		sig := webhook.Sign(secret, []byte(body), at)
		if forge {
			sig = webhook.Sign([]byte("another-secret-0123456789"), []byte(body), at)
		}
		return do("POST", "/hooks/mpsaas", body, map[string]string{"X-Mpsaas-Signature": sig}).Code
	}
	now := time.Now()
	for name, code := range map[string]int{
		"forged":  hook("license:l-1:1", "granted", 1, now, true),
		"stale":   hook("license:l-1:1", "granted", 1, now.Add(-time.Hour), false),
		"granted": hook("license:l-1:1", "granted", 1, now, false),
		"again":   hook("license:l-1:1", "granted", 1, now, false),
	} {
		want := map[string]int{"forged": 401, "stale": 401, "granted": 200, "again": 200}[name]
		if code != want {
			t.Errorf("%s webhook: %d, want %d", name, code, want)
		}
	}
	// An older change arriving late does not undo a newer one.
	hook("license:l-1:3", "revoked", 3, now, false)
	hook("license:l-1:2", "pending-cancellation", 2, now, false)
	var accounts map[string]account
	_ = json.Unmarshal(do("GET", "/accounts", "", nil).Body.Bytes(), &accounts)
	if a := accounts["acct-1"]; a.Access != "revoked" || a.Version != 3 || a.SubscriberKey != "license:l-1" {
		t.Errorf("account = %+v", a)
	}
}

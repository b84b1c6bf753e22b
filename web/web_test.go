package web_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/subscription"
	"github.com/mpsaas/mpsaas/web"
)

// fakeSubs registers every well-formed request.
type fakeSubs struct{}

func (fakeSubs) Resolve(context.Context, string, subscription.ResolveOptions) (*mpsaas.Subscriber, error) {
	return &mpsaas.Subscriber{Key: "K"}, nil
}
func (fakeSubs) Register(context.Context, string, mpsaas.Contact) (*mpsaas.Subscriber, error) {
	return &mpsaas.Subscriber{Key: "K"}, nil
}
func (fakeSubs) RegisterWithToken(_ context.Context, tok string, _ mpsaas.Contact) (*mpsaas.Subscriber, error) {
	if tok == "" {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "missing token")
	}
	return &mpsaas.Subscriber{Key: "K", State: mpsaas.State{Status: mpsaas.StatusActive}}, nil
}
func (fakeSubs) Get(context.Context, string) (*mpsaas.Subscriber, error) {
	return nil, mpsaas.Errorf(mpsaas.ENOTFOUND, "no")
}
func (fakeSubs) Claim(context.Context, string, string, string) (*mpsaas.Subscriber, error) {
	return nil, mpsaas.Errorf(mpsaas.ENOTFOUND, "no")
}

func TestAPIOnly(t *testing.T) {
	h := web.New(web.Config{Secret: []byte(strings.Repeat("s", 32)), APIOnly: true, CORSOrigins: []string{"https://landing.example"}}, fakeSubs{})
	for _, tt := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/", "", 404},
		{"POST", "/fulfillment", "x-amzn-marketplace-token=t", 404},
		{"GET", "/healthz", "", 200},
		{"POST", "/subscriber", `{"regToken":"t","companyName":"A","contactPerson":"B","contactPhone":"+1 555 0100","contactEmail":"b@a.example"}`, 200},
		{"POST", "/subscriber", `{"regToken":"","companyName":"A","contactPerson":"B","contactPhone":"+1 555 0100","contactEmail":"b@a.example"}`, 400},
		{"OPTIONS", "/subscriber", "", 204},
	} {
		req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
		req.Header.Set("Origin", "https://landing.example")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tt.want {
			t.Errorf("%s %s = %d, want %d", tt.method, tt.path, rec.Code, tt.want)
		}
		if tt.path == "/subscriber" && rec.Header().Get("Access-Control-Allow-Origin") != "https://landing.example" {
			t.Errorf("%s %s: no CORS header for the allowed origin", tt.method, tt.path)
		}
	}
	// A page with full routes answers the same POST with the registration form.
	full := web.New(web.Config{Secret: []byte(strings.Repeat("s", 32))}, fakeSubs{})
	req := httptest.NewRequest("POST", "/fulfillment", strings.NewReader("x-amzn-marketplace-token=t"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	full.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "register-form") {
		t.Errorf("full site fulfillment = %d", rec.Code)
	}
	if rec.Header().Get("Content-Security-Policy") == "" || rec.Header().Get("X-Frame-Options") != "DENY" {
		t.Error("security headers missing")
	}
}

package web_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/web"
)

// TestOpenAPIMatchesTheRoutes (issue 12): every JSON API route the server
// registers is in the OpenAPI document, with its method, and every
// documented operation is a registered route; the document is served.
func TestOpenAPIMatchesTheRoutes(t *testing.T) {
	var doc struct {
		OpenAPI string                               `json:"openapi"`
		Paths   map[string]map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(web.OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi %q, want 3.1.0", doc.OpenAPI)
	}
	s := web.New(web.Config{Secret: []byte(strings.Repeat("s", 32)), Ready: func(context.Context) error { return nil }}, nil)
	(&web.UsageAPI{Keys: []string{"key-0123456789abcdef"}, Subscribers: noSubscribers{}, Claims: s}).Register(s)
	routes := s.Routes()
	isAPI := func(path string) bool {
		return strings.HasPrefix(path, "/v1/") || path == "/subscriber" || path == "/healthz" || path == "/readyz" || path == "/openapi.json"
	}
	var documented []string
	for path, ops := range doc.Paths {
		for method, op := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
			if op["operationId"] == nil || op["responses"] == nil {
				t.Errorf("%s %s: no operationId or responses", method, path)
			}
		}
	}
	for _, r := range routes {
		method, path, _ := strings.Cut(r, " ")
		if isAPI(path) && !slices.Contains(documented, method+" "+path) {
			t.Errorf("route %s is not in openapi.json", r)
		}
	}
	for _, d := range documented {
		if !slices.Contains(routes, d) {
			t.Errorf("openapi.json documents %s, which the server does not register", d)
		}
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.json", nil))
	if rec.Code != 200 || !json.Valid(rec.Body.Bytes()) || rec.Header().Get("Content-Type") != "application/json" {
		t.Errorf("GET /openapi.json: %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
}

// noSubscribers knows no buyer (the entitlements API is mounted only with
// a Subscribers).
type noSubscribers struct{}

func (noSubscribers) Subscriber(ctx context.Context, customer string) (*mpsaas.Subscriber, error) {
	return nil, mpsaas.Errorf(mpsaas.ENOTFOUND, "no buyer")
}

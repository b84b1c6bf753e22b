package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

type fakeGauges struct{}

func (fakeGauges) Gauges(context.Context, time.Time) (int64, time.Duration, time.Duration, int64, error) {
	return 2, time.Minute, 0, 4096, nil
}

// TestGrafanaDashboard: every query of the dashboard in the repository
// (metrics/grafana-dashboard.json) names only metrics that /metrics
// actually serves.
func TestGrafanaDashboard(t *testing.T) {
	m := New(fakeGauges{})
	m.ObserveRequest("GET /healthz", 200, time.Millisecond)
	m.ObserveRun(Run{Sealed: 1, Billed: 1, Calls: 1})
	m.ObserveDelivery("webhook", errors.New("down"))
	m.ObserveReconcile(2, nil)
	m.ObserveRegistration("prod")
	m.ObserveIngest(3, 1)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	served := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if name, _, ok := strings.Cut(line, " "); ok && strings.HasPrefix(name, "mpsaas_") {
			name, _, _ = strings.Cut(name, "{")
			served[name] = true
		}
	}
	raw, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title      string
		Templating struct{ List []struct{ Name, Type string } }
		Panels     []struct {
			Title      string
			Datasource struct{ UID string }
			Targets    []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	if len(dash.Templating.List) != 1 || dash.Templating.List[0].Type != "datasource" {
		t.Errorf("templating %+v: want one datasource variable (no data source baked in)", dash.Templating)
	}
	name := regexp.MustCompile(`mpsaas_[a-z0-9_]+`)
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Datasource.UID != "${"+dash.Templating.List[0].Name+"}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: data source %q, %d queries", p.Title, p.Datasource.UID, len(p.Targets))
		}
		for _, tg := range p.Targets {
			for _, n := range name.FindAllString(tg.Expr, -1) {
				used[strings.TrimSuffix(n, "_bucket")] = true
				if !served[n] {
					t.Errorf("panel %q queries %s, which /metrics does not serve", p.Title, n)
				}
			}
		}
	}
	// And every mpsaas metric is on the dashboard.
	for n := range served {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
		if !used[base] && !used[n] {
			t.Errorf("%s is served but on no panel", n)
		}
	}
}

package admin

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
)

// TestCSVIsBounded: an export longer than maxCSVRows ends with the URL of
// the rest, which goes on from the last buyer written.
func TestCSVIsBounded(t *testing.T) {
	old := maxCSVRows
	maxCSVRows = 3
	t.Cleanup(func() { maxCSVRows = old })
	got := exportCSVForTest(t, 5, "")
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != 1+3+1 || !strings.Contains(lines[4], "# more buyers: /admin/buyers.csv?after=b2") {
		t.Fatalf("bounded export:\n%s", got)
	}
	rest := exportCSVForTest(t, 5, "b2")
	if lines := strings.Split(strings.TrimSpace(rest), "\n"); len(lines) != 1+2 || !strings.HasPrefix(lines[1], "b3,") {
		t.Errorf("the rest:\n%s", rest)
	}
}

// exportCSVForTest runs buyersCSV over n buyers b0..b(n-1) of a fake store.
func exportCSVForTest(t *testing.T, n int, after string) string {
	t.Helper()
	st := &listStore{}
	for i := range n {
		st.subs = append(st.subs, &mpsaas.Subscriber{Key: fmt.Sprintf("b%d", i)})
	}
	c := &Console{store: st, log: slog.New(slog.DiscardHandler), clock: mpsaas.SystemClock{}}
	rec := httptest.NewRecorder()
	u := "/admin/buyers.csv"
	if after != "" {
		u += "?after=" + after
	}
	c.buyersCSV(rec, httptest.NewRequest("GET", u, nil), "")
	return rec.Body.String()
}

// listStore pages a slice of buyers in key order.
type listStore struct {
	Store
	subs []*mpsaas.Subscriber
}

func (s *listStore) ListSubscribers(_ context.Context, f mpsaas.SubscriberFilter) (mpsaas.SubscriberPage, error) {
	var p mpsaas.SubscriberPage
	for i, sub := range s.subs {
		if sub.Key <= f.After {
			continue
		}
		p.Subscribers = append(p.Subscribers, sub)
		if len(p.Subscribers) == f.PageSize() {
			if i < len(s.subs)-1 {
				p.Next = sub.Key
			}
			break
		}
	}
	return p, nil
}

// slowLedger is a store whose ledger searches take until their deadline,
// with flagged usage in its summary.
type slowLedger struct{ listStore }

func (slowLedger) MeterSummary(context.Context) (map[string]mpsaas.StateCount, error) {
	return map[string]mpsaas.StateCount{"flagged": {Records: 1, Quantity: 1}}, nil
}

func (slowLedger) Ledger(ctx context.Context, _ mpsaas.LedgerFilter) ([]mpsaas.LedgerEntry, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestMeteringPageBoundsLedgerSearches: a ledger search that takes too
// long is cut at its budget and the page says the list is incomplete,
// instead of the request timing out.
func TestMeteringPageBoundsLedgerSearches(t *testing.T) {
	old := ledgerBudget
	ledgerBudget = 50 * time.Millisecond
	t.Cleanup(func() { ledgerBudget = old })
	hash, err := HashPassword("a long enough password", 1000)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{PasswordHash: hash, Secret: []byte(strings.Repeat("s", 32))}, &slowLedger{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	start := time.Now()
	c.metering(rec, httptest.NewRequest("GET", "/admin/metering", nil), "session")
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `id="cut"`) || time.Since(start) > 5*time.Second {
		t.Errorf("metering page: %d after %s\n%s", rec.Code, time.Since(start), rec.Body.String())
	}
}

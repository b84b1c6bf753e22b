package web

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/subscription"
)

// oneSubscriber serves a fixed subscriber to the status page.
type oneSubscriber struct{ sub *mpsaas.Subscriber }

func (o oneSubscriber) Resolve(context.Context, string, subscription.ResolveOptions) (*mpsaas.Subscriber, error) {
	return o.sub, nil
}
func (o oneSubscriber) Register(context.Context, string, mpsaas.Contact) (*mpsaas.Subscriber, error) {
	return o.sub, nil
}
func (o oneSubscriber) RegisterWithToken(context.Context, string, mpsaas.Contact) (*mpsaas.Subscriber, error) {
	return o.sub, nil
}
func (o oneSubscriber) Get(context.Context, string) (*mpsaas.Subscriber, error) { return o.sub, nil }
func (o oneSubscriber) Claim(context.Context, string, string, string) (*mpsaas.Subscriber, error) {
	return o.sub, nil
}

// TestStatusPageWording (issue 14, item 5): a subscription that ended
// before AWS confirmed it says so, rather than "cancelled" next to
// "waiting for confirmation".
func TestStatusPageWording(t *testing.T) {
	for _, c := range []struct {
		status       mpsaas.Status
		access       mpsaas.Access
		want, refuse string
	}{
		{mpsaas.StatusPending, "", "waiting for confirmation from AWS Marketplace", "ended"},
		{mpsaas.StatusCancelled, "", "ended before AWS Marketplace confirmed it", "waiting for confirmation"},
		{mpsaas.StatusFailed, "", "ended before AWS Marketplace confirmed it", "waiting for confirmation"},
		{mpsaas.StatusActive, mpsaas.AccessGranted, "granted", "waiting for confirmation"},
		{mpsaas.StatusUnsubscribePending, mpsaas.AccessPendingCancellation, "being cancelled", "waiting for confirmation"},
		{mpsaas.StatusCancelled, mpsaas.AccessRevoked, "Your subscription has ended", "waiting for confirmation"},
		{mpsaas.StatusFailed, mpsaas.AccessRevoked, "could not be completed", "waiting for confirmation"},
	} {
		sub := &mpsaas.Subscriber{Key: "k", Contact: mpsaas.Contact{CompanyName: "Acme", ContactPerson: "Ann", ContactEmail: "a@acme.example"},
			State: mpsaas.State{Status: c.status}, Access: c.access}
		s := New(Config{Secret: []byte(strings.Repeat("x", 32)), ProductName: "Widgets"}, oneSubscriber{sub})
		srv := httptest.NewServer(s)
		resp, err := http.Get(srv.URL + s.statusURL("k"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		srv.Close()
		page := string(b)
		if resp.StatusCode != 200 || !strings.Contains(page, c.want) || strings.Contains(page, c.refuse) {
			t.Errorf("%s/%q: status %d; want %q and not %q in\n%s", c.status, c.access, resp.StatusCode, c.want, c.refuse, page)
		}
	}
}

// TestPageTitles: the home page is titled by the product alone, not
// "Example SaaS · Example SaaS".
func TestPageTitles(t *testing.T) {
	s := New(Config{Secret: []byte(strings.Repeat("x", 32)), ProductName: "Widgets"}, oneSubscriber{&mpsaas.Subscriber{Key: "k"}})
	srv := httptest.NewServer(s)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(b), "Widgets · Widgets") || !strings.Contains(string(b), "<title>Widgets") {
		t.Errorf("home page title in:\n%.400s", b)
	}
}

// TestEmulatorModeIsVisible (issue 9): against an emulator, every page's
// footer and /healthz say so.
func TestEmulatorModeIsVisible(t *testing.T) {
	for _, em := range []bool{false, true} {
		s := New(Config{Secret: []byte(strings.Repeat("x", 32)), ProductName: "Widgets", Emulator: em}, oneSubscriber{&mpsaas.Subscriber{Key: "k"}})
		srv := httptest.NewServer(s)
		for _, path := range []string{"/", "/healthz", s.statusURL("k")} {
			resp, err := http.Get(srv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if got := strings.Contains(strings.ToLower(string(b)), "emulator"); got != em {
				t.Errorf("emulator %v: %s mentions the emulator: %v\n%.300s", em, path, got, b)
			}
		}
		srv.Close()
	}
}

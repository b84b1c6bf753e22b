package emulator_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/mpsaas/mpsaas/emulator"
)

func TestSimulatorUI(t *testing.T) {
	em := emulator.New(emulator.DefaultConfig())
	srv := httptest.NewServer(em.Handler())
	defer srv.Close()
	if _, err := em.AddProduct(emulator.Product{Code: "c1", Type: emulator.ProductContract, Dimensions: []emulator.Dimension{{Name: "seats"}, {Name: "gb"}}, FulfillmentURL: "https://seller.example/fulfillment"}); err != nil {
		t.Fatal(err)
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	post := func(path string, form url.Values) *http.Response {
		t.Helper()
		resp, err := noRedirect.PostForm(srv.URL+path, form)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := post("/emulator/ui/buyers", url.Values{"name": {"Acme"}, "accountId": {"999988887777"}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("add buyer: %d", resp.StatusCode)
	}
	if resp := post("/emulator/ui/buyers", url.Values{"accountId": {"12ab"}}); !strings.Contains(resp.Header.Get("Location"), "error=") {
		t.Errorf("bad account id: redirect %q, want an error", resp.Header.Get("Location"))
	}
	resp, err := http.PostForm(srv.URL+"/emulator/ui/subscribe", url.Values{"productCode": {"c1"}, "buyerAccountId": {"999988887777"}, "ent.c1.seats": {"7"}, "ent.c1.gb": {""}})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	_, _ = io.Copy(&b, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(b.String(), `action="https://seller.example/fulfillment"`) || !strings.Contains(b.String(), `name="x-amzn-marketplace-token"`) {
		t.Fatalf("setup page: %d %s", resp.StatusCode, b.String())
	}
	subs := em.Subscriptions()
	if len(subs) != 1 || subs[0].Entitlements["seats"] != 7 || len(subs[0].Entitlements) != 1 {
		t.Fatalf("subscriptions = %+v, want one with seats=7", subs)
	}
	id := subs[0].AgreementID
	if resp := post("/emulator/ui/subscriptions/"+id+"/entitlements", url.Values{"ent.seats": {"-3"}}); !strings.Contains(resp.Header.Get("Location"), "error=") {
		t.Errorf("negative quantity accepted")
	}
	post("/emulator/ui/subscriptions/"+id+"/entitlements", url.Values{"ent.seats": {"9"}, "ent.gb": {"100"}})
	if got := em.Subscriptions()[0].Entitlements; got["seats"] != 9 || got["gb"] != 100 {
		t.Errorf("entitlements after change = %v", got)
	}
	post("/emulator/ui/subscriptions/"+id+"/expire", nil)
	if got := em.Subscriptions()[0].Status; got != emulator.StatusExpired {
		t.Errorf("status after expire = %s", got)
	}
	if resp := post("/emulator/ui/subscriptions/"+id+"/cancel", nil); !strings.Contains(resp.Header.Get("Location"), "error=") {
		t.Errorf("cancelling an expired agreement did not report an error")
	}
	page, err := http.Get(srv.URL + "/emulator/")
	if err != nil || page.StatusCode != 200 {
		t.Fatalf("index: %v", err)
	}
	page.Body.Close()
}

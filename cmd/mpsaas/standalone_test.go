package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/emulator"
)

// TestServeWithStandaloneEmulator: serve follows a separate `mpsaas
// emulator` (MPSAAS_EMULATOR_URL) for its API and its notifications.
func TestServeWithStandaloneEmulator(t *testing.T) {
	em := emulator.New(emulator.DefaultConfig())
	if err := seedDemo(em, "http://unused/fulfillment", mpsaas.ListingSubscriptions, "Standalone"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(em.Handler())
	defer srv.Close()
	app := startApp(t, mpsaas.ListingSubscriptions, "MPSAAS_EMULATOR", "auto", "MPSAAS_EMULATOR_URL", srv.URL)
	if app.em != nil {
		t.Fatal("an embedded emulator started although MPSAAS_EMULATOR_URL is set")
	}
	res, err := em.Subscribe(emulator.SubscribeOptions{StartedAt: em.Clock.Now().Add(-24 * time.Hour), ProductCode: demoLicenseProduct, BuyerAccountID: "123456789012"})
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`{"regToken":%q,"companyName":"Acme","contactPerson":"Ann","contactPhone":"+1 555 0100","contactEmail":"ann@acme.example"}`, res.Token)
	resp, err := http.Post(app.URL()+"/subscriber", "application/json", strings.NewReader(body))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("register: %v %v", resp, err)
	}
	resp.Body.Close()
	// Granted only once the emulator's agreement events were followed.
	app.sink.waitFor(t, demoLicenseProduct, mpsaas.AccessGranted)
}

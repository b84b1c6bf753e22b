package emulator_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/mpsaas/mpsaas/emulator"
)

// FuzzEmulatorRequest sends arbitrary bodies to every operation over both
// protocols: the emulator must answer 200 or a well-formed 4xx AWS error,
// never panic or answer 5xx.
func FuzzEmulatorRequest(f *testing.F) {
	f.Add(uint8(0), []byte(`{"RegistrationToken":"x"}`))
	f.Add(uint8(1), []byte(`{"ProductCode":"p","UsageRecords":[{"CustomerIdentifier":"c","Dimension":"users","Quantity":1,"Timestamp":1795000000.5,"UsageAllocations":[{"AllocatedUsageQuantity":1,"Tags":[{"Key":"k","Value":"v"}]}]}]}`))
	f.Add(uint8(2), []byte(`{"ProductCode":"p","Timestamp":1795000000,"UsageDimension":"users","UsageQuantity":3,"ClientToken":"t"}`))
	f.Add(uint8(3), []byte(`{"ProductCode":"p","Filter":{"CUSTOMER_AWS_ACCOUNT_ID":["1"]},"MaxResults":2,"NextToken":"dj"}`))
	f.Add(uint8(4), []byte{0xbf, 0x6b, 'P', 'r', 'o', 'd', 'u', 'c', 't', 'C', 'o', 'd', 'e', 0x61, 'p', 0xff})
	em := emulator.New(emulator.DefaultConfig())
	if _, err := em.AddProduct(emulator.Product{Code: "p", Type: emulator.ProductContract, Dimensions: []emulator.Dimension{{Name: "users"}}}); err != nil {
		f.Fatal(err)
	}
	if _, err := em.AddBuyer(emulator.Buyer{AccountID: "1"}); err != nil {
		f.Fatal(err)
	}
	if _, err := em.Subscribe(emulator.SubscribeOptions{ProductCode: "p", BuyerAccountID: "1"}); err != nil {
		f.Fatal(err)
	}
	h := em.Handler()
	targets := []string{"AWSMPMeteringService.ResolveCustomer", "AWSMPMeteringService.BatchMeterUsage", "AWSMPMeteringService.MeterUsage", "AWSMPEntitlementService.GetEntitlements"}
	f.Fuzz(func(t *testing.T, op uint8, body []byte) {
		var req *http.Request
		cborReq := op >= 4
		if cborReq {
			req = httptest.NewRequest("POST", "/service/AWSMPEntitlementService/operation/GetEntitlements", bytes.NewReader(body))
			req.Header.Set("Smithy-Protocol", "rpc-v2-cbor")
			req.Header.Set("Content-Type", "application/cbor")
		} else {
			req = httptest.NewRequest("POST", "/", bytes.NewReader(body))
			req.Header.Set("X-Amz-Target", targets[op])
			req.Header.Set("Content-Type", "application/x-amz-json-1.1")
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 && (rec.Code < 400 || rec.Code > 499) {
			t.Fatalf("status %d for %q", rec.Code, body)
		}
		if rec.Code == 200 {
			return
		}
		var e map[string]any
		var err error
		if cborReq {
			err = cbor.Unmarshal(rec.Body.Bytes(), &e)
		} else {
			err = json.Unmarshal(rec.Body.Bytes(), &e)
		}
		if err != nil || e["__type"] == nil || e["message"] == nil {
			t.Fatalf("error body %q (%v) lacks __type/message", rec.Body.Bytes(), err)
		}
	})
}

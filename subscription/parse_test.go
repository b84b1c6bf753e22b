package subscription_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/subscription"
)

var received = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func TestParseMessageFixtures(t *testing.T) {
	tests := []struct {
		file      string
		kind      mpsaas.EventKind
		id        string
		ci        string
		license   string
		agreement string
		freeTrial *bool
		time      string
	}{
		{file: "sns-subscribe-success.json", kind: mpsaas.EventSubscribeSuccess, id: "sns:63a3f6b6-d533-4a47-aef9-fcf5cf758c76", ci: "X01EXAMPLEX", freeTrial: ptr(true), time: "2026-09-01T12:00:00Z"},
		{file: "sns-entitlement-doc-sample.json", kind: mpsaas.EventEntitlementUpdated, id: "sns:0b1a4b1e-2f5e-4c11-9b7e-1d0b7d2c9a11", ci: "X01EXAMPLEX", time: "2026-09-01T12:05:00Z"},
		{file: "eventbridge-license-updated.json", kind: mpsaas.EventLicenseUpdated, id: "eb:3a5b7c9d-1111-2222-3333-444455556666", license: "l-0123456789abcdef0123456789abcdef", agreement: "agmt-1234567890abcdefghijk", time: "2024-08-30T21:36:03Z"},
		{file: "eventbridge-agreement-ended.json", kind: mpsaas.EventAgreementEnded, id: "eb:9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff", agreement: "agmt-1234567890abcdefghijk", time: "2024-08-30T21:40:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			body, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			evs, err := subscription.ParseMessage(body, received)
			if err != nil {
				t.Fatalf("ParseMessage: %v", err)
			}
			if len(evs) != 1 {
				t.Fatalf("events = %d, want 1", len(evs))
			}
			e := evs[0]
			if e.Raw != string(body) {
				t.Errorf("Raw = %.80q…, want the message as received", e.Raw)
			}
			if e.Kind != tt.kind || e.ID != tt.id || e.CustomerIdentifier != tt.ci || e.LicenseID != tt.license || e.AgreementID != tt.agreement {
				t.Errorf("event = %+v\nwant kind %s id %s ci %q license %q agreement %q", e, tt.kind, tt.id, tt.ci, tt.license, tt.agreement)
			}
			if got := e.Time.Format(time.RFC3339); got != tt.time {
				t.Errorf("time = %s, want %s", got, tt.time)
			}
			if (e.FreeTrial == nil) != (tt.freeTrial == nil) || (e.FreeTrial != nil && *e.FreeTrial != *tt.freeTrial) {
				t.Errorf("free trial = %v, want %v", e.FreeTrial, tt.freeTrial)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestParseMessageShapes(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    int
		wantErr bool
	}{
		{name: "raw delivery", body: `{"action":"unsubscribe-pending","customer-identifier":"C1","product-code":"p"}`, want: 1},
		{name: "Message as an object", body: `{"Type":"Notification","MessageId":"m1","Timestamp":"2026-01-01T00:00:00.000Z","Message":{"action":"subscribe-fail","customer-identifier":"C1","product-code":"p"}}`, want: 1},
		{name: "free trial as a JSON boolean", body: `{"action":"subscribe-success","customer-identifier":"C1","product-code":"p","isFreeTrialTermPresent":false}`, want: 1},
		{name: "PascalCase keys of older docs", body: `{"action":"subscribe-success","CustomerIdentifier":"C1","ProductCode":"p"}`, want: 1},
		{name: "acceptor event is ignored", body: `{"id":"x","detail-type":"Purchase Agreement Created - Acceptor","source":"aws.agreement-marketplace","time":"2026-01-01T00:00:00Z","detail":{"agreement":{"id":"agmt-1"}}}`, want: 0},
		{name: "not JSON", body: `subscribe-success`, wantErr: true},
		{name: "JSON array", body: `[]`, wantErr: true},
		{name: "unknown shape", body: `{"hello":"world"}`, wantErr: true},
		{name: "unknown action", body: `{"action":"explode","customer-identifier":"C1","product-code":"p"}`, wantErr: true},
		{name: "missing customer", body: `{"action":"subscribe-success","product-code":"p"}`, wantErr: true},
		{name: "missing product", body: `{"action":"subscribe-success","customer-identifier":"C1"}`, wantErr: true},
		{name: "envelope without MessageId", body: `{"Type":"Notification","Timestamp":"2026-01-01T00:00:00Z","Message":"{}"}`, wantErr: true},
		{name: "envelope with bad timestamp", body: `{"Type":"Notification","MessageId":"m","Timestamp":"yesterday","Message":"{\"action\":\"subscribe-success\",\"customer-identifier\":\"C\",\"product-code\":\"p\"}"}`, wantErr: true},
		{name: "subscription confirmation", body: `{"Type":"SubscriptionConfirmation","MessageId":"m","Timestamp":"2026-01-01T00:00:00Z","Message":"confirm"}`, wantErr: true},
		{name: "envelope from another topic", body: `{"Type":"Notification","MessageId":"m","TopicArn":"arn:aws:sns:us-east-1:1:other","Timestamp":"2026-01-01T00:00:00Z","Message":"{\"action\":\"subscribe-success\",\"customer-identifier\":\"C\",\"product-code\":\"p\"}"}`, wantErr: true},
		{name: "EventBridge from another source", body: `{"id":"x","detail-type":"License Updated - Manufacturer","source":"aws.ec2","time":"2026-01-01T00:00:00Z","detail":{}}`, wantErr: true},
		{name: "EventBridge without agreement", body: `{"id":"x","detail-type":"Purchase Agreement Created - Proposer","source":"aws.agreement-marketplace","time":"2026-01-01T00:00:00Z","detail":{}}`, wantErr: true},
		{name: "license event without license", body: `{"id":"x","detail-type":"License Updated - Manufacturer","source":"aws.agreement-marketplace","time":"2026-01-01T00:00:00Z","detail":{"agreement":{"id":"agmt-1"}}}`, wantErr: true},
		{name: "EventBridge with bad time", body: `{"id":"x","detail-type":"Purchase Agreement Created - Proposer","source":"aws.agreement-marketplace","time":"noon","detail":{"agreement":{"id":"agmt-1"}}}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs, err := subscription.ParseMessage([]byte(tt.body), received)
			if tt.wantErr {
				if mpsaas.ErrorCode(err) != mpsaas.EINVALID {
					t.Fatalf("ParseMessage error = %v, want an EINVALID error", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseMessage: %v", err)
			}
			if len(evs) != tt.want {
				t.Errorf("events = %d, want %d", len(evs), tt.want)
			}
		})
	}
}

func FuzzParseMessage(f *testing.F) {
	for _, name := range []string{"sns-subscribe-success.json", "sns-entitlement-doc-sample.json", "eventbridge-license-updated.json", "eventbridge-agreement-ended.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"action":"subscribe-success","customer-identifier":"C1","product-code":"p","isFreeTrialTermPresent":"TRUE",}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, err := subscription.ParseMessage(body, received)
		if err != nil {
			if mpsaas.ErrorCode(err) != mpsaas.EINVALID {
				t.Fatalf("error %v is not EINVALID", err)
			}
			return
		}
		for _, e := range evs {
			if e.ID == "" || e.Kind == "" || e.Time.IsZero() {
				t.Fatalf("event without id, kind or time: %+v", e)
			}
			if e.CustomerIdentifier == "" && e.LicenseID == "" && e.AgreementID == "" {
				t.Fatalf("event with no identity: %+v", e)
			}
		}
	})
}

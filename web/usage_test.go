package web_test

import (
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/web"
)

func TestParseSampleStackItems(t *testing.T) {
	plain := `{"create_timestamp": 1795000000, "customerIdentifier": "ifAPi5AcF3", "dimension_usage": [{"dimension": "users", "value": 3}, {"dimension": "admin_users", "value": 1}], "metering_pending": "true"}`
	dynamo := `{"create_timestamp": {"N": "1795000000"}, "customerIdentifier": {"S": "ifAPi5AcF3"}, "dimension_usage": {"L": [{"M": {"dimension": {"S": "users"}, "value": {"N": "3"}}}, {"M": {"dimension": {"S": "admin_users"}, "value": {"N": "1"}}}]}, "metering_pending": {"S": "true"}}`
	for name, body := range map[string]string{"plain": plain, "dynamodb": dynamo, "array": "[" + plain + "]"} {
		reqs, err := web.ParseSampleStackItems([]byte(body))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(reqs) != 1 || reqs[0].IdempotencyKey != "sample-stack:ifAPi5AcF3:1795000000" || len(reqs[0].Records) != 2 {
			t.Fatalf("%s: %+v", name, reqs)
		}
		r := reqs[0].Records[0]
		if r.Customer != "ifAPi5AcF3" || r.Dimension != "users" || r.Quantity != 3 || !r.Time.Equal(time.Unix(1795000000, 0)) {
			t.Errorf("%s: record = %+v", name, r)
		}
	}
	for name, body := range map[string]string{
		"not JSON":         `x`,
		"number":           `5`,
		"empty array":      `[]`,
		"no customer":      `{"create_timestamp": 1, "dimension_usage": [{"dimension": "u", "value": 1}]}`,
		"no timestamp":     `{"customerIdentifier": "c", "dimension_usage": [{"dimension": "u", "value": 1}]}`,
		"no usage":         `{"create_timestamp": 1, "customerIdentifier": "c", "dimension_usage": []}`,
		"fractional value": `{"create_timestamp": 1, "customerIdentifier": "c", "dimension_usage": [{"dimension": "u", "value": 1.5}]}`,
	} {
		if _, err := web.ParseSampleStackItems([]byte(body)); mpsaas.ErrorCode(err) != mpsaas.EINVALID {
			t.Errorf("%s: %v, want EINVALID", name, err)
		}
	}
}

func FuzzParseSampleStackItems(f *testing.F) {
	f.Add([]byte(`{"create_timestamp": 1795000000, "customerIdentifier": "c", "dimension_usage": [{"dimension": "users", "value": 3}]}`))
	f.Add([]byte(`[{"create_timestamp": {"N": "1"}, "customerIdentifier": {"S": "c"}, "dimension_usage": {"L": [{"M": {"dimension": {"S": "u"}, "value": {"N": "2"}}}]}}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		reqs, err := web.ParseSampleStackItems(b)
		if err != nil {
			if mpsaas.ErrorCode(err) != mpsaas.EINVALID {
				t.Fatalf("error %v is not EINVALID", err)
			}
			return
		}
		for _, r := range reqs {
			if r.IdempotencyKey == "" || len(r.Records) == 0 {
				t.Fatalf("request without key or records: %+v", r)
			}
			for _, u := range r.Records {
				if u.Customer == "" || u.Time.IsZero() {
					t.Fatalf("record without customer or time: %+v", u)
				}
			}
		}
	})
}

package dynamodb

import (
	"testing"
	"time"
)

func TestLedgerRowsRoundTrip(t *testing.T) {
	h := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC).Unix()
	rows := []ledgerRow{
		{ID: 1<<40 | 7, Sub: "license:l-abc", Dim: "users", Quantity: 5, Time: time.Unix(h, 123456789).UnixNano(), MeterHour: h},
		{ID: 1<<40 | 8, Sub: "license:l-abc", Dim: "users", Quantity: 0, Time: time.Unix(h+59, 0).UnixNano(), MeterHour: h + 3*3600, TagSig: "team\x00a b\x00"},
		{ID: 1<<40 | 9, Sub: "CUST-1", Dim: "requests", Quantity: 2147483647, Time: time.Unix(h-3600, 0).UnixNano(), MeterHour: h},
	}
	got, err := decodeRows(encodeRows(1<<40|5, rows), 1<<40|5)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(rows) {
		t.Fatalf("got %d rows", len(got))
	}
	for i := range rows {
		if got[i] != rows[i] {
			t.Errorf("row %d: %+v, want %+v", i, got[i], rows[i])
		}
	}
	if _, err := decodeRows("1\x1fa", 1); err == nil {
		t.Error("a short record decoded")
	}
}

// FuzzDecodeRows: a ledger part read back from the table never panics.
func FuzzDecodeRows(f *testing.F) {
	f.Add("0\x1fs\x1fd\x1f5\x1fabc\x1f\x1f", int64(1))
	f.Add("", int64(0))
	f.Fuzz(func(t *testing.T, s string, first int64) {
		_, _ = decodeRows(s, first)
	})
}

package dynamodb

import (
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

func TestUsageIDRanges(t *testing.T) {
	for _, tc := range []struct {
		ids  []int64
		want string
	}{
		{nil, ""},
		{[]int64{5}, "5"},
		{[]int64{3, 4, 5, 6, 7, 9, 12, 13}, "3-7,9,12-13"},
	} {
		got := encodeRanges(tc.ids)
		if got != tc.want {
			t.Errorf("encodeRanges(%v) = %q, want %q", tc.ids, got, tc.want)
		}
		in, err := includes(map[string]types.AttributeValue{"usageIds": sv(got), "maxUsageId": nv(100)})
		if err != nil {
			t.Fatal(err)
		}
		member := map[int64]bool{}
		for _, id := range tc.ids {
			member[id] = true
		}
		for id := int64(0); id < 20; id++ {
			if in(id) != member[id] {
				t.Errorf("%q includes %d = %v", got, id, in(id))
			}
		}
	}
	// Records stored before the list: every id up to maxUsageId.
	in, _ := includes(map[string]types.AttributeValue{"maxUsageId": nv(7)})
	if !in(7) || in(8) {
		t.Error("a record without usageIds includes the ids up to its maxUsageId")
	}
	for _, bad := range []string{"x", "5-3", "3,2", "1-2,2", "1-"} {
		if _, err := includes(map[string]types.AttributeValue{"usageIds": sv(bad)}); err == nil {
			t.Errorf("usageIds %q accepted", bad)
		}
	}
	// The cap: a key's ids beyond maxRanges ranges are left for later.
	c := rangeCount{last: -1}
	took := 0
	for i := range maxRanges + 10 {
		if c.add(int64(2 * i)) {
			took++
		}
	}
	if took != maxRanges {
		t.Errorf("took %d separate ids, want %d", took, maxRanges)
	}
	if !c.add(c.last + 1) {
		t.Error("an id that extends the last range is always taken")
	}
}

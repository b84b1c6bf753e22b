package web

import (
	"strings"
	"testing"
	"time"
)

// TestClaimCodes: a code opens to its subscriber key until it expires;
// one sealed with another secret, or altered, does not open; the code
// does not show the key.
func TestClaimCodes(t *testing.T) {
	c := newClaimCodec([]byte(strings.Repeat("s", 32)))
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	code := c.issue("license:l-abc123", now.Add(10*time.Minute))
	if strings.Contains(code, "abc123") {
		t.Errorf("the code shows the key: %s", code)
	}
	key, id, err := c.open(code, now.Add(9*time.Minute))
	if err != nil || key != "license:l-abc123" || len(id) != 32 {
		t.Errorf("open = %q, %q, %v", key, id, err)
	}
	if _, id2, _ := c.open(c.issue("license:l-abc123", now.Add(time.Minute)), now); id2 == id {
		t.Error("two codes for one buyer share an id")
	}
	if _, _, err := c.open(code, now.Add(10*time.Minute)); err == nil {
		t.Error("an expired code opened")
	}
	other := newClaimCodec([]byte(strings.Repeat("o", 32)))
	if _, _, err := other.open(code, now); err == nil {
		t.Error("a code opened with another secret")
	}
	altered := []byte(code)
	altered[len(altered)/2] ^= 1
	for _, bad := range []string{string(altered), "", "!!!", code[:10]} {
		if _, _, err := c.open(bad, now); err == nil {
			t.Errorf("code %q opened", bad)
		}
	}
}

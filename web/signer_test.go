package web

import (
	"strings"
	"testing"
	"time"
)

func TestSigner(t *testing.T) {
	s := signer{secret: []byte("0123456789abcdef0123456789abcdef")}
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	sig := s.sign("register", "license:l-1", now.Add(time.Hour))
	if v, ok := s.verify("register", sig, now); !ok || v != "license:l-1" {
		t.Fatalf("verify = %q, %v", v, ok)
	}
	other := signer{secret: []byte("another secret another secret 12")}
	tests := []struct {
		name    string
		purpose string
		sig     string
		now     time.Time
		s       signer
	}{
		{"expired", "register", sig, now.Add(time.Hour), s},
		{"other purpose", "status", sig, now, s},
		{"other secret", "register", sig, now, other},
		{"tampered value", "register", strings.Replace(sig, sig[:4], "AAAA", 1), now, s},
		{"garbage", "register", "not-a-signature", now, s},
		{"empty", "register", "", now, s},
	}
	for _, tt := range tests {
		if v, ok := tt.s.verify(tt.purpose, tt.sig, tt.now); ok {
			t.Errorf("%s: verify = %q, true; want false", tt.name, v)
		}
	}
}

func FuzzSigner(f *testing.F) {
	s := signer{secret: []byte("0123456789abcdef0123456789abcdef")}
	other := signer{secret: []byte("another secret another secret 12")}
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	f.Add(s.sign("register", "key", now.Add(time.Hour)))
	f.Add("a.b")
	f.Fuzz(func(t *testing.T, sig string) {
		v, ok := s.verify("register", sig, now)
		if !ok {
			return
		}
		// Whatever verifies under one secret must not verify under another,
		// nor for another purpose.
		if _, ok := other.verify("register", sig, now); ok {
			t.Fatalf("signature %q verifies under two secrets", sig)
		}
		if _, ok := s.verify("status", sig, now); ok {
			t.Fatalf("signature %q for value %q verifies for two purposes", sig, v)
		}
	})
}

package web

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mpsaas/mpsaas"
)

// Sign-up handoff (issue 12): with Config.SignupURL, /fulfillment sends
// the buyer to the seller's own sign-up with a claim code, and the
// seller's backend redeems the code (POST /v1/claims/{code}) for the
// buyer's identity. The code is the only thing in the URL: it is sealed
// (AES-GCM, a key derived from the secret), so it says nothing about the
// buyer to whoever sees it; it expires (Config.ClaimTTL) and redeems once
// (the subscriber remembers the last code redeemed).

// DefaultClaimTTL is how long a claim code can be redeemed.
const DefaultClaimTTL = 10 * time.Minute

type claimCodec struct{ aead cipher.AEAD }

func newClaimCodec(secret []byte) claimCodec {
	key := sha256.Sum256(append([]byte("mpsaas claim codes\x00"), secret...))
	block, err := aes.NewCipher(key[:])
	if err != nil {
		panic(err) // a 32-byte key always makes a cipher
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return claimCodec{aead: aead}
}

// issue makes a code for the subscriber key that expires at exp.
func (c claimCodec) issue(key string, exp time.Time) string {
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	nonce := make([]byte, c.aead.NonceSize())
	_, _ = rand.Read(nonce)
	plain := hex.EncodeToString(id) + "\x00" + strconv.FormatInt(exp.Unix(), 10) + "\x00" + key
	return base64.RawURLEncoding.EncodeToString(c.aead.Seal(nonce, nonce, []byte(plain), []byte("claim")))
}

// open returns the subscriber key and the code's id, if the code is
// genuine and not expired at now.
func (c claimCodec) open(code string, now time.Time) (key, id string, err error) {
	unknown := mpsaas.Errorf(mpsaas.ENOTFOUND, "unknown or expired claim code")
	raw, err := base64.RawURLEncoding.DecodeString(code)
	if err != nil || len(code) > 4096 || len(raw) < c.aead.NonceSize() {
		return "", "", unknown
	}
	plain, err := c.aead.Open(nil, raw[:c.aead.NonceSize()], raw[c.aead.NonceSize():], []byte("claim"))
	if err != nil {
		return "", "", unknown
	}
	parts := strings.SplitN(string(plain), "\x00", 3)
	if len(parts) != 3 {
		return "", "", unknown
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || !now.Before(time.Unix(exp, 0)) {
		return "", "", unknown
	}
	return parts[2], parts[0], nil
}

// RedeemClaim redeems a claim code: the buyer counts as registered by the
// seller's sign-up, linked to accountID when given.
func (s *Server) RedeemClaim(ctx context.Context, code, accountID string) (*mpsaas.Subscriber, error) {
	key, id, err := s.claims.open(code, s.clock.Now())
	if err != nil {
		return nil, err
	}
	return s.subs.Claim(ctx, key, id, accountID)
}

// handoff sends the buyer to the seller's sign-up with a claim code.
func (s *Server) handoff(w http.ResponseWriter, r *http.Request, sub *mpsaas.Subscriber) {
	ttl := s.cfg.ClaimTTL
	if ttl <= 0 {
		ttl = DefaultClaimTTL
	}
	u, _ := url.Parse(s.cfg.SignupURL) // validated by the configuration
	q := u.Query()
	q.Set("code", s.claims.issue(sub.Key, s.clock.Now().Add(ttl)))
	u.RawQuery = q.Encode()
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, u.String(), http.StatusSeeOther)
}

package web

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"time"
)

// signer makes tamper-proof, expiring values for hidden form fields and
// status-page links. They carry a subscriber key, never a registration token.
type signer struct{ secret []byte }

func (s signer) sign(purpose, value string, exp time.Time) string {
	payload := purpose + "\x00" + value + "\x00" + strconv.FormatInt(exp.Unix(), 10)
	mac := hmac.New(sha256.New, s.secret)
	mac.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString([]byte(value+"\x00"+strconv.FormatInt(exp.Unix(), 10))) + "." +
		base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// verify returns the value if sig is valid for purpose and not expired at now.
func (s signer) verify(purpose, sig string, now time.Time) (string, bool) {
	data, macPart, ok := strings.Cut(sig, ".")
	if !ok || len(sig) > 2048 {
		return "", false
	}
	raw, err := base64.RawURLEncoding.DecodeString(data)
	if err != nil {
		return "", false
	}
	got, err := base64.RawURLEncoding.DecodeString(macPart)
	if err != nil {
		return "", false
	}
	value, expStr, ok := strings.Cut(string(raw), "\x00")
	if !ok {
		return "", false
	}
	exp, err := strconv.ParseInt(expStr, 10, 64)
	if err != nil {
		return "", false
	}
	mac := hmac.New(sha256.New, s.secret)
	mac.Write([]byte(purpose + "\x00" + value + "\x00" + expStr))
	if !hmac.Equal(got, mac.Sum(nil)) {
		return "", false
	}
	if now.Unix() >= exp {
		return "", false
	}
	return value, true
}

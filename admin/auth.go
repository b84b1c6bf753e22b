package admin

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultIterations is the PBKDF2-SHA256 work factor of new password
// hashes (OWASP's 2023 recommendation: 600,000).
const DefaultIterations = 600_000

const hashScheme = "pbkdf2-sha256"

// HashPassword returns the setting value for a password:
// "pbkdf2-sha256$<iterations>$<salt>$<key>" (salt and key in unpadded
// base64). iterations <= 0 means DefaultIterations.
func HashPassword(password string, iterations int) (string, error) {
	if len(password) < 12 {
		return "", fmt.Errorf("the password must have at least 12 characters")
	}
	if iterations <= 0 {
		iterations = DefaultIterations
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key, err := pbkdf2.Key(sha256.New, password, salt, iterations, 32)
	if err != nil {
		return "", err
	}
	enc := base64.RawStdEncoding
	return fmt.Sprintf("%s$%d$%s$%s", hashScheme, iterations, enc.EncodeToString(salt), enc.EncodeToString(key)), nil
}

var randRead = rand.Read

// passwordHash is a parsed HashPassword value.
type passwordHash struct {
	iterations int
	salt, key  []byte
}

// ParseHash checks a password hash setting.
func ParseHash(v string) error {
	_, err := parseHash(v)
	return err
}

func parseHash(v string) (passwordHash, error) {
	parts := strings.Split(v, "$")
	if len(parts) != 4 || parts[0] != hashScheme {
		return passwordHash{}, fmt.Errorf("not a %s$<iterations>$<salt>$<key> hash (make one with `mpsaas admin-password`)", hashScheme)
	}
	n, err := strconv.Atoi(parts[1])
	if err != nil || n < 1000 || n > 10_000_000 {
		return passwordHash{}, fmt.Errorf("iterations %q: want 1000 to 10000000", parts[1])
	}
	enc := base64.RawStdEncoding
	salt, err1 := enc.DecodeString(parts[2])
	key, err2 := enc.DecodeString(parts[3])
	if err1 != nil || err2 != nil || len(salt) < 8 || len(key) != 32 {
		return passwordHash{}, fmt.Errorf("salt or key is not valid base64 of the right length")
	}
	return passwordHash{iterations: n, salt: salt, key: key}, nil
}

func (h passwordHash) verify(password string) bool {
	key, err := pbkdf2.Key(sha256.New, password, h.salt, h.iterations, 32)
	return err == nil && subtle.ConstantTimeCompare(key, h.key) == 1
}

// sessions signs and checks the console's cookies. Sessions are stateless
// (an expiry and a random id under an HMAC), so both runtimes share them
// without a store; the key is derived from the server secret and the
// password hash, so changing the password ends every session.
type sessions struct {
	key []byte
	ttl time.Duration
}

func newSessions(secret []byte, hash string, ttl time.Duration) sessions {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("mpsaas admin session\x00" + hash))
	return sessions{key: m.Sum(nil), ttl: ttl}
}

func (s sessions) mac(parts ...string) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(strings.Join(parts, "\x00")))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// issue returns a new session cookie value, "<expiry>.<id>.<mac>", and
// its id.
func (s sessions) issue(now time.Time) (value, id string) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	id = hex.EncodeToString(b)
	body := strconv.FormatInt(now.Add(s.ttl).Unix(), 10) + "." + id
	return body + "." + s.mac("session", body), id
}

// check returns the session id of a valid, unexpired cookie value.
func (s sessions) check(v string, now time.Time) (string, bool) {
	i := strings.LastIndexByte(v, '.')
	if i < 0 {
		return "", false
	}
	body, mac := v[:i], v[i+1:]
	if !hmac.Equal([]byte(mac), []byte(s.mac("session", body))) {
		return "", false
	}
	exp, id, ok := strings.Cut(body, ".")
	n, err := strconv.ParseInt(exp, 10, 64)
	if !ok || err != nil || now.Unix() >= n {
		return "", false
	}
	return id, true
}

// csrf is the anti-forgery token of a session's (or a login form's) forms.
func (s sessions) csrf(id string) string { return s.mac("csrf", id) }

func (s sessions) checkCSRF(id, token string) bool {
	return id != "" && hmac.Equal([]byte(token), []byte(s.csrf(id)))
}

// limiter bounds login attempts: a token bucket per client address (5,
// one more each minute) and one for all clients (30, one more each 2 s).
// Addresses are forgotten once their bucket is full again; at most 10,000
// are tracked (beyond, only the global bucket applies). On Lambda each
// instance keeps its own buckets.
type limiter struct {
	mu      sync.Mutex
	clients map[string]*bucket
	global  bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

const (
	perClientBurst = 5
	perClientEvery = time.Minute
	globalBurst    = 30
	globalEvery    = 2 * time.Second
	maxClients     = 10_000
)

func (b *bucket) take(now time.Time, burst float64, every time.Duration) bool {
	if b.last.IsZero() {
		b.tokens, b.last = burst, now
	}
	b.tokens = min(burst, b.tokens+float64(now.Sub(b.last))/float64(every))
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// allow reports whether a login attempt from addr may be checked now.
func (l *limiter) allow(addr string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.clients == nil {
		l.clients = map[string]*bucket{}
	}
	if len(l.clients) >= maxClients {
		for k, b := range l.clients {
			if b.tokens+float64(now.Sub(b.last))/float64(perClientEvery) >= perClientBurst {
				delete(l.clients, k)
			}
		}
	}
	b := l.clients[addr]
	if b == nil && len(l.clients) < maxClients {
		b = &bucket{}
		l.clients[addr] = b
	}
	if b != nil && !b.take(now, perClientBurst, perClientEvery) {
		return false
	}
	return l.global.take(now, globalBurst, globalEvery)
}

// clientAddr is the request's client IP address (on Lambda the adapter
// sets RemoteAddr to API Gateway's source IP).
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

package notify_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sesv2"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/notify"
)

// fakeSMTP is a minimal SMTP server that records one message per session.
type fakeSMTP struct {
	ln   net.Listener
	mu   sync.Mutex
	rcpt []string
	data []string
}

func startSMTP(t *testing.T) *fakeSMTP {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSMTP{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f
}

func (f *fakeSMTP) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	say := func(s string) { c.Write([]byte(s + "\r\n")) }
	say("220 fake ESMTP")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		switch {
		case strings.HasPrefix(cmd, "EHLO"), strings.HasPrefix(cmd, "HELO"):
			say("250 fake")
		case strings.HasPrefix(cmd, "MAIL FROM"):
			say("250 ok")
		case strings.HasPrefix(cmd, "RCPT TO"):
			f.mu.Lock()
			f.rcpt = append(f.rcpt, strings.TrimSpace(line[8:]))
			f.mu.Unlock()
			say("250 ok")
		case cmd == "DATA":
			say("354 go ahead")
			var b strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil || l == ".\r\n" {
					break
				}
				b.WriteString(l)
			}
			f.mu.Lock()
			f.data = append(f.data, b.String())
			f.mu.Unlock()
			say("250 queued")
		case cmd == "QUIT":
			say("221 bye")
			return
		default:
			say("250 ok")
		}
	}
}

func TestSMTPSender(t *testing.T) {
	srv := startSMTP(t)
	s := &notify.SMTPSender{Addr: srv.ln.Addr().String(), From: "noreply@seller.example", AdminEmail: "admin@seller.example", ProductName: "Widgets", Timeout: 5 * time.Second}
	c := mpsaas.AccessChange{IdempotencyKey: "K:1", Access: mpsaas.AccessGranted, Version: 1, OccurredAt: time.Now(),
		Subscriber: mpsaas.SubscriberDTO{Key: "K", LinkedAccountID: "acct-42", Contact: mpsaas.Contact{ContactPerson: "Ann", ContactEmail: "ann@buyer.example", CompanyName: "Acme"}}}
	payload, _ := json.Marshal(c)
	if err := s.Send(context.Background(), mpsaas.OutboxMessage{IdempotencyKey: "K:1", Payload: payload}); err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.rcpt) != 2 || !strings.Contains(srv.rcpt[0], "ann@buyer.example") || !strings.Contains(srv.rcpt[1], "admin@seller.example") {
		t.Errorf("recipients = %v", srv.rcpt)
	}
	if len(srv.data) != 1 || !strings.Contains(srv.data[0], "Subject: Welcome to Widgets") || !strings.Contains(srv.data[0], "Hello Ann") ||
		!strings.Contains(srv.data[0], "Your account: acct-42") {
		t.Errorf("message = %q", srv.data)
	}
}

func TestSMTPSenderUnreachable(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	s := &notify.SMTPSender{Addr: addr, From: "a@b.example", AdminEmail: "c@d.example", Timeout: 2 * time.Second}
	payload, _ := json.Marshal(mpsaas.AccessChange{IdempotencyKey: "K:1", Access: mpsaas.AccessRevoked})
	if err := s.Send(context.Background(), mpsaas.OutboxMessage{IdempotencyKey: "K:1", Payload: payload}); err == nil {
		t.Error("Send to a closed port succeeded; want an error so the outbox retries")
	}
}

// TestSMTPSenderBlackHole (issue 9): a server that accepts the connection
// and never answers costs one attempt bounded by the timeout, and leaves
// no goroutine or socket behind.
func TestSMTPSenderBlackHole(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // accept, then say nothing
			mu.Unlock()
		}
	}()
	s := &notify.SMTPSender{Addr: ln.Addr().String(), From: "a@b.example", AdminEmail: "c@d.example", Timeout: 300 * time.Millisecond}
	payload, _ := json.Marshal(mpsaas.AccessChange{IdempotencyKey: "K:1", Access: mpsaas.AccessRevoked})
	before := runtime.NumGoroutine()
	for range 5 {
		start := time.Now()
		if err := s.Send(context.Background(), mpsaas.OutboxMessage{IdempotencyKey: "K:1", Payload: payload}); err == nil {
			t.Fatal("Send to a silent server succeeded")
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("Send took %s with a 300ms timeout", d)
		}
	}
	// The client side of each connection is closed: reading the server
	// side sees EOF at once.
	mu.Lock()
	defer mu.Unlock()
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the client left a connection open: %v", err)
		}
		c.Close()
	}
	time.Sleep(50 * time.Millisecond)
	if after := runtime.NumGoroutine(); after > before+1 {
		t.Errorf("goroutines: %d before, %d after five timed-out sends", before, after)
	}
}

func TestSESSender(t *testing.T) {
	var got struct {
		FromEmailAddress string
		Destination      struct{ ToAddresses, BccAddresses []string }
		Content          struct {
			Simple struct {
				Subject struct{ Data string }
				Body    struct{ Text struct{ Data string } }
			}
		}
	}
	var path string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path = r.URL.Path
		_ = json.NewDecoder(r.Body).Decode(&got)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"MessageId":"m-1"}`))
	}))
	defer srv.Close()
	client := sesv2.New(sesv2.Options{Region: "us-east-1", BaseEndpoint: aws.String(srv.URL), Credentials: credentials.NewStaticCredentialsProvider("a", "b", "")})
	s := &notify.SESSender{Client: client, From: "seller@seller.example", AdminEmail: "admin@seller.example", ProductName: "Widgets"}
	c := mpsaas.AccessChange{IdempotencyKey: "K:2", Access: mpsaas.AccessRevoked, Version: 2,
		Subscriber: mpsaas.SubscriberDTO{Key: "K", Contact: mpsaas.Contact{ContactPerson: "Ann", ContactEmail: "ann@buyer.example"}}}
	payload, _ := json.Marshal(c)
	if err := s.Send(context.Background(), mpsaas.OutboxMessage{IdempotencyKey: "K:2", Payload: payload}); err != nil {
		t.Fatal(err)
	}
	if path != "/v2/email/outbound-emails" || got.FromEmailAddress != "seller@seller.example" ||
		strings.Join(got.Destination.ToAddresses, ",") != "ann@buyer.example" || strings.Join(got.Destination.BccAddresses, ",") != "admin@seller.example" ||
		got.Content.Simple.Subject.Data != "Widgets: access ended" || !strings.Contains(got.Content.Simple.Body.Text.Data, "Hello Ann") {
		t.Errorf("SES request %s: %+v", path, got)
	}
}

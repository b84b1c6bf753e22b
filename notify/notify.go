// Package notify tells people about access changes: by default it writes
// them to the log; with SMTP configured it emails the buyer (a confirmation
// when access is granted, notices when it changes) and the seller's admin.
package notify

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/smtp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sesv2"
	sestypes "github.com/aws/aws-sdk-go-v2/service/sesv2/types"

	"github.com/mpsaas/mpsaas"
)

// LogSender writes each access change to the log.
type LogSender struct{ Logger *slog.Logger }

// Send logs the change.
func (l LogSender) Send(ctx context.Context, m mpsaas.OutboxMessage) error {
	var c mpsaas.AccessChange
	if err := json.Unmarshal(m.Payload, &c); err != nil {
		return fmt.Errorf("decode access change %s: %w", m.IdempotencyKey, err)
	}
	l.Logger.InfoContext(ctx, "notification: access changed", "key", c.IdempotencyKey, "access", c.Access,
		"subscriber", c.Subscriber.Key, "linkedAccount", c.Subscriber.LinkedAccountID, "company", c.Subscriber.CompanyName, "email", c.Subscriber.ContactEmail, "status", c.Subscriber.Status)
	return nil
}

// SMTPSender emails access changes.
type SMTPSender struct {
	Addr     string // host:port
	Username string // optional: PLAIN auth (requires TLS unless the host is local)
	Password string
	From     string
	// AdminEmail (the sample's MarketplaceTechAdminEmail) gets a copy of each.
	AdminEmail  string
	ProductName string
	Timeout     time.Duration
}

// Send emails one change.
func (s *SMTPSender) Send(ctx context.Context, m mpsaas.OutboxMessage) error {
	var c mpsaas.AccessChange
	if err := json.Unmarshal(m.Payload, &c); err != nil {
		return fmt.Errorf("decode access change %s: %w", m.IdempotencyKey, err)
	}
	var to []string
	if c.Subscriber.ContactEmail != "" {
		to = append(to, c.Subscriber.ContactEmail)
	}
	if s.AdminEmail != "" {
		to = append(to, s.AdminEmail)
	}
	if len(to) == 0 {
		return nil
	}
	subject, text := message(c, s.ProductName)
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@mpsaas>\r\nDate: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s",
		s.From, strings.Join(to, ", "), mime.QEncoding.Encode("utf-8", subject),
		strings.NewReplacer(":", ".", "/", ".").Replace(c.IdempotencyKey), c.OccurredAt.Format(time.RFC1123Z),
		strings.ReplaceAll(text, "\n", "\r\n"))
	var auth smtp.Auth
	if s.Username != "" {
		host, _, _ := net.SplitHostPort(s.Addr)
		auth = smtp.PlainAuth("", s.Username, s.Password, host)
	}
	timeout := s.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	if err := sendMail(ctx, s.Addr, timeout, auth, s.From, to, b.Bytes()); err != nil {
		return fmt.Errorf("smtp send %s: %w", m.IdempotencyKey, err)
	}
	return nil
}

// sendMail is smtp.SendMail with a deadline: the dial, every read and
// write, and the whole exchange end by timeout (or ctx), so a server that
// never answers costs one attempt, not a goroutine and a socket.
func sendMail(ctx context.Context, addr string, timeout time.Duration, auth smtp.Auth, from string, to []string, msg []byte) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) }) // ctx cancelled early
	defer stop()
	host, _, _ := net.SplitHostPort(addr)
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		return err
	}
	defer c.Close()
	if ok, _ := c.Extension("STARTTLS"); ok {
		if err := c.StartTLS(&tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}); err != nil {
			return err
		}
	}
	if auth != nil {
		if ok, _ := c.Extension("AUTH"); !ok {
			return errors.New("smtp: server does not support AUTH")
		}
		if err := c.Auth(auth); err != nil {
			return err
		}
	}
	if err := c.Mail(from); err != nil {
		return err
	}
	for _, addr := range to {
		if err := c.Rcpt(addr); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func message(c mpsaas.AccessChange, product string) (subject, body string) {
	subject, body = messageText(c, product)
	if c.Subscriber.LinkedAccountID != "" {
		// The account the buyer signed up with on the seller's site (sign-up handoff).
		body += fmt.Sprintf("\nYour account: %s\n", c.Subscriber.LinkedAccountID)
	}
	return subject, body
}

func messageText(c mpsaas.AccessChange, product string) (subject, body string) {
	if product == "" {
		product = "your subscription"
	}
	name := c.Subscriber.ContactPerson
	if name == "" {
		name = "there"
	}
	if c.Event == mpsaas.EventContactUpdated {
		return product + ": contact details updated", fmt.Sprintf("Hello %s,\n\nthe contact details of your %s account for %s were updated. If you did not change them, please contact us.\n", name, product, c.Subscriber.CompanyName)
	}
	switch c.Access {
	case mpsaas.AccessGranted:
		if c.Version == 1 {
			return "Welcome to " + product, fmt.Sprintf("Hello %s,\n\nyour %s account for %s is ready. Your subscription through AWS Marketplace is active.\n", name, product, c.Subscriber.CompanyName)
		}
		return product + ": your subscription changed", fmt.Sprintf("Hello %s,\n\nyour %s subscription was updated. It remains active.\n", name, product)
	case mpsaas.AccessPendingCancellation:
		return product + ": cancellation received", fmt.Sprintf("Hello %s,\n\nwe received the cancellation of your %s subscription. Your access ends shortly.\n", name, product)
	default:
		return product + ": access ended", fmt.Sprintf("Hello %s,\n\nyour %s subscription has ended and access has been removed. You can subscribe again on AWS Marketplace at any time.\n", name, product)
	}
}

// SESSender emails access changes with Amazon SES (the serverless
// deployment's MarketplaceSellerEmail): to the buyer's contact, with a copy
// to the seller's admin.
type SESSender struct {
	Client      *sesv2.Client
	From        string // a verified SES identity
	AdminEmail  string
	ProductName string
}

// Send emails one change.
func (s *SESSender) Send(ctx context.Context, m mpsaas.OutboxMessage) error {
	var c mpsaas.AccessChange
	if err := json.Unmarshal(m.Payload, &c); err != nil {
		return fmt.Errorf("decode access change %s: %w", m.IdempotencyKey, err)
	}
	dest := &sestypes.Destination{}
	if c.Subscriber.ContactEmail != "" {
		dest.ToAddresses = []string{c.Subscriber.ContactEmail}
	}
	if s.AdminEmail != "" {
		dest.BccAddresses = []string{s.AdminEmail}
	}
	if len(dest.ToAddresses)+len(dest.BccAddresses) == 0 {
		return nil
	}
	subject, text := message(c, s.ProductName)
	_, err := s.Client.SendEmail(ctx, &sesv2.SendEmailInput{
		FromEmailAddress: aws.String(s.From),
		Destination:      dest,
		Content: &sestypes.EmailContent{Simple: &sestypes.Message{
			Subject: &sestypes.Content{Data: aws.String(subject), Charset: aws.String("UTF-8")},
			Body:    &sestypes.Body{Text: &sestypes.Content{Data: aws.String(text), Charset: aws.String("UTF-8")}},
		}},
	})
	if err != nil {
		return fmt.Errorf("SES send %s: %w", m.IdempotencyKey, err)
	}
	return nil
}

package emulator

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Notification channels.
const (
	ChannelSubscriptionSNS = "sns-subscription"
	ChannelEntitlementSNS  = "sns-entitlement"
	ChannelEventBridge     = "eventbridge"
)

// Notification is one message AWS would deliver to the seller: an SNS
// envelope as SQS delivers it (raw message delivery off) or an EventBridge
// event as a rule target receives it.
type Notification struct {
	Seq     int             `json:"seq"`
	Channel string          `json:"channel"`
	Time    time.Time       `json:"time"`
	Body    json.RawMessage `json:"body"`
}

type change int

const (
	changeSubscribe change = iota
	changeAmend
	changeCancel
	changeUnsubscribed
	changeExpire
	changeFail
)

// emitLocked builds the notifications for a change and appends them to the
// log. The caller delivers them after unlocking.
func (s *Server) emitLocked(sub *Subscription, p *Product, c change) []Notification {
	var out []Notification
	add := func(channel string, body any) {
		b, err := json.Marshal(body)
		if err != nil {
			panic(err) // only maps and strings: cannot fail
		}
		s.seq++
		out = append(out, Notification{Seq: s.seq, Channel: channel, Time: s.eventTimeLocked(), Body: b})
	}
	sns := func(channel, action string) {
		// SNS identifies buyers only by customer-identifier, which
		// license-based products do not have (marketplace-api.md §4.1).
		if sub.CustomerIdentifier == "" && !s.cfg.SNSLicenseKeys {
			return
		}
		msg := map[string]string{"action": action, "customer-identifier": sub.CustomerIdentifier, "product-code": p.Code}
		if channel == ChannelSubscriptionSNS && (action == "subscribe-success" || action == "subscribe-fail") {
			msg["offer-identifier"] = sub.OfferID
			msg["isFreeTrialTermPresent"] = fmt.Sprint(sub.FreeTrial)
		}
		if s.cfg.SNSLicenseKeys {
			msg["customer-aws-account-id"] = sub.BuyerAccountID
			msg["license-arn"] = sub.LicenseArn
		}
		topic := "aws-mp-subscription-notification-" + p.Code
		if channel == ChannelEntitlementSNS {
			topic = "aws-mp-entitlement-notification-" + p.Code
		}
		add(channel, s.snsEnvelopeLocked(topic, msg))
	}
	agreement := func(kind, intent, status string) {
		for _, role := range []string{"Proposer", "Manufacturer"} {
			detail := map[string]any{
				"requestId": newID(),
				"catalog":   "AWSMarketplace",
				"agreement": map[string]any{
					"id": sub.AgreementID, "intent": intent, "status": status,
					"acceptanceTime": sub.StartedAt.Format(time.RFC3339), "startTime": sub.StartedAt.Format(time.RFC3339),
				},
				"resaleAuthorization": nil,
				"acceptor":            map[string]string{"accountId": sub.BuyerAccountID},
				"proposer":            map[string]string{"accountId": SellerAccountID},
				"offer":               map[string]string{"id": sub.OfferID},
			}
			if !sub.ExpiresAt.IsZero() {
				detail["agreement"].(map[string]any)["endTime"] = sub.ExpiresAt.Format(time.RFC3339)
			}
			if intent == "" {
				delete(detail["agreement"].(map[string]any), "intent")
			}
			add(ChannelEventBridge, s.eventLocked("Purchase Agreement "+kind+" - "+role, sub, detail))
		}
	}
	license := func(kind string) {
		detail := map[string]any{
			"requestId": newID(),
			"catalog":   "AWSMarketplace",
			"agreement": map[string]string{"id": sub.AgreementID},
			"product":   map[string]string{"code": p.Code, "id": p.ProductID},
			// The documented example writes the ARN without its "arn:" prefix.
			"license":  map[string]string{"arn": strings.TrimPrefix(sub.LicenseArn, "arn:")},
			"acceptor": map[string]string{"accountId": sub.BuyerAccountID},
			"proposer": map[string]string{"accountId": SellerAccountID},
			"offer":    map[string]string{"id": sub.OfferID},
		}
		add(ChannelEventBridge, s.eventLocked("License "+kind+" - Manufacturer", sub, detail))
	}

	switch c {
	case changeSubscribe:
		sns(ChannelSubscriptionSNS, "subscribe-success")
		if p.isContract() {
			sns(ChannelEntitlementSNS, "entitlement-updated")
		}
		agreement("Created", "NEW", "ACTIVE")
		license("Updated")
	case changeAmend:
		sns(ChannelEntitlementSNS, "entitlement-updated")
		agreement("Amended", "AMEND", "ACTIVE")
		license("Updated")
	case changeCancel:
		sns(ChannelSubscriptionSNS, "unsubscribe-pending")
		if p.isContract() {
			sns(ChannelEntitlementSNS, "entitlement-updated")
		}
		agreement("Ended", "", "CANCELLED")
		license("Deprovisioned")
	case changeUnsubscribed:
		sns(ChannelSubscriptionSNS, "unsubscribe-success")
	case changeExpire:
		sns(ChannelEntitlementSNS, "entitlement-updated")
		sns(ChannelSubscriptionSNS, "unsubscribe-success")
		agreement("Ended", "", "EXPIRED")
		license("Deprovisioned")
	case changeFail:
		sns(ChannelSubscriptionSNS, "subscribe-fail")
		agreement("Ended", "", "TERMINATED")
		license("Deprovisioned")
	}
	out = s.dropLocked(out)
	s.notifications = append(s.notifications, out...)
	if limit := s.cfg.NotificationLog; limit > 0 && len(s.notifications) > limit {
		s.notifications = append([]Notification(nil), s.notifications[len(s.notifications)-limit:]...)
	}
	return out
}

// eventTimeLocked returns the clock's time, strictly after the previous
// event's, so events emitted at one frozen instant still have an order.
func (s *Server) eventTimeLocked() time.Time {
	t := s.Clock.Now().Truncate(time.Millisecond)
	if !t.After(s.lastEventTime) {
		t = s.lastEventTime.Add(time.Millisecond)
	}
	s.lastEventTime = t
	return t
}

func (s *Server) snsEnvelopeLocked(topic string, msg map[string]string) map[string]string {
	m, _ := json.Marshal(msg)
	id := newID()
	topicArn := "arn:aws:sns:us-east-1:" + SNSAccountID + ":" + topic
	return map[string]string{
		"Type":             "Notification",
		"MessageId":        id,
		"TopicArn":         topicArn,
		"Message":          string(m),
		"Timestamp":        s.lastEventTime.Format("2006-01-02T15:04:05.000Z"),
		"SignatureVersion": "1",
		// The emulator does not sign: consumers behind SQS do not verify.
		"Signature":      "EMULATOR",
		"SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-emulator.pem",
		"UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=" + topicArn + ":" + id,
	}
}

func (s *Server) eventLocked(detailType string, sub *Subscription, detail map[string]any) map[string]any {
	return map[string]any{
		"version":     "0",
		"id":          newID(),
		"detail-type": detailType,
		"source":      "aws.agreement-marketplace",
		"account":     SellerAccountID,
		// Millisecond precision (valid RFC 3339) keeps events at one frozen instant ordered.
		"time":      s.lastEventTime.Format("2006-01-02T15:04:05.000Z"),
		"region":    "us-east-1",
		"resources": []string{"arn:aws:aws-marketplace::aws:agreement:" + sub.AgreementID},
		"detail":    detail,
	}
}

func (s *Server) deliver(ns []Notification) {
	if len(ns) == 0 {
		return
	}
	s.mu.Lock()
	sinks := append([]func(Notification){}, s.sinks...)
	s.mu.Unlock()
	for _, n := range ns {
		for _, fn := range sinks {
			fn(n)
		}
	}
}

// Notifications returns the notifications with Seq > after, oldest first.
func (s *Server) Notifications(after int) []Notification {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Notification{}
	for _, n := range s.notifications {
		if n.Seq > after {
			out = append(out, n)
		}
	}
	return out
}

// DropNotifications makes the next n notifications of channel (one of
// the Channel constants; "" any) get lost on the way, as when an SNS
// subscription was deleted, a queue purged or an EventBridge rule
// disabled: they are neither kept nor delivered, so the seller's view
// drifts from the agreements, which reconciliation must find.
func (s *Server) DropNotifications(n int, channel string) error {
	if n < 0 {
		return fmt.Errorf("%w: count must not be negative", ErrInvalid)
	}
	switch channel {
	case "", ChannelSubscriptionSNS, ChannelEntitlementSNS, ChannelEventBridge:
	default:
		return fmt.Errorf("%w: channel %q: want %s, %s, %s or empty for any", ErrInvalid, channel, ChannelSubscriptionSNS, ChannelEntitlementSNS, ChannelEventBridge)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drops == nil {
		s.drops = map[string]int{}
	}
	s.drops[channel] = n
	return nil
}

// Dropped is how many notifications were lost by DropNotifications.
func (s *Server) Dropped() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

func (s *Server) dropLocked(ns []Notification) []Notification {
	if len(s.drops) == 0 {
		return ns
	}
	kept := ns[:0]
	for _, n := range ns {
		switch {
		case s.drops[n.Channel] > 0:
			s.drops[n.Channel]--
		case s.drops[""] > 0:
			s.drops[""]--
		default:
			kept = append(kept, n)
			continue
		}
		s.dropped++
	}
	return kept
}

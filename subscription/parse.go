package subscription

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/mpsaas/mpsaas"
)

// maxMessageBytes bounds a notification body (SQS allows 256 KiB).
const maxMessageBytes = 256 << 10

// ParseMessage turns one queue message body into events. It accepts:
//   - an SNS envelope as SQS delivers it (raw message delivery off);
//   - a bare SNS message (raw message delivery on);
//   - an EventBridge event.
//
// Malformed input returns an EINVALID error (the message should be
// dead-lettered, not retried). EventBridge events that do not concern
// seller access (for example Acceptor variants) return no events and no error.
func ParseMessage(body []byte, receivedAt time.Time) ([]mpsaas.Event, error) {
	events, err := parseMessage(body, receivedAt)
	for i := range events {
		events[i].Raw = string(body)
	}
	return events, err
}

func parseMessage(body []byte, receivedAt time.Time) ([]mpsaas.Event, error) {
	if len(body) > maxMessageBytes {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "message is %d bytes; at most %d are accepted", len(body), maxMessageBytes)
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(body, &probe); err != nil {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "message is not a JSON object: %v", err)
	}
	switch {
	case probe["detail-type"] != nil:
		return parseEventBridge(body, receivedAt)
	case probe["Type"] != nil && probe["Message"] != nil:
		return parseSNSEnvelope(body, receivedAt)
	case probe["action"] != nil:
		// Raw delivery has no MessageId or Timestamp: dedupe identical bodies
		// received at the same instant only, and order by receipt.
		sum := sha256.Sum256(body)
		id := fmt.Sprintf("raw:%s:%d", hex.EncodeToString(sum[:12]), receivedAt.UnixNano())
		e, err := parseSNSMessage(body, id, receivedAt, receivedAt)
		if err != nil {
			return nil, err
		}
		return []mpsaas.Event{e}, nil
	}
	return nil, mpsaas.Errorf(mpsaas.EINVALID, "message is neither an SNS notification nor an EventBridge event")
}

type snsEnvelope struct {
	Type      string          `json:"Type"`
	MessageID string          `json:"MessageId"`
	TopicArn  string          `json:"TopicArn"`
	Message   json.RawMessage `json:"Message"`
	Timestamp string          `json:"Timestamp"`
}

func parseSNSEnvelope(body []byte, receivedAt time.Time) ([]mpsaas.Event, error) {
	var env snsEnvelope
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "SNS envelope: %v", err)
	}
	if env.Type != "Notification" {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "SNS envelope: Type %q is not Notification", env.Type)
	}
	if env.MessageID == "" {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "SNS envelope: MessageId is missing")
	}
	ts, err := time.Parse(time.RFC3339Nano, env.Timestamp)
	if err != nil {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "SNS envelope: Timestamp %q is not an ISO 8601 time", env.Timestamp)
	}
	// Message is a JSON string holding the JSON message; the AWS sample also
	// copes with an object here, and so do we.
	inner := []byte(env.Message)
	var s string
	if err := json.Unmarshal(env.Message, &s); err == nil {
		inner = []byte(s)
	}
	e, err := parseSNSMessage(inner, "sns:"+env.MessageID, ts.UTC(), receivedAt)
	if err != nil {
		return nil, err
	}
	if env.TopicArn != "" && !strings.Contains(env.TopicArn, "aws-mp-subscription-notification") && !strings.Contains(env.TopicArn, "aws-mp-entitlement-notification") {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "SNS envelope: topic %s is not an AWS Marketplace topic", env.TopicArn)
	}
	return []mpsaas.Event{e}, nil
}

func parseSNSMessage(b []byte, id string, at, receivedAt time.Time) (mpsaas.Event, error) {
	var m map[string]any
	if err := json.Unmarshal(stripTrailingCommas(b), &m); err != nil {
		return mpsaas.Event{}, mpsaas.Errorf(mpsaas.EINVALID, "SNS message is not a JSON object: %v", err)
	}
	get := func(keys ...string) string {
		for _, k := range keys {
			if v, ok := m[k].(string); ok {
				return strings.TrimSpace(v)
			}
		}
		return ""
	}
	e := mpsaas.Event{
		ID: id, Source: "sns", Time: at, ReceivedAt: receivedAt,
		Kind: mpsaas.EventKind(get("action")),
		Identity: mpsaas.Identity{
			// Older documentation showed PascalCase keys.
			CustomerIdentifier:   get("customer-identifier", "CustomerIdentifier"),
			ProductCode:          get("product-code", "ProductCode"),
			CustomerAWSAccountID: get("customer-aws-account-id", "CustomerAWSAccountId"),
			LicenseID:            mpsaas.LicenseID(get("license-arn", "LicenseArn")),
		},
		OfferID: get("offer-identifier"),
	}
	switch e.Kind {
	case mpsaas.EventSubscribeSuccess, mpsaas.EventSubscribeFail, mpsaas.EventUnsubscribePending, mpsaas.EventUnsubscribeSuccess, mpsaas.EventEntitlementUpdated:
	default:
		return mpsaas.Event{}, mpsaas.Errorf(mpsaas.EINVALID, "SNS message: unknown action %q", e.Kind)
	}
	if e.CustomerIdentifier == "" && e.LicenseID == "" {
		return mpsaas.Event{}, mpsaas.Errorf(mpsaas.EINVALID, "SNS message: customer-identifier is missing")
	}
	if e.ProductCode == "" {
		return mpsaas.Event{}, mpsaas.Errorf(mpsaas.EINVALID, "SNS message: product-code is missing")
	}
	// isFreeTrialTermPresent is a string ("true"/"false"); accept a boolean too.
	switch v := m["isFreeTrialTermPresent"].(type) {
	case string:
		b := strings.EqualFold(strings.TrimSpace(v), "true")
		e.FreeTrial = &b
	case bool:
		e.FreeTrial = &v
	}
	return e, nil
}

// stripTrailingCommas removes commas directly before a closing brace or
// bracket outside strings: the documented SNS sample has one.
func stripTrailingCommas(b []byte) []byte {
	out := make([]byte, 0, len(b))
	inString, escaped := false, false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inString {
			out = append(out, c)
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		if c == '"' {
			inString = true
		}
		if c == ',' {
			j := i + 1
			for j < len(b) && bytes.IndexByte([]byte(" \t\r\n"), b[j]) >= 0 {
				j++
			}
			if j < len(b) && (b[j] == '}' || b[j] == ']') {
				continue
			}
		}
		out = append(out, c)
	}
	return out
}

type ebEvent struct {
	ID         string `json:"id"`
	DetailType string `json:"detail-type"`
	Source     string `json:"source"`
	Time       string `json:"time"`
	Detail     struct {
		Agreement struct {
			ID     string `json:"id"`
			Status string `json:"status"`
		} `json:"agreement"`
		Acceptor struct {
			AccountID string `json:"accountId"`
		} `json:"acceptor"`
		Product struct {
			Code string `json:"code"`
		} `json:"product"`
		License struct {
			Arn string `json:"arn"`
		} `json:"license"`
		Offer struct {
			ID string `json:"id"`
		} `json:"offer"`
	} `json:"detail"`
}

var detailTypes = map[string]mpsaas.EventKind{
	"Purchase Agreement Created": mpsaas.EventAgreementCreated,
	"Purchase Agreement Amended": mpsaas.EventAgreementAmended,
	"Purchase Agreement Ended":   mpsaas.EventAgreementEnded,
	"License Updated":            mpsaas.EventLicenseUpdated,
	"License Deprovisioned":      mpsaas.EventLicenseDeprovisioned,
}

func parseEventBridge(body []byte, receivedAt time.Time) ([]mpsaas.Event, error) {
	var ev ebEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "EventBridge event: %v", err)
	}
	if ev.Source != "aws.agreement-marketplace" {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "EventBridge event: source %q is not aws.agreement-marketplace", ev.Source)
	}
	if ev.ID == "" {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "EventBridge event: id is missing")
	}
	name, role, ok := strings.Cut(ev.DetailType, " - ")
	kind, known := detailTypes[name]
	if !ok || !known || (role != "Proposer" && role != "Manufacturer") {
		return nil, nil // not an event about seller access (e.g. Acceptor variants)
	}
	ts, err := time.Parse(time.RFC3339Nano, ev.Time)
	if err != nil {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "EventBridge event: time %q is not an ISO 8601 time", ev.Time)
	}
	d := ev.Detail
	if d.Agreement.ID == "" {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "EventBridge event: detail.agreement.id is missing")
	}
	e := mpsaas.Event{
		ID: "eb:" + ev.ID, Kind: kind, Source: "eventbridge", Time: ts.UTC(), ReceivedAt: receivedAt,
		Identity: mpsaas.Identity{
			AgreementID:          d.Agreement.ID,
			CustomerAWSAccountID: d.Acceptor.AccountID,
			ProductCode:          d.Product.Code,
			LicenseID:            mpsaas.LicenseID(d.License.Arn),
		},
		OfferID:         d.Offer.ID,
		AgreementStatus: d.Agreement.Status,
	}
	if strings.HasPrefix(name, "License") && e.LicenseID == "" {
		return nil, mpsaas.Errorf(mpsaas.EINVALID, "EventBridge event: detail.license.arn is missing or has no license id")
	}
	return []mpsaas.Event{e}, nil
}

// Package reconcile compares the buyers mpsaas knows with the agreements
// AWS Marketplace holds (Agreement API, as the proposer) and repairs the
// drift lost notifications leave: an agreement that ended in AWS while
// mpsaas still grants access, or one that is active while mpsaas never
// heard it start. A repair records the event AWS would have sent, through
// the same path a notification takes, so access changes are delivered as
// usual; a dry run only reports.
package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/mpsaas/mpsaas"
)

// Agreements pages through the purchase agreements of a product.
type Agreements interface {
	ProductAgreements(ctx context.Context, resource string, fn func(mpsaas.Agreement) error) error
}

// Store lists the buyers and reads one back.
type Store interface {
	ActiveSubscribers(ctx context.Context, statuses []mpsaas.Status) ([]*mpsaas.Subscriber, error)
	GetSubscriber(ctx context.Context, key string) (*mpsaas.Subscriber, error)
}

// Events records an event the way a notification is handled.
type Events interface {
	HandleEvent(ctx context.Context, e mpsaas.Event) error
}

// Kinds of drift.
const (
	// EndedInAWS: the agreement ended, mpsaas still has the buyer active
	// (or waiting): the end is recorded (agreement-ended).
	EndedInAWS = "ended-in-aws"
	// ActiveInAWS: the agreement is active, mpsaas never saw it start or
	// saw it end: the start is recorded (agreement-created).
	ActiveInAWS = "active-in-aws"
	// UnknownToAWS: mpsaas grants access, AWS has no agreement for the
	// buyer's account and product. Reported only.
	UnknownToAWS = "unknown-to-aws"
	// NotRegistered: an active agreement whose buyer never reached the
	// fulfillment URL (no registration token, so nothing to record).
	// Reported only.
	NotRegistered = "not-registered"
)

// Drift is one difference between mpsaas and AWS.
type Drift struct {
	Kind         string    `json:"kind"`
	Subscriber   string    `json:"subscriber,omitempty"`
	AccountID    string    `json:"accountId,omitempty"`
	ProductCode  string    `json:"productCode"`
	AgreementID  string    `json:"agreementId,omitempty"`
	AWSStatus    string    `json:"awsStatus,omitempty"`
	MpsaasStatus string    `json:"mpsaasStatus,omitempty"`
	Since        time.Time `json:"since,omitzero"`
	// Fix is the event a repair records ("": reported only); Applied and
	// After say what the repair did.
	Fix     string `json:"fix,omitempty"`
	Applied bool   `json:"applied,omitempty"`
	After   string `json:"mpsaasStatusAfter,omitempty"`
	Note    string `json:"note,omitempty"`
}

// Report is one reconciliation.
type Report struct {
	Buyers     int     `json:"buyers"`     // buyers of the products compared
	Agreements int     `json:"agreements"` // agreements read from AWS
	Unmatched  int     `json:"unmatched"`  // buyers without an AWS account id to compare by
	Drift      []Drift `json:"drift"`
	Applied    bool    `json:"applied"` // repairs were recorded (not a dry run)
}

// Log writes the report: one line for the run, one warning per drift.
func (r Report) Log(ctx context.Context, logger *slog.Logger) {
	logger.InfoContext(ctx, "reconciliation with AWS", "buyers", r.Buyers, "agreements", r.Agreements, "drift", len(r.Drift), "applied", r.Applied)
	for _, d := range r.Drift {
		logger.WarnContext(ctx, "drift", "kind", d.Kind, "subscriber", d.Subscriber, "account", d.AccountID, "product", d.ProductCode,
			"agreement", d.AgreementID, "aws", d.AWSStatus, "mpsaas", d.MpsaasStatus, "repair", d.Fix, "applied", d.Applied, "note", d.Note)
	}
}

// Service reconciles. Products maps each product code to the resource id
// the Agreement API knows the product by (the emulator uses the product
// code; AWS uses the product id, prod-...).
type Service struct {
	Agreements Agreements
	Store      Store
	Events     Events
	Products   map[string]string
	Clock      mpsaas.Clock
	Logger     *slog.Logger
}

func (s *Service) now() time.Time {
	if s.Clock == nil {
		return time.Now().UTC()
	}
	return s.Clock.Now().UTC()
}

// Run compares every buyer of the products with AWS and, with apply,
// records the repairs.
func (s *Service) Run(ctx context.Context, apply bool) (Report, error) {
	rep := Report{Drift: []Drift{}, Applied: apply}
	type key struct{ account, product string }
	latest := map[key]mpsaas.Agreement{}
	for product, resource := range s.Products {
		err := s.Agreements.ProductAgreements(ctx, resource, func(a mpsaas.Agreement) error {
			rep.Agreements++
			k := key{a.AcceptorAccountID, product}
			if old, ok := latest[k]; !ok || a.Start.After(old.Start) || (a.Start.Equal(old.Start) && a.Status == "ACTIVE") {
				latest[k] = a // the buyer's newest agreement for the product decides
			}
			return nil
		})
		if err != nil {
			return rep, fmt.Errorf("agreements of %s: %w", product, err)
		}
	}
	subs, err := s.Store.ActiveSubscribers(ctx, mpsaas.Statuses)
	if err != nil {
		return rep, err
	}
	seen := map[key]bool{}
	for _, sub := range subs {
		if _, ok := s.Products[sub.ProductCode]; !ok {
			continue
		}
		rep.Buyers++
		if sub.CustomerAWSAccountID == "" {
			rep.Unmatched++
			continue
		}
		k := key{sub.CustomerAWSAccountID, sub.ProductCode}
		seen[k] = true
		a, ok := latest[k]
		d := Drift{Subscriber: sub.Key, AccountID: sub.CustomerAWSAccountID, ProductCode: sub.ProductCode, MpsaasStatus: string(sub.Status)}
		switch {
		case !ok:
			if sub.Status == mpsaas.StatusActive {
				d.Kind, d.Note = UnknownToAWS, "AWS has no agreement for this account and product; check the buyer in the AWS Marketplace Management Portal"
				rep.Drift = append(rep.Drift, d)
			}
			continue
		case a.Status == "ACTIVE" && sub.Status != mpsaas.StatusActive:
			d.Kind, d.Fix, d.Since = ActiveInAWS, string(mpsaas.EventAgreementCreated), a.Start
		case a.Status != "ACTIVE" && (sub.Status == mpsaas.StatusActive || sub.Status == mpsaas.StatusPending):
			d.Kind, d.Fix, d.Since = EndedInAWS, string(mpsaas.EventAgreementEnded), a.End
			if d.Since.IsZero() {
				d.Since = s.now()
			}
		default:
			continue
		}
		d.AgreementID, d.AWSStatus = a.ID, a.Status
		if apply {
			if err := s.repair(ctx, sub, a, &d); err != nil {
				return rep, err
			}
		}
		rep.Drift = append(rep.Drift, d)
	}
	for k, a := range latest {
		if !seen[k] && a.Status == "ACTIVE" {
			rep.Drift = append(rep.Drift, Drift{Kind: NotRegistered, AccountID: k.account, ProductCode: k.product, AgreementID: a.ID, AWSStatus: a.Status, Since: a.Start,
				Note: "the buyer has not completed registration at the fulfillment URL"})
		}
	}
	sort.Slice(rep.Drift, func(i, j int) bool {
		a, b := rep.Drift[i], rep.Drift[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.AccountID+a.Subscriber < b.AccountID+b.Subscriber
	})
	if s.Logger != nil && len(rep.Drift) > 0 {
		s.Logger.Warn("drift between mpsaas and AWS Marketplace", "drift", len(rep.Drift), "buyers", rep.Buyers, "applied", apply)
	}
	return rep, nil
}

// repair records the event AWS's notification would have carried, with an
// id of its own (agreement and status): a second repair adds nothing.
func (s *Service) repair(ctx context.Context, sub *mpsaas.Subscriber, a mpsaas.Agreement, d *Drift) error {
	e := mpsaas.Event{ID: "reconcile:" + a.ID + ":" + a.Status, Kind: mpsaas.EventKind(d.Fix), Source: "reconcile", Time: d.Since,
		Identity: sub.Identity, AgreementStatus: a.Status, ReceivedAt: s.now()}
	e.AgreementID = a.ID
	if err := s.Events.HandleEvent(ctx, e); err != nil {
		return fmt.Errorf("repair %s: %w", sub.Key, err)
	}
	after, err := s.Store.GetSubscriber(ctx, sub.Key)
	if err != nil {
		return err
	}
	d.Applied, d.After = true, string(after.Status)
	if after.Status == sub.Status {
		d.Note = "recorded, but mpsaas holds later events for this buyer that keep its status; check them"
	}
	return nil
}

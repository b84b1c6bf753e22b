package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/mpsaas/mpsaas"
)

var _ mpsaas.SubscriberStore = (*DB)(nil)

const subscriberColumns = `key, customer_identifier, aws_account_id, license_arn, license_id, product_code,
	company_name, contact_person, contact_phone, contact_email, registered_at, offer_type,
	status, free_trial, offer_id, last_event_at, entitlements, entitlements_raw, entitlements_checked_at,
	access, access_version, access_fingerprint, entitlement_history, final_window_from, linked_account_id, claim_id, created_at, updated_at, version`

type rowScanner interface{ Scan(...any) error }

func scanSubscriber(row rowScanner) (*mpsaas.Subscriber, error) {
	var s mpsaas.Subscriber
	var registered, lastEvent, entChecked, finalWindow, created, updated int64
	var freeTrial int
	var ents, history string
	err := row.Scan(&s.Key, &s.CustomerIdentifier, &s.CustomerAWSAccountID, &s.LicenseArn, &s.LicenseID, &s.ProductCode,
		&s.CompanyName, &s.ContactPerson, &s.ContactPhone, &s.ContactEmail, &registered, &s.OfferType,
		&s.Status, &freeTrial, &s.OfferID, &lastEvent, &ents, &s.EntitlementsRaw, &entChecked,
		&s.Access, &s.AccessVersion, &s.AccessFingerprint, &history, &finalWindow, &s.LinkedAccountID, &s.ClaimID, &created, &updated, &s.Version)
	if err != nil {
		return nil, err
	}
	s.RegisteredAt, s.LastEventAt, s.EntitlementsCheckedAt = fromUnixNano(registered), fromUnixNano(lastEvent), fromUnixNano(entChecked)
	s.CreatedAt, s.UpdatedAt = fromUnixNano(created), fromUnixNano(updated)
	s.FinalWindowFrom = fromUnixNano(finalWindow)
	s.FreeTrial = freeTrial != 0
	if err := json.Unmarshal([]byte(ents), &s.Entitlements); err != nil {
		return nil, fmt.Errorf("subscriber %s: decoding entitlements: %w", s.Key, err)
	}
	if history != "" {
		if err := json.Unmarshal([]byte(history), &s.EntitlementHistory); err != nil {
			return nil, fmt.Errorf("subscriber %s: decoding entitlement history: %w", s.Key, err)
		}
	}
	return &s, nil
}

// GetSubscriber returns the subscriber stored under key.
func (d *DB) GetSubscriber(ctx context.Context, key string) (*mpsaas.Subscriber, error) {
	s, err := scanSubscriber(d.db.QueryRowContext(ctx, `SELECT `+subscriberColumns+` FROM subscribers WHERE key = ?`, key))
	if isNoRows(err) {
		return nil, notFound("subscriber " + key)
	} else if err != nil {
		return nil, fmt.Errorf("get subscriber %s: %w", key, err)
	}
	return s, nil
}

// FindSubscriber returns the subscriber sharing a CustomerIdentifier or LicenseID with id.
func (d *DB) FindSubscriber(ctx context.Context, id mpsaas.Identity) (*mpsaas.Subscriber, error) {
	if id.CustomerIdentifier == "" && id.LicenseID == "" {
		return nil, notFound("subscriber")
	}
	s, err := scanSubscriber(d.db.QueryRowContext(ctx, `SELECT `+subscriberColumns+` FROM subscribers
		WHERE (customer_identifier = ?1 AND ?1 != '') OR (license_id = ?2 AND ?2 != '')
		ORDER BY created_at LIMIT 1`, id.CustomerIdentifier, id.LicenseID))
	if isNoRows(err) {
		return nil, notFound("subscriber")
	} else if err != nil {
		return nil, fmt.Errorf("find subscriber: %w", err)
	}
	return s, nil
}

// LinkedSubscribers returns the buyers linked to the seller's account id,
// newest first.
func (d *DB) LinkedSubscribers(ctx context.Context, accountID string) ([]*mpsaas.Subscriber, error) {
	if accountID == "" {
		return nil, nil
	}
	return d.querySubscribers(ctx, "linked subscribers", `WHERE linked_account_id = ? AND linked_account_id != ''
		ORDER BY created_at DESC LIMIT 100`, accountID)
}

// querySubscribers reads the subscribers a WHERE (and ORDER) clause selects.
func (d *DB) querySubscribers(ctx context.Context, what, where string, args ...any) ([]*mpsaas.Subscriber, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT `+subscriberColumns+` FROM subscribers `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	var out []*mpsaas.Subscriber
	for rows.Next() {
		s, err := scanSubscriber(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// LinkedAccountFor is the seller's account id the AWS account's last buyer
// of product was linked to ("" when none).
func (d *DB) LinkedAccountFor(ctx context.Context, awsAccount, product string) (string, error) {
	if awsAccount == "" || product == "" {
		return "", nil
	}
	var id string
	err := d.db.QueryRowContext(ctx, `SELECT linked_account_id FROM subscribers WHERE aws_account_id = ? AND product_code = ? AND linked_account_id != ''
		ORDER BY created_at DESC LIMIT 1`, awsAccount, product).Scan(&id)
	if isNoRows(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("linked account of %s: %w", awsAccount, err)
	}
	return id, nil
}

// SaveSubscriber inserts or updates s with an optimistic version check and
// queues change on channels in the same transaction.
func (d *DB) SaveSubscriber(ctx context.Context, s *mpsaas.Subscriber, change *mpsaas.AccessChange, channels []string) error {
	ents, err := json.Marshal(s.Entitlements)
	if err != nil {
		return fmt.Errorf("encode entitlements: %w", err)
	}
	if s.Entitlements == nil {
		ents = []byte("[]")
	}
	var history []byte
	if len(s.EntitlementHistory) > 0 {
		if history, err = json.Marshal(s.EntitlementHistory); err != nil {
			return fmt.Errorf("encode entitlement history: %w", err)
		}
	}
	now := d.Now()
	var payload []byte
	if change != nil {
		if payload, err = json.Marshal(change); err != nil {
			return fmt.Errorf("encode access change: %w", err)
		}
	}
	err = d.withTx(ctx, func(tx *sql.Tx) error {
		args := []any{s.Key, s.CustomerIdentifier, s.CustomerAWSAccountID, s.LicenseArn, s.LicenseID, s.ProductCode,
			s.CompanyName, s.ContactPerson, s.ContactPhone, s.ContactEmail, unixNano(s.RegisteredAt), s.OfferType,
			string(s.Status), boolInt(s.FreeTrial), s.OfferID, unixNano(s.LastEventAt), string(ents), s.EntitlementsRaw, unixNano(s.EntitlementsCheckedAt),
			string(s.Access), s.AccessVersion, s.AccessFingerprint, string(history), unixNano(s.FinalWindowFrom), s.LinkedAccountID, s.ClaimID}
		if s.Version == 0 {
			created := s.CreatedAt
			if created.IsZero() {
				created = now
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO subscribers (`+subscriberColumns+`)
				VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,1)`, append(args, unixNano(created), unixNano(now))...)
			if err != nil {
				if strings.Contains(err.Error(), "UNIQUE constraint failed") {
					return mpsaas.Errorf(mpsaas.ECONFLICT, "subscriber %s already exists", s.Key)
				}
				return fmt.Errorf("insert subscriber %s: %w", s.Key, err)
			}
			s.CreatedAt = created
		} else {
			res, err := tx.ExecContext(ctx, `UPDATE subscribers SET customer_identifier=?2, aws_account_id=?3, license_arn=?4, license_id=?5, product_code=?6,
				company_name=?7, contact_person=?8, contact_phone=?9, contact_email=?10, registered_at=?11, offer_type=?12,
				status=?13, free_trial=?14, offer_id=?15, last_event_at=?16, entitlements=?17, entitlements_raw=?18, entitlements_checked_at=?19,
				access=?20, access_version=?21, access_fingerprint=?22, entitlement_history=?23, final_window_from=?24,
				linked_account_id=?25, claim_id=?26, updated_at=?27, version=version+1
				WHERE key=?1 AND version=?28`, append(args, unixNano(now), s.Version)...)
			if err != nil {
				return fmt.Errorf("update subscriber %s: %w", s.Key, err)
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return mpsaas.Errorf(mpsaas.ECONFLICT, "subscriber %s was changed concurrently", s.Key)
			}
		}
		if change != nil {
			for _, ch := range channels {
				if _, err := tx.ExecContext(ctx, `INSERT INTO outbox (channel, idempotency_key, subscriber_key, payload, created_at, next_attempt_at)
					VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (channel, idempotency_key) DO NOTHING`,
					ch, change.IdempotencyKey, s.Key, string(payload), unixNano(now), unixNano(now)); err != nil {
					return fmt.Errorf("queue access change %s on %s: %w", change.IdempotencyKey, ch, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.Version++
	s.UpdatedAt = now
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// AddEvent stores e unless its ID is already stored.
func (d *DB) AddEvent(ctx context.Context, e mpsaas.Event) (bool, error) {
	var ft any
	if e.FreeTrial != nil {
		ft = boolInt(*e.FreeTrial)
	}
	res, err := d.db.ExecContext(ctx, `INSERT INTO events (id, kind, source, event_time, received_at, customer_identifier, aws_account_id,
		license_id, agreement_id, product_code, free_trial, offer_id, agreement_status, raw)
		VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING`,
		e.ID, string(e.Kind), e.Source, unixNano(e.Time), unixNano(e.ReceivedAt), e.CustomerIdentifier, e.CustomerAWSAccountID,
		e.LicenseID, e.AgreementID, e.ProductCode, ft, e.OfferID, e.AgreementStatus, e.Raw)
	if err != nil {
		return false, fmt.Errorf("add event %s: %w", e.ID, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// EventsFor returns the events of a subscriber identity, including those of
// agreements linked to its license.
func (d *DB) EventsFor(ctx context.Context, id mpsaas.Identity) ([]mpsaas.Event, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT id, kind, source, event_time, received_at, customer_identifier, aws_account_id,
		license_id, agreement_id, product_code, free_trial, offer_id, agreement_status, raw FROM events
		WHERE (customer_identifier = ?1 AND ?1 != '') OR (license_id = ?2 AND ?2 != '')
		   OR agreement_id IN (SELECT agreement_id FROM events WHERE license_id = ?2 AND ?2 != '' AND agreement_id != '')
		ORDER BY event_time, id`, id.CustomerIdentifier, id.LicenseID)
	if err != nil {
		return nil, fmt.Errorf("events for %s/%s: %w", id.CustomerIdentifier, id.LicenseID, err)
	}
	defer rows.Close()
	var out []mpsaas.Event
	for rows.Next() {
		var e mpsaas.Event
		var t, recv int64
		var ft sql.NullInt64
		if err := rows.Scan(&e.ID, &e.Kind, &e.Source, &t, &recv, &e.CustomerIdentifier, &e.CustomerAWSAccountID,
			&e.LicenseID, &e.AgreementID, &e.ProductCode, &ft, &e.OfferID, &e.AgreementStatus, &e.Raw); err != nil {
			return nil, fmt.Errorf("scan event: %w", err)
		}
		e.Time, e.ReceivedAt = fromUnixNano(t), fromUnixNano(recv)
		if ft.Valid {
			b := ft.Int64 != 0
			e.FreeTrial = &b
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// SubscribersFor returns the keys of subscribers the event belongs to.
func (d *DB) SubscribersFor(ctx context.Context, e mpsaas.Event) ([]string, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT key FROM subscribers
		WHERE (customer_identifier = ?1 AND ?1 != '') OR (license_id = ?2 AND ?2 != '')
		   OR license_id IN (SELECT license_id FROM events WHERE agreement_id = ?3 AND ?3 != '' AND license_id != '')
		ORDER BY key`, e.CustomerIdentifier, e.LicenseID, e.AgreementID)
	if err != nil {
		return nil, fmt.Errorf("subscribers for event %s: %w", e.ID, err)
	}
	defer rows.Close()
	var keys []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

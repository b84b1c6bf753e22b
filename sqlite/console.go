package sqlite

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/mpsaas/mpsaas"
)

var _ mpsaas.ConsoleStore = (*DB)(nil)

// ListSubscribers pages through the subscribers in key order, 500 rows a
// read, keeping those f matches: a search reads the table once at most.
func (d *DB) ListSubscribers(ctx context.Context, f mpsaas.SubscriberFilter) (mpsaas.SubscriberPage, error) {
	var page mpsaas.SubscriberPage
	after, want := f.After, f.PageSize()
	for {
		chunk, err := d.querySubscribers(ctx, "list subscribers", `WHERE key > ? ORDER BY key LIMIT 500`, after)
		if err != nil {
			return page, err
		}
		for _, s := range chunk {
			page.Scanned++
			after = s.Key
			if !f.Match(s) {
				continue
			}
			page.Subscribers = append(page.Subscribers, s)
			if len(page.Subscribers) == want {
				page.Next = s.Key
				if more, err := d.hasSubscriberAfter(ctx, s.Key); err != nil || !more {
					page.Next = ""
					return page, err
				}
				return page, nil
			}
		}
		if len(chunk) < 500 {
			return page, nil
		}
	}
}

func (d *DB) hasSubscriberAfter(ctx context.Context, key string) (bool, error) {
	var n int
	err := d.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM (SELECT 1 FROM subscribers WHERE key > ? LIMIT 1)`, key).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("list subscribers: %w", err)
	}
	return n > 0, nil
}

const consoleOutboxColumns = `id, channel, idempotency_key, payload, attempts, next_attempt_at, last_error, subscriber_key, created_at, delivered_at`

// DeliveriesFor returns the subscriber's queued access changes, newest
// first (channels are those stored: SQLite keeps every row).
func (d *DB) DeliveriesFor(ctx context.Context, s *mpsaas.Subscriber, _ []string) ([]mpsaas.OutboxMessage, error) {
	return d.consoleOutbox(ctx, `WHERE subscriber_key = ? ORDER BY id DESC LIMIT 200`, s.Key)
}

// FailedDeliveries returns undelivered messages with a failed attempt.
func (d *DB) FailedDeliveries(ctx context.Context, limit int) ([]mpsaas.OutboxMessage, error) {
	return d.consoleOutbox(ctx, `WHERE delivered_at = 0 AND attempts > 0 ORDER BY id LIMIT ?`, limit)
}

func (d *DB) consoleOutbox(ctx context.Context, where string, args ...any) ([]mpsaas.OutboxMessage, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT `+consoleOutboxColumns+` FROM outbox `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	defer rows.Close()
	var out []mpsaas.OutboxMessage
	for rows.Next() {
		var m mpsaas.OutboxMessage
		var payload string
		var id, next, created, delivered int64
		if err := rows.Scan(&id, &m.Channel, &m.IdempotencyKey, &payload, &m.Attempts, &next, &m.LastError, &m.SubscriberKey, &created, &delivered); err != nil {
			return nil, fmt.Errorf("scan outbox message: %w", err)
		}
		m.ID, m.Payload, m.NextAttemptAt, m.CreatedAt = strconv.FormatInt(id, 10), []byte(payload), fromUnixNano(next), fromUnixNano(created)
		if delivered != 0 {
			m.DeliveredAt = fromUnixNano(delivered)
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// RetryDelivery makes an undelivered message due now.
func (d *DB) RetryDelivery(ctx context.Context, id string, now time.Time) error {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return mpsaas.Errorf(mpsaas.ENOTFOUND, "no undelivered message %q", id)
	}
	res, err := d.db.ExecContext(ctx, `UPDATE outbox SET next_attempt_at = ? WHERE id = ? AND delivered_at = 0`, unixNano(now), n)
	if err != nil {
		return fmt.Errorf("retry outbox %s: %w", id, err)
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return mpsaas.Errorf(mpsaas.ENOTFOUND, "no undelivered message %q", id)
	}
	return nil
}

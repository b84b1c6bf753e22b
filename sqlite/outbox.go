package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/mpsaas/mpsaas"
)

var (
	_ mpsaas.Outbox = (*DB)(nil)
	_ mpsaas.Queue  = (*DB)(nil)
)

// DueMessages returns undelivered outbox messages whose next attempt is due, oldest first.
func (d *DB) DueMessages(ctx context.Context, now time.Time, limit int) ([]mpsaas.OutboxMessage, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT `+outboxColumns+`
		FROM outbox WHERE delivered_at = 0 AND next_attempt_at <= ? ORDER BY id LIMIT ?`, unixNano(now), limit)
	if err != nil {
		return nil, fmt.Errorf("due outbox messages: %w", err)
	}
	return scanOutbox(rows, false)
}

// outboxColumns are what delivery needs of a message; outboxDetailColumns
// add what the console shows (scanOutbox with full).
const (
	outboxColumns       = `id, channel, idempotency_key, payload, attempts, next_attempt_at, last_error`
	outboxDetailColumns = outboxColumns + `, subscriber_key, created_at, delivered_at, history`
)

// scanOutbox reads the rows of an outbox query of outboxColumns, or of
// outboxDetailColumns when full.
func scanOutbox(rows *sql.Rows, full bool) ([]mpsaas.OutboxMessage, error) {
	defer rows.Close()
	var out []mpsaas.OutboxMessage
	for rows.Next() {
		var m mpsaas.OutboxMessage
		var payload, history string
		var next, id, created, delivered int64
		dest := []any{&id, &m.Channel, &m.IdempotencyKey, &payload, &m.Attempts, &next, &m.LastError}
		if full {
			dest = append(dest, &m.SubscriberKey, &created, &delivered, &history)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("scan outbox message: %w", err)
		}
		m.ID, m.Payload, m.NextAttemptAt = strconv.FormatInt(id, 10), []byte(payload), fromUnixNano(next)
		if full {
			m.CreatedAt = fromUnixNano(created)
			if delivered != 0 {
				m.DeliveredAt = fromUnixNano(delivered)
			}
			if err := json.Unmarshal([]byte(history), &m.History); err != nil {
				return nil, fmt.Errorf("outbox message %d history: %w", id, err)
			}
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// MarkDelivered records a delivery.
func (d *DB) MarkDelivered(ctx context.Context, id string, at time.Time) error {
	_, err := d.db.ExecContext(ctx, `UPDATE outbox SET delivered_at = ?, attempts = attempts + 1, last_error = '', history = `+appendHistory+` WHERE id = ?`,
		unixNano(at), attemptJSON(at, ""), id)
	if err != nil {
		return fmt.Errorf("mark outbox %s delivered: %w", id, err)
	}
	return nil
}

// MarkFailed records a failed attempt.
func (d *DB) MarkFailed(ctx context.Context, id string, errMsg string, next time.Time) error {
	_, err := d.db.ExecContext(ctx, `UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, history = `+appendHistory+` WHERE id = ?`,
		errMsg, unixNano(next), attemptJSON(d.Now(), errMsg), id)
	if err != nil {
		return fmt.Errorf("mark outbox %s failed: %w", id, err)
	}
	return nil
}

// Enqueue appends a message to the local queue.
func (d *DB) Enqueue(ctx context.Context, body []byte) error {
	now := d.Now()
	if _, err := d.db.ExecContext(ctx, `INSERT INTO queue (body, enqueued_at, visible_at) VALUES (?, ?, ?)`, body, unixNano(now), unixNano(now)); err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	return nil
}

// Receive returns up to max visible messages and hides them for visibility.
func (d *DB) Receive(ctx context.Context, max int, visibility time.Duration) ([]mpsaas.QueueMessage, error) {
	now := d.Now()
	var out []mpsaas.QueueMessage
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id, body, attempts FROM queue WHERE dead_at = 0 AND visible_at <= ? ORDER BY id LIMIT ?`, unixNano(now), max)
		if err != nil {
			return err
		}
		for rows.Next() {
			var m mpsaas.QueueMessage
			if err := rows.Scan(&m.ID, &m.Body, &m.Attempts); err != nil {
				rows.Close()
				return err
			}
			m.Attempts++
			out = append(out, m)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, m := range out {
			if _, err := tx.ExecContext(ctx, `UPDATE queue SET attempts = attempts + 1, visible_at = ? WHERE id = ?`, unixNano(now.Add(visibility)), m.ID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("receive from queue: %w", err)
	}
	return out, nil
}

// Delete removes a handled message.
func (d *DB) Delete(ctx context.Context, id int64) error {
	if _, err := d.db.ExecContext(ctx, `DELETE FROM queue WHERE id = ?`, id); err != nil {
		return fmt.Errorf("delete queue message %d: %w", id, err)
	}
	return nil
}

// DeadLetter parks a message that cannot be handled; it stays for inspection.
func (d *DB) DeadLetter(ctx context.Context, id int64, reason string) error {
	if _, err := d.db.ExecContext(ctx, `UPDATE queue SET dead_at = ?, last_error = ? WHERE id = ?`, unixNano(d.Now()), reason, id); err != nil {
		return fmt.Errorf("dead-letter queue message %d: %w", id, err)
	}
	return nil
}

// DueMessagesOn returns up to limit due messages of one channel (the
// outbox_due index, then the channel: a channel's backlog never hides
// another's).
func (d *DB) DueMessagesOn(ctx context.Context, channel string, now time.Time, limit int) ([]mpsaas.OutboxMessage, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT `+outboxColumns+`
		FROM outbox WHERE delivered_at = 0 AND next_attempt_at <= ? AND channel = ? ORDER BY id LIMIT ?`, unixNano(now), channel, limit)
	if err != nil {
		return nil, fmt.Errorf("due outbox messages on %s: %w", channel, err)
	}
	return scanOutbox(rows, false)
}

// appendHistory appends the attempt given as JSON to an outbox row's
// history, keeping the last 20.
const appendHistory = `json_insert(CASE WHEN json_array_length(history) >= 20 THEN json_remove(history, '$[0]') ELSE history END, '$[#]', json(?))`

func attemptJSON(at time.Time, errMsg string) string {
	b, _ := json.Marshal(mpsaas.DeliveryAttempt{At: at.UTC(), Error: errMsg})
	return string(b)
}

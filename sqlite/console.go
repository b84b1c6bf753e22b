package sqlite

import (
	"context"
	"fmt"
	"sort"
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
	rows, err := d.db.QueryContext(ctx, `SELECT `+outboxDetailColumns+` FROM outbox `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return scanOutbox(rows, true)
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

var _ mpsaas.UsageHistory = (*DB)(nil)

// UsageHistory reads the buyer's meter records of the hours (the unique
// index on subscriber_key, dimension, hour) and adds its pending usage
// (the small index of pending rows).
func (d *DB) UsageHistory(ctx context.Context, key string, from, to time.Time) ([]mpsaas.HourUsage, error) {
	byKey := map[string]*mpsaas.HourUsage{}
	var out []*mpsaas.HourUsage
	get := func(dim string, hour int64) *mpsaas.HourUsage {
		k := fmt.Sprintf("%s\x1f%d", dim, hour)
		if u := byKey[k]; u != nil {
			return u
		}
		u := &mpsaas.HourUsage{Dimension: dim, Hour: time.Unix(hour, 0).UTC(), State: mpsaas.UsagePending}
		byKey[k] = u
		out = append(out, u)
		return u
	}
	rows, err := d.db.QueryContext(ctx, `SELECT dimension, hour, quantity, COALESCE(usage_quantity, 0), state, COALESCE(batch_id, 0), metering_record_id, reason
		FROM meter_records WHERE subscriber_key = ? AND hour BETWEEN ? AND ?`, key, from.Unix(), to.Unix())
	if err != nil {
		return nil, fmt.Errorf("usage history of %s: %w", key, err)
	}
	for rows.Next() {
		var dim, state, mrid, reason string
		var hour, q, uq, batch int64
		if err := rows.Scan(&dim, &hour, &q, &uq, &state, &batch, &mrid, &reason); err != nil {
			rows.Close()
			return nil, fmt.Errorf("usage history of %s: %w", key, err)
		}
		u := get(dim, hour)
		u.Usage, u.Quantity, u.State, u.BatchID, u.MeteringRecordID, u.Reason = uq, q, state, batch, mrid, reason
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	pending, err := d.db.QueryContext(ctx, `SELECT dimension, meter_hour, SUM(quantity) FROM usage
		WHERE state = 'pending' AND subscriber_key = ? AND meter_hour BETWEEN ? AND ? GROUP BY dimension, meter_hour`, key, from.Unix(), to.Unix())
	if err != nil {
		return nil, fmt.Errorf("pending usage of %s: %w", key, err)
	}
	defer pending.Close()
	for pending.Next() {
		var dim string
		var hour, q int64
		if err := pending.Scan(&dim, &hour, &q); err != nil {
			return nil, err
		}
		u := get(dim, hour)
		u.Usage += q
	}
	if err := pending.Err(); err != nil {
		return nil, err
	}
	res := make([]mpsaas.HourUsage, len(out))
	for i, u := range out {
		res[i] = *u
	}
	mpsaas.SortHourUsage(res)
	return res, nil
}

// ProductUsage sums the meter records of the hours from..to by product:
// the usage they include and what AWS billed. It reads the records of
// those hours by the hour index (at 100,000 buyers x 3 dimensions, 300,000
// rows an hour).
func (d *DB) ProductUsage(ctx context.Context, from, to time.Time) ([]mpsaas.ProductHour, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT product_code, hour, SUM(COALESCE(usage_quantity, 0)), SUM(CASE WHEN state = 'billed' THEN quantity ELSE 0 END)
		FROM meter_records WHERE hour BETWEEN ? AND ? GROUP BY product_code, hour ORDER BY hour, product_code`, from.Unix(), to.Unix())
	if err != nil {
		return nil, fmt.Errorf("usage by product: %w", err)
	}
	defer rows.Close()
	var out []mpsaas.ProductHour
	for rows.Next() {
		var p mpsaas.ProductHour
		var h int64
		if err := rows.Scan(&p.ProductCode, &h, &p.Usage, &p.Billed); err != nil {
			return nil, fmt.Errorf("usage by product: %w", err)
		}
		p.Hour = time.Unix(h, 0).UTC()
		out = append(out, p)
	}
	return out, rows.Err()
}

// DeadNotifications returns the dead-lettered notifications of the local
// queue, newest first, at most limit.
func (d *DB) DeadNotifications(ctx context.Context, limit int) ([]mpsaas.DeadNotification, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT id, body, attempts, last_error, dead_at FROM queue WHERE dead_at != 0 ORDER BY id DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("dead notifications: %w", err)
	}
	defer rows.Close()
	var out []mpsaas.DeadNotification
	for rows.Next() {
		var m mpsaas.DeadNotification
		var body []byte
		var dead int64
		if err := rows.Scan(&m.ID, &body, &m.Attempts, &m.Reason, &dead); err != nil {
			return nil, fmt.Errorf("dead notifications: %w", err)
		}
		m.Body, m.DeadAt = string(body), fromUnixNano(dead)
		out = append(out, m)
	}
	return out, rows.Err()
}

// RedriveNotification puts a dead-lettered notification back in the queue,
// visible now, with its attempts reset.
func (d *DB) RedriveNotification(ctx context.Context, id int64) error {
	res, err := d.db.ExecContext(ctx, `UPDATE queue SET dead_at = 0, attempts = 0, visible_at = ? WHERE id = ? AND dead_at != 0`, unixNano(d.Now()), id)
	if err != nil {
		return fmt.Errorf("redrive notification %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return mpsaas.Errorf(mpsaas.ENOTFOUND, "no dead-lettered notification %d", id)
	}
	return nil
}

// HourSummaries counts the hours from..to: meter records by state (the
// hour index) and pending usage by meter hour (the pending index).
func (d *DB) HourSummaries(ctx context.Context, from, to time.Time) ([]mpsaas.HourSummary, error) {
	byHour := map[int64]*mpsaas.HourSummary{}
	get := func(h int64) *mpsaas.HourSummary {
		if s := byHour[h]; s != nil {
			return s
		}
		s := &mpsaas.HourSummary{Hour: time.Unix(h, 0).UTC(), Counts: map[string]mpsaas.StateCount{}, Done: true}
		byHour[h] = s
		return s
	}
	rows, err := d.db.QueryContext(ctx, `SELECT hour, state, SUM(usage_records), SUM(COALESCE(usage_quantity, 0)), COUNT(*), SUM(quantity), SUM(shares != '')
		FROM meter_records WHERE hour BETWEEN ? AND ? GROUP BY hour, state`, from.Unix(), to.Unix())
	if err != nil {
		return nil, fmt.Errorf("hour summaries: %w", err)
	}
	for rows.Next() {
		var h, late int64
		var st string
		var c mpsaas.StateCount
		if err := rows.Scan(&h, &st, &c.Records, &c.Quantity, &c.MeterRecords, &c.MeterQuantity, &late); err != nil {
			rows.Close()
			return nil, fmt.Errorf("hour summaries: %w", err)
		}
		s := get(h)
		s.Counts[st] = c
		s.Late += late
		if st == mpsaas.UsageSealed || st == mpsaas.UsageBatched {
			s.Done = false
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	pending, err := d.db.QueryContext(ctx, `SELECT meter_hour, COUNT(*), SUM(quantity) FROM usage
		WHERE state = 'pending' AND meter_hour BETWEEN ? AND ? GROUP BY meter_hour`, from.Unix(), to.Unix())
	if err != nil {
		return nil, fmt.Errorf("hour summaries: %w", err)
	}
	defer pending.Close()
	for pending.Next() {
		var h int64
		var c mpsaas.StateCount
		if err := pending.Scan(&h, &c.Records, &c.Quantity); err != nil {
			return nil, err
		}
		s := get(h)
		s.Counts[mpsaas.UsagePending], s.Done = c, false
	}
	if err := pending.Err(); err != nil {
		return nil, err
	}
	out := make([]mpsaas.HourSummary, 0, len(byHour))
	for _, s := range byHour {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Hour.After(out[j].Hour) })
	return out, nil
}

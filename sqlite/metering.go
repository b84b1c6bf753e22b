package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/mpsaas/mpsaas"
)

var _ mpsaas.MeterStore = (*DB)(nil)

// AddUsage stores a request's rows atomically under its idempotency key.
// Concurrent requests are group-committed: one writer goroutine stores all
// the requests waiting for it in one transaction, each in its own
// savepoint, so a request that fails (a reused idempotency key) changes
// nothing and the others still commit. A request is answered only after
// the transaction holding it committed.
func (d *DB) AddUsage(ctx context.Context, key, hash string, rows []mpsaas.UsageRow, openHour, now time.Time) (mpsaas.UsageReceipt, error) {
	req := &usageWrite{key: key, hash: hash, rows: rows, openHour: openHour, now: now, done: make(chan usageWriteResult, 1)}
	d.startUsageWriter()
	select {
	case d.usageWrites <- req:
	case <-ctx.Done():
		return mpsaas.UsageReceipt{}, ctx.Err()
	case <-d.closing:
		return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.EUNAVAILABLE, "the database is closing")
	}
	select {
	case r := <-req.done:
		if r.err != nil && mpsaas.ErrorCode(r.err) == mpsaas.EINTERNAL {
			return r.rec, fmt.Errorf("add usage %s: %w", key, r.err)
		}
		return r.rec, r.err
	case <-ctx.Done():
		// The request may still commit; a retry with the same key then
		// answers with its receipt.
		return mpsaas.UsageReceipt{}, ctx.Err()
	}
}

// usageWrite is one AddUsage call waiting for the writer.
type usageWrite struct {
	key, hash     string
	rows          []mpsaas.UsageRow
	openHour, now time.Time
	done          chan usageWriteResult
}

type usageWriteResult struct {
	rec mpsaas.UsageReceipt
	err error
}

// maxGroupRows bounds the usage rows of one group commit.
const maxGroupRows = 50000

// usageWriteTimeout bounds one group transaction.
const usageWriteTimeout = 30 * time.Second

func (d *DB) startUsageWriter() {
	d.writerOnce.Do(func() {
		d.writerDone = make(chan struct{})
		go d.usageWriter()
	})
}

// usageWriter takes the first waiting request, then every other one already
// waiting (up to maxGroupRows rows), and stores them in one transaction.
func (d *DB) usageWriter() {
	defer close(d.writerDone)
	var group []*usageWrite
	for {
		group = group[:0]
		select {
		case req := <-d.usageWrites:
			group = append(group, req)
		case <-d.closing:
			return
		}
		n := len(group[0].rows)
	more:
		for n < maxGroupRows {
			select {
			case req := <-d.usageWrites:
				group = append(group, req)
				n += len(req.rows)
			default:
				break more
			}
		}
		d.writeUsageGroup(group)
	}
}

func (d *DB) writeUsageGroup(group []*usageWrite) {
	ctx, cancel := context.WithTimeout(context.Background(), usageWriteTimeout)
	defer cancel()
	results := make([]usageWriteResult, len(group))
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		ins, err := tx.PrepareContext(ctx, `INSERT INTO usage (request_id, subscriber_key, dimension, quantity, usage_time, meter_hour, tag_sig, received_at, reason)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer ins.Close()
		var hours *hourPlacer
		for i, req := range group {
			if hours == nil || !hours.openHour.Equal(req.openHour) {
				hours = newHourPlacer(tx, ctx, req.openHour)
			}
			if _, err := tx.ExecContext(ctx, `SAVEPOINT usage_request`); err != nil {
				return err
			}
			rec, err := addUsage(ctx, tx, ins, hours, req)
			if err != nil {
				if _, rerr := tx.ExecContext(ctx, `ROLLBACK TO usage_request`); rerr != nil {
					return rerr
				}
				if mpsaas.ErrorCode(err) == mpsaas.EINTERNAL {
					// The placer's cache may hold what was rolled back.
					hours = nil
				}
			}
			if _, err := tx.ExecContext(ctx, `RELEASE usage_request`); err != nil {
				return err
			}
			results[i] = usageWriteResult{rec: rec, err: err}
		}
		return nil
	})
	for i, req := range group {
		if err != nil {
			results[i] = usageWriteResult{err: err}
		}
		req.done <- results[i]
	}
}

// addUsage stores one request inside the group transaction.
func addUsage(ctx context.Context, tx *sql.Tx, ins *sql.Stmt, hours *hourPlacer, req *usageWrite) (mpsaas.UsageReceipt, error) {
	var prevHash string
	var accepted int
	var firstID, received int64
	err := tx.QueryRowContext(ctx, `SELECT hash, accepted, first_id, received_at FROM usage_requests WHERE key = ?`, req.key).Scan(&prevHash, &accepted, &firstID, &received)
	switch {
	case err == nil:
		if prevHash != req.hash {
			return mpsaas.UsageReceipt{}, mpsaas.Errorf(mpsaas.ECONFLICT, "idempotency key %q was already used for different usage records", req.key)
		}
		return mpsaas.UsageReceipt{IdempotencyKey: req.key, Accepted: accepted, FirstID: firstID, ReceivedAt: fromUnixNano(received), Replayed: true}, nil
	case !isNoRows(err):
		return mpsaas.UsageReceipt{}, err
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO usage_requests (key, hash, accepted, first_id, received_at) VALUES (?, ?, ?, 0, ?)`,
		req.key, req.hash, len(req.rows), unixNano(req.now))
	if err != nil {
		return mpsaas.UsageReceipt{}, err
	}
	reqID, _ := res.LastInsertId()
	var total int64
	for i, r := range req.rows {
		total += r.Quantity
		h, err := hours.place(r.SubscriberKey, r.Dimension, mpsaas.Hour(r.Time))
		if err != nil {
			return mpsaas.UsageReceipt{}, err
		}
		reason := ""
		if uh := mpsaas.Hour(r.Time); !h.Equal(uh) {
			reason = mpsaas.LateReason(uh, h)
		}
		res, err := ins.ExecContext(ctx, reqID, r.SubscriberKey, r.Dimension, r.Quantity, unixNano(r.Time), h.Unix(), r.TagSig, unixNano(req.now), reason)
		if err != nil {
			return mpsaas.UsageReceipt{}, err
		}
		if i == 0 {
			firstID, _ = res.LastInsertId()
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE usage_requests SET first_id = ? WHERE id = ?`, firstID, reqID); err != nil {
		return mpsaas.UsageReceipt{}, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE usage_totals SET records = records + ?, quantity = quantity + ? WHERE id = 1`, len(req.rows), total); err != nil {
		return mpsaas.UsageReceipt{}, err
	}
	return mpsaas.UsageReceipt{IdempotencyKey: req.key, Accepted: len(req.rows), FirstID: firstID, ReceivedAt: req.now}, nil
}

// hourPlacer decides the meter hour of a usage record: its own hour, unless
// that (subscriber, dimension, hour) was already sealed, in which case the
// first free hour from the open hour on. It caches lookups within one tx.
type hourPlacer struct {
	tx       *sql.Tx
	ctx      context.Context
	openHour time.Time
	sealed   map[string]bool
	// anyInHour caches whether an hour has any meter record at all: for the
	// hours usage usually arrives for, none, so no per-key lookup is needed.
	anyInHour map[int64]bool
}

func newHourPlacer(tx *sql.Tx, ctx context.Context, openHour time.Time) *hourPlacer {
	return &hourPlacer{tx: tx, ctx: ctx, openHour: openHour, sealed: map[string]bool{}, anyInHour: map[int64]bool{}}
}

func (p *hourPlacer) isSealed(sub, dim string, h time.Time) (bool, error) {
	any, ok := p.anyInHour[h.Unix()]
	if !ok {
		if err := p.tx.QueryRowContext(p.ctx, `SELECT EXISTS (SELECT 1 FROM meter_records WHERE hour = ?)`, h.Unix()).Scan(&any); err != nil {
			return false, err
		}
		p.anyInHour[h.Unix()] = any
	}
	if !any {
		return false, nil
	}
	k := sub + "\x00" + dim + "\x00" + fmt.Sprint(h.Unix())
	if v, ok := p.sealed[k]; ok {
		return v, nil
	}
	var n int
	err := p.tx.QueryRowContext(p.ctx, `SELECT COUNT(*) FROM meter_records WHERE subscriber_key = ? AND dimension = ? AND hour = ?`, sub, dim, h.Unix()).Scan(&n)
	if err != nil {
		return false, err
	}
	p.sealed[k] = n > 0
	return n > 0, nil
}

func (p *hourPlacer) place(sub, dim string, h time.Time) (time.Time, error) {
	return mpsaas.MeterHour(h, p.openHour, func(h time.Time) (bool, error) { return p.isSealed(sub, dim, h) })
}

// PendingRange returns the lowest pending usage id, the highest usage id
// and the highest meter record id.
func (d *DB) PendingRange(ctx context.Context) (mpsaas.PendingScan, error) {
	var scan mpsaas.PendingScan
	err := d.db.QueryRowContext(ctx, `SELECT COALESCE((SELECT MIN(id) FROM usage WHERE state = 'pending'), 0), COALESCE((SELECT MAX(id) FROM usage), 0),
		COALESCE((SELECT MAX(id) FROM meter_records), 0)`).Scan(&scan.Lo, &scan.Hi, &scan.Records)
	if err != nil {
		return mpsaas.PendingScan{}, fmt.Errorf("pending range: %w", err)
	}
	if scan.Lo == 0 {
		return mpsaas.PendingScan{Records: scan.Records}, nil
	}
	return scan, nil
}

// pendingWhere is the condition that selects the usage of a scan. Usage
// ids up to scan.Hi are committed and only a metering pass seals them, so
// the condition selects the same rows in ScanPending and SealUsage.
func pendingWhere(scan mpsaas.PendingScan) (string, []any) {
	cond, cargs := closedHours(scan, "meter_hour")
	return `id BETWEEN ? AND ? AND state = 'pending' AND (` + cond + `)`, append([]any{scan.Lo, scan.Hi}, cargs...)
}

// closedHours is the scan's decision of which hours are sealed, on the
// hour column col: those before scan.Before, and up to FlushUntil for the
// buyers being flushed.
func closedHours(scan mpsaas.PendingScan, col string) (string, []any) {
	q := col + ` < ?`
	args := []any{scan.Before.Unix()}
	if len(scan.Flush) > 0 {
		q += ` OR (` + col + ` <= ? AND subscriber_key IN (` + placeholders(len(scan.Flush)) + `))`
		args = append(args, scan.FlushUntil.Unix())
		for _, k := range scan.Flush {
			args = append(args, k)
		}
	}
	return q, args
}

// ScanPending streams the sums of pending usage in [lo, hi] per key and tag
// set. The scan reads the id range in order; SQLite sorts the groups.
func (d *DB) ScanPending(ctx context.Context, scan *mpsaas.PendingScan, fn func(mpsaas.UsageGroup) error) error {
	where, args := pendingWhere(*scan)
	rows, err := d.db.QueryContext(ctx, `SELECT meter_hour, subscriber_key, dimension, usage_time / 3600000000000 * 3600, tag_sig, SUM(quantity), COUNT(*) FROM usage
		WHERE `+where+` GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5`, args...)
	if err != nil {
		return fmt.Errorf("scan pending usage: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var g mpsaas.UsageGroup
		var h, uh int64
		if err := rows.Scan(&h, &g.SubscriberKey, &g.Dimension, &uh, &g.TagSig, &g.Quantity, &g.Records); err != nil {
			return err
		}
		g.Hour = time.Unix(h, 0).UTC()
		g.UsageHour = time.Unix(min(uh, h), 0).UTC()
		if err := fn(g); err != nil {
			return err
		}
	}
	return rows.Err()
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

func encodeAllocations(a map[string]int64) (string, error) {
	if a == nil {
		return "", nil
	}
	b, err := json.Marshal(a)
	return string(b), err
}

// InsertMeterRecords stores meter records; keys that have one keep it and
// are returned.
func (d *DB) InsertMeterRecords(ctx context.Context, recs []mpsaas.MeterRecord, upTo int64) ([]mpsaas.MeterKey, error) {
	now := d.Now()
	var conflicts []mpsaas.MeterKey
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		conflicts = conflicts[:0]
		// Uncounted until SealUsage seals the usage (see 0004_totals.sql).
		ins, err := tx.PrepareContext(ctx, `INSERT INTO meter_records (subscriber_key, dimension, hour, quantity, usage_quantity, usage_records, counted,
			max_usage_id, allocations, customer_identifier, aws_account_id, license_arn, product_code, state, reason, created_at, updated_at, shares)
			VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (subscriber_key, dimension, hour) DO NOTHING`)
		if err != nil {
			return err
		}
		defer ins.Close()
		for _, r := range recs {
			alloc, err := encodeAllocations(r.Allocations)
			if err != nil {
				return err
			}
			shares := ""
			if r.Shares != nil {
				b, err := json.Marshal(r.Shares)
				if err != nil {
					return err
				}
				shares = string(b)
			}
			state := r.State
			if state == "" {
				state = mpsaas.UsageSealed
			}
			res, err := ins.ExecContext(ctx, r.SubscriberKey, r.Dimension, r.Hour.Unix(), r.Quantity, r.UsageQuantity, r.UsageRecords, upTo, alloc, r.CustomerIdentifier,
				r.CustomerAWSAccountID, r.LicenseArn, r.ProductCode, state, r.Reason, unixNano(now), unixNano(now), shares)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				conflicts = append(conflicts, mpsaas.MeterKey{SubscriberKey: r.SubscriberKey, Dimension: r.Dimension, Hour: r.Hour})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("insert meter records: %w", err)
	}
	return conflicts, nil
}

// SealUsage marks summed pending usage sealed; then the usage of
// conflicting keys that their existing record does not include goes back to
// pending, in the first free hour from openHour on.
func (d *DB) SealUsage(ctx context.Context, scan mpsaas.PendingScan, conflicts []mpsaas.MeterKey, openHour time.Time) (int, error) {
	lo, hi := scan.Lo, scan.Hi
	moved := 0
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		moved = 0
		where, args := pendingWhere(scan)
		if _, err := tx.ExecContext(ctx, `UPDATE usage SET state = 'sealed' WHERE `+where, args...); err != nil {
			return err
		}
		// The records of this pass's keys (stored by it or by an interrupted
		// pass) now hold sealed usage: they count in the totals from here on.
		// A record of an interrupted pass for an hour this pass leaves open
		// (the clock read earlier) waits, uncounted, with its usage.
		cond, cargs := closedHours(scan, "hour")
		if _, err := tx.ExecContext(ctx, `INSERT INTO meter_totals (state, records, usage_records, usage_quantity, quantity)
			SELECT state, COUNT(*), SUM(usage_records), SUM(COALESCE(usage_quantity, 0)), SUM(quantity) FROM meter_records
			WHERE counted = 0 AND (`+cond+`) GROUP BY state
			ON CONFLICT (state) DO UPDATE SET records = records + excluded.records, usage_records = usage_records + excluded.usage_records,
				usage_quantity = usage_quantity + excluded.usage_quantity, quantity = quantity + excluded.quantity`, cargs...); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE meter_records SET counted = 1 WHERE counted = 0 AND (`+cond+`)`, cargs...); err != nil {
			return err
		}
		hours := newHourPlacer(tx, ctx, openHour)
		for _, k := range conflicts {
			var maxID int64
			if err := tx.QueryRowContext(ctx, `SELECT max_usage_id FROM meter_records WHERE subscriber_key = ? AND dimension = ? AND hour = ?`,
				k.SubscriberKey, k.Dimension, k.Hour.Unix()).Scan(&maxID); err != nil {
				return err
			}
			if maxID >= hi {
				continue // the record includes all of it (stored by an interrupted run)
			}
			to, err := hours.place(k.SubscriberKey, k.Dimension, k.Hour)
			if err != nil {
				return err
			}
			res, err := tx.ExecContext(ctx, `UPDATE usage SET state = 'pending', meter_hour = ?, reason = ? WHERE id > ? AND id <= ? AND state = 'sealed'
				AND subscriber_key = ? AND dimension = ? AND meter_hour = ?`,
				to.Unix(), "hour "+k.Hour.Format(time.RFC3339)+" was already metered", max(maxID, lo-1), hi, k.SubscriberKey, k.Dimension, k.Hour.Unix())
			if err != nil {
				return err
			}
			n, _ := res.RowsAffected()
			moved += int(n)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("seal usage: %w", err)
	}
	return moved, nil
}

// AddHeartbeats stores zero-quantity meter records where none exist.
func (d *DB) AddHeartbeats(ctx context.Context, records []mpsaas.MeterRecord) (int, error) {
	now := d.Now()
	added := 0
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		ins, err := tx.PrepareContext(ctx, `INSERT INTO meter_records (subscriber_key, dimension, hour, quantity, usage_quantity, customer_identifier,
			aws_account_id, license_arn, product_code, state, created_at, updated_at)
			VALUES (?, ?, ?, 0, 0, ?, ?, ?, ?, 'sealed', ?, ?) ON CONFLICT (subscriber_key, dimension, hour) DO NOTHING`)
		if err != nil {
			return err
		}
		defer ins.Close()
		for _, r := range records {
			res, err := ins.ExecContext(ctx, r.SubscriberKey, r.Dimension, r.Hour.Unix(), r.CustomerIdentifier, r.CustomerAWSAccountID, r.LicenseArn, r.ProductCode, unixNano(now), unixNano(now))
			if err != nil {
				return err
			}
			n, _ := res.RowsAffected()
			added += int(n)
		}
		// Heartbeats are stored counted: they hold no usage to seal.
		t := totals{}
		t.add(mpsaas.UsageSealed, 1, meterSums{int64(added)})
		return t.apply(ctx, tx)
	})
	if err != nil {
		return 0, fmt.Errorf("add heartbeats: %w", err)
	}
	return added, nil
}

// CreateBatches puts sealed meter records into batches of at most 25, a
// chunk of records per transaction so memory stays bounded.
func (d *DB) CreateBatches(ctx context.Context, now time.Time) (int, error) {
	const chunk = 400 * mpsaas.MaxBatchRecords
	created := 0
	for {
		n, more, err := d.createBatchChunk(ctx, now, chunk)
		created += n
		if err != nil {
			return created, fmt.Errorf("create batches: %w", err)
		}
		if !more {
			return created, nil
		}
	}
}

func (d *DB) createBatchChunk(ctx context.Context, now time.Time, chunk int) (created int, more bool, err error) {
	err = d.withTx(ctx, func(tx *sql.Tx) error {
		t := totals{}
		rows, err := tx.QueryContext(ctx, `SELECT `+meterColumns+` FROM meter_records WHERE state = 'sealed'
			ORDER BY CASE WHEN customer_identifier = '' THEN 'l:' || product_code ELSE 'p:' || product_code END, id LIMIT ?`, chunk)
		if err != nil {
			return err
		}
		recs, err := scanMeterRecords(rows)
		if err != nil {
			return err
		}
		more = len(recs) == chunk
		var batch []mpsaas.MeterRecord
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			if err := insertBatch(ctx, tx, batch, now, t); err != nil {
				return err
			}
			created++
			batch = batch[:0]
			return nil
		}
		for _, r := range recs {
			if len(batch) == mpsaas.MaxBatchRecords || (len(batch) > 0 && mpsaas.BatchGroup(batch[0]) != mpsaas.BatchGroup(r)) {
				if err := flush(); err != nil {
					return err
				}
			}
			batch = append(batch, r)
		}
		if err := flush(); err != nil {
			return err
		}
		return t.apply(ctx, tx)
	})
	return created, more, err
}

// insertBatch stores a batch of records. Sealed records become batched,
// which t records; records already batched (t nil) just move.
func insertBatch(ctx context.Context, tx *sql.Tx, recs []mpsaas.MeterRecord, now time.Time, t totals) error {
	product := ""
	if !recs[0].LicenseMode() {
		product = recs[0].ProductCode
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO meter_batches (product_code, next_attempt_at, created_at) VALUES (?, ?, ?)`,
		product, unixNano(now), unixNano(now))
	if err != nil {
		return err
	}
	id, _ := res.LastInsertId()
	args := make([]any, 0, len(recs)+2)
	args = append(args, id, unixNano(now))
	for _, r := range recs {
		args = append(args, r.ID)
	}
	q := `UPDATE meter_records SET state = 'batched', batch_id = ?, updated_at = ? WHERE id IN (` + placeholders(len(recs)) + `)`
	if t == nil {
		_, err = tx.ExecContext(ctx, q, args...)
		return err
	}
	rows, err := tx.QueryContext(ctx, q+returningSums, args...)
	if err != nil {
		return err
	}
	sums, err := scanSums(rows)
	if err != nil {
		return err
	}
	t.move(mpsaas.UsageSealed, sums, mpsaas.UsageBatched, sums)
	return nil
}

const meterColumns = `id, subscriber_key, dimension, hour, quantity, allocations, customer_identifier, aws_account_id, license_arn,
	product_code, state, COALESCE(batch_id, 0), metering_record_id, reason`

func scanMeterRecords(rows *sql.Rows) ([]mpsaas.MeterRecord, error) {
	defer rows.Close()
	var out []mpsaas.MeterRecord
	for rows.Next() {
		var r mpsaas.MeterRecord
		var hour int64
		var alloc string
		if err := rows.Scan(&r.ID, &r.SubscriberKey, &r.Dimension, &hour, &r.Quantity, &alloc, &r.CustomerIdentifier, &r.CustomerAWSAccountID,
			&r.LicenseArn, &r.ProductCode, &r.State, &r.BatchID, &r.MeteringRecordID, &r.Reason); err != nil {
			return nil, err
		}
		r.Hour = time.Unix(hour, 0).UTC()
		if alloc != "" {
			if err := json.Unmarshal([]byte(alloc), &r.Allocations); err != nil {
				return nil, fmt.Errorf("meter record %d allocations: %w", r.ID, err)
			}
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// DueBatches returns unfinished batches due at now, with their unfinished records.
func (d *DB) DueBatches(ctx context.Context, now time.Time, limit int) ([]mpsaas.MeterBatch, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT id, product_code, attempts, next_attempt_at FROM meter_batches
		WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?`, unixNano(now), limit)
	if err != nil {
		return nil, fmt.Errorf("due batches: %w", err)
	}
	var out []mpsaas.MeterBatch
	for rows.Next() {
		var b mpsaas.MeterBatch
		var next int64
		if err := rows.Scan(&b.ID, &b.ProductCode, &b.Attempts, &next); err != nil {
			rows.Close()
			return nil, err
		}
		b.NextAttempt = fromUnixNano(next)
		out = append(out, b)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i := range out {
		recRows, err := d.db.QueryContext(ctx, `SELECT `+meterColumns+` FROM meter_records WHERE batch_id = ? AND state = 'batched' ORDER BY id`, out[i].ID)
		if err != nil {
			return nil, err
		}
		if out[i].Records, err = scanMeterRecords(recRows); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// FinishBatches stores outcomes and retry schedules of several batches in
// one transaction.
func (d *DB) FinishBatches(ctx context.Context, results []mpsaas.BatchOutcome) error {
	now := d.Now()
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		upd, err := tx.PrepareContext(ctx, `UPDATE meter_records SET state = ?, metering_record_id = ?, reason = ?, response = ?, updated_at = ?
			WHERE id = ? AND batch_id = ? AND state = 'batched'`+returningSums)
		if err != nil {
			return err
		}
		defer upd.Close()
		t := totals{}
		for _, b := range results {
			for _, o := range b.Outcomes {
				rows, err := upd.QueryContext(ctx, o.State, o.MeteringRecordID, o.Reason, o.Response, unixNano(now), o.MeterRecordID, b.BatchID)
				if err != nil {
					return err
				}
				sums, err := scanSums(rows)
				if err != nil {
					return err
				}
				t.move(mpsaas.UsageBatched, sums, o.State, sums)
			}
			if !b.Retry.IsZero() {
				if _, err := tx.ExecContext(ctx, `UPDATE meter_batches SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?`,
					unixNano(b.Retry), b.LastError, b.BatchID); err != nil {
					return err
				}
				continue
			}
			if _, err := tx.ExecContext(ctx, `UPDATE meter_batches SET state = 'done', done_at = ?, attempts = attempts + 1
				WHERE id = ? AND NOT EXISTS (SELECT 1 FROM meter_records WHERE batch_id = ? AND state = 'batched')`, unixNano(now), b.BatchID, b.BatchID); err != nil {
				return err
			}
		}
		return t.apply(ctx, tx)
	})
	if err != nil {
		return fmt.Errorf("finish batches: %w", err)
	}
	return nil
}

// Outstanding reports whether records wait to be sent or sealed.
func (d *DB) Outstanding(ctx context.Context, before time.Time) (bool, error) {
	var out bool
	err := d.db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM meter_batches WHERE state = 'pending')
		OR EXISTS (SELECT 1 FROM meter_records WHERE state = 'sealed')
		OR EXISTS (SELECT 1 FROM usage INDEXED BY usage_pending WHERE state = 'pending' AND meter_hour < ?)`, before.Unix()).Scan(&out)
	if err != nil {
		return false, fmt.Errorf("outstanding: %w", err)
	}
	return out, nil
}

// SplitBatch replaces a batch with single-record batches.
func (d *DB) SplitBatch(ctx context.Context, batchID int64, now time.Time) error {
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT `+meterColumns+` FROM meter_records WHERE batch_id = ? AND state = 'batched' ORDER BY id`, batchID)
		if err != nil {
			return err
		}
		recs, err := scanMeterRecords(rows)
		if err != nil {
			return err
		}
		for _, r := range recs {
			if err := insertBatch(ctx, tx, []mpsaas.MeterRecord{r}, now, nil); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE meter_batches SET state = 'split', done_at = ? WHERE id = ?`, unixNano(now), batchID)
		return err
	})
	if err != nil {
		return fmt.Errorf("split batch %d: %w", batchID, err)
	}
	return nil
}

const ledgerState = `CASE WHEN u.state = 'sealed' THEN COALESCE(m.state, 'sealed') ELSE u.state END`

// ledgerJoin finds a usage row's meter record by its key.
const ledgerJoin = `LEFT JOIN meter_records m ON u.state = 'sealed' AND m.subscriber_key = u.subscriber_key AND m.dimension = u.dimension AND m.hour = u.meter_hour`

// Ledger lists usage records and their fate.
func (d *DB) Ledger(ctx context.Context, f mpsaas.LedgerFilter) ([]mpsaas.LedgerEntry, error) {
	if f.Limit <= 0 || f.Limit > 10000 {
		f.Limit = 1000
	}
	q := `SELECT u.id, u.subscriber_key, u.dimension, u.quantity, u.usage_time, u.meter_hour, ` + ledgerState + `,
		COALESCE(m.batch_id, 0), COALESCE(m.metering_record_id, ''), CASE WHEN m.reason IS NOT NULL AND m.reason != '' THEN m.reason ELSE u.reason END, COALESCE(r.key, ''),
		COALESCE(m.quantity, 0)
		FROM usage u ` + ledgerJoin + ` LEFT JOIN usage_requests r ON r.id = u.request_id WHERE u.id > ?`
	args := []any{f.AfterID}
	if f.SubscriberKey != "" {
		q += ` AND u.subscriber_key = ?`
		args = append(args, f.SubscriberKey)
	}
	if f.State != "" {
		q += ` AND ` + ledgerState + ` = ?`
		args = append(args, f.State)
	}
	q += ` ORDER BY u.id LIMIT ?`
	args = append(args, f.Limit)
	rows, err := d.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	defer rows.Close()
	var out []mpsaas.LedgerEntry
	for rows.Next() {
		var e mpsaas.LedgerEntry
		var t, h int64
		if err := rows.Scan(&e.ID, &e.SubscriberKey, &e.Dimension, &e.Quantity, &t, &h, &e.State, &e.BatchID, &e.MeteringRecordID, &e.Reason, &e.RequestKey, &e.MeterQuantity); err != nil {
			return nil, err
		}
		e.Time, e.Hour = fromUnixNano(t), time.Unix(h, 0).UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}

// MeterSummary counts usage by ledger state. It reads running totals (see
// 0004_totals.sql), so it costs the same at any size.
func (d *DB) MeterSummary(ctx context.Context) (map[string]mpsaas.StateCount, error) {
	tx, err := d.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("meter summary: %w", err)
	}
	defer tx.Rollback()
	var ingested mpsaas.StateCount
	if err := tx.QueryRowContext(ctx, `SELECT records, quantity FROM usage_totals WHERE id = 1`).Scan(&ingested.Records, &ingested.Quantity); err != nil {
		return nil, fmt.Errorf("meter summary: %w", err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT state, records, usage_records, usage_quantity, quantity FROM meter_totals WHERE records != 0 OR usage_records != 0`)
	if err != nil {
		return nil, fmt.Errorf("meter summary: %w", err)
	}
	defer rows.Close()
	out := map[string]mpsaas.StateCount{}
	pending := ingested
	for rows.Next() {
		var s string
		var c mpsaas.StateCount
		if err := rows.Scan(&s, &c.MeterRecords, &c.Records, &c.Quantity, &c.MeterQuantity); err != nil {
			return nil, err
		}
		out[s] = c
		pending.Records -= c.Records
		pending.Quantity -= c.Quantity
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if pending.Records != 0 || pending.Quantity != 0 {
		out[mpsaas.UsagePending] = pending
	}
	return out, nil
}

// Replay moves the usage of flagged meter records (all, or the given usage
// ids) back to pending in hour, or a later free hour of the key.
func (d *DB) Replay(ctx context.Context, ids []int64, hour time.Time) (int, error) {
	moved := 0
	err := d.withTx(ctx, func(tx *sql.Tx) error {
		moved = 0
		rows, err := tx.QueryContext(ctx, `SELECT id, subscriber_key, dimension, hour FROM meter_records WHERE state = 'flagged' ORDER BY id`)
		if err != nil {
			return err
		}
		type rec struct {
			id       int64
			sub, dim string
			hour     int64
		}
		var flagged []rec
		for rows.Next() {
			var r rec
			if err := rows.Scan(&r.id, &r.sub, &r.dim, &r.hour); err != nil {
				rows.Close()
				return err
			}
			flagged = append(flagged, r)
		}
		rows.Close()
		hours := newHourPlacer(tx, ctx, hour)
		t := totals{}
		for _, r := range flagged {
			to, err := hours.place(r.sub, r.dim, hour)
			if err != nil {
				return err
			}
			where := ` WHERE state = 'sealed' AND subscriber_key = ? AND dimension = ? AND meter_hour = ?`
			args := []any{r.sub, r.dim, r.hour}
			if len(ids) > 0 {
				where += ` AND id IN (` + placeholders(len(ids)) + `)`
				for _, id := range ids {
					args = append(args, id)
				}
			}
			var n, q int64
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(quantity), 0) FROM usage`+where, args...).Scan(&n, &q); err != nil {
				return err
			}
			if n == 0 {
				continue
			}
			reason := fmt.Sprintf("replayed from flagged meter record %d", r.id)
			if _, err := tx.ExecContext(ctx, `UPDATE usage SET state = 'pending', meter_hour = ?, reason = ?`+where, append([]any{to.Unix(), reason}, args...)...); err != nil {
				return err
			}
			moved += int(n)
			// The record no longer includes the moved usage; one whose usage
			// all moved is done with.
			var state string
			var counted int
			var now meterSums
			if err := tx.QueryRowContext(ctx, `UPDATE meter_records SET usage_quantity = usage_quantity - ?, usage_records = usage_records - ?,
				state = CASE WHEN EXISTS (SELECT 1 FROM usage WHERE state = 'sealed' AND subscriber_key = ? AND dimension = ? AND meter_hour = ?) THEN state ELSE 'replayed' END
				WHERE id = ? RETURNING state, counted, usage_records, COALESCE(usage_quantity, 0), quantity`, q, n, r.sub, r.dim, r.hour, r.id).Scan(&state, &counted, &now[1], &now[2], &now[3]); err != nil {
				return err
			}
			if counted == 1 {
				now[0] = 1
				t.move(mpsaas.UsageFlagged, meterSums{1, now[1] + n, now[2] + q, now[3]}, state, now)
			}
		}
		return t.apply(ctx, tx)
	})
	if err != nil {
		return 0, fmt.Errorf("replay: %w", err)
	}
	return moved, nil
}

// ActiveSubscribers returns the subscribers whose status is in statuses.
func (d *DB) ActiveSubscribers(ctx context.Context, statuses []mpsaas.Status) ([]*mpsaas.Subscriber, error) {
	args := make([]any, len(statuses))
	for i, s := range statuses {
		args[i] = string(s)
	}
	return d.querySubscribers(ctx, "active subscribers", `WHERE status IN (`+placeholders(len(statuses))+`) ORDER BY key`, args...)
}

// VerifyMetering checks the metering invariant in scope. It reads the usage
// id range once in id order and finds meter records by their unique key, so
// a check after a pass costs about as much as the pass's own scan.
func (d *DB) VerifyMetering(ctx context.Context, scope mpsaas.VerifyScope, limit int) ([]mpsaas.MeterViolation, error) {
	from, to := scope.UsageFrom, scope.UsageTo
	if to <= 0 {
		to = math.MaxInt64
	}
	if limit <= 0 {
		limit = math.MaxInt32
	}
	var out []mpsaas.MeterViolation
	// Sealed usage whose key has no meter record: it would never be sent.
	rows, err := d.db.QueryContext(ctx, `SELECT u.subscriber_key, u.dimension, u.meter_hour, SUM(u.quantity), GROUP_CONCAT(u.id)
		FROM usage u WHERE u.id BETWEEN ? AND ? AND u.state = 'sealed' AND NOT EXISTS
		(SELECT 1 FROM meter_records m WHERE m.subscriber_key = u.subscriber_key AND m.dimension = u.dimension AND m.hour = u.meter_hour)
		GROUP BY 1, 2, 3 LIMIT ?`, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("verify metering: %w", err)
	}
	for rows.Next() {
		v := mpsaas.MeterViolation{Kind: mpsaas.ViolationSealedWithoutRecord}
		var h int64
		var ids string
		if err := rows.Scan(&v.SubscriberKey, &v.Dimension, &h, &v.Got, &ids); err != nil {
			rows.Close()
			return nil, err
		}
		v.Hour = time.Unix(h, 0).UTC()
		v.UsageIDs = firstIDs(ids)
		out = append(out, v)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// Meter records whose usage quantity (or count) is not the sum (count)
	// of what they include.
	rows, err = d.db.QueryContext(ctx, `WITH sums AS (
			SELECT m.id AS mid, SUM(u.quantity) AS q, COUNT(*) AS n FROM usage u
			JOIN meter_records m ON m.subscriber_key = u.subscriber_key AND m.dimension = u.dimension AND m.hour = u.meter_hour
			WHERE u.id BETWEEN ? AND ? AND m.id > ? AND (u.state = 'sealed' OR (u.state = 'pending' AND u.id <= m.max_usage_id))
			GROUP BY m.id)
		SELECT m.id, m.subscriber_key, m.dimension, m.hour, m.usage_quantity, COALESCE(s.q, 0), m.usage_records, COALESCE(s.n, 0), m.state, m.metering_record_id
		FROM meter_records m LEFT JOIN sums s ON s.mid = m.id
		WHERE m.id > ? AND ((m.usage_quantity IS NOT NULL AND m.usage_quantity != COALESCE(s.q, 0)) OR m.usage_records != COALESCE(s.n, 0)
			OR (m.state = 'billed' AND m.metering_record_id = ''))
		ORDER BY m.id LIMIT ?`, from, to, scope.RecordsAfter, scope.RecordsAfter, limit)
	if err != nil {
		return nil, fmt.Errorf("verify metering: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v mpsaas.MeterViolation
		var h int64
		var state, mrid string
		var n, gotN int64
		if err := rows.Scan(&v.MeterRecordID, &v.SubscriberKey, &v.Dimension, &h, &v.Want, &v.Got, &n, &gotN, &state, &mrid); err != nil {
			return nil, err
		}
		v.Hour = time.Unix(h, 0).UTC()
		switch {
		case v.Want != v.Got:
			v.Kind = mpsaas.ViolationSumMismatch
		case n != gotN:
			// The quantities agree but not the number of usage records.
			v.Kind, v.Want, v.Got = mpsaas.ViolationSumMismatch, n, gotN
			v.Total = "usage records"
		default:
			v.Kind = mpsaas.ViolationBilledWithoutID
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// A record's shares by usage hour add up to its usage and its quantity
	// (replayed usage leaves a flagged record, and its shares, behind).
	srows, err := d.db.QueryContext(ctx, `SELECT m.id, m.subscriber_key, m.dimension, m.hour, COALESCE(m.usage_quantity, 0), m.quantity,
			SUM(json_extract(j.value, '$.usage')), SUM(json_extract(j.value, '$.billed'))
		FROM meter_records m, json_each(m.shares) j
		WHERE m.id > ? AND m.shares != '' AND m.state NOT IN ('flagged', 'replayed')
		GROUP BY m.id
		HAVING SUM(json_extract(j.value, '$.usage')) != COALESCE(m.usage_quantity, 0) OR SUM(json_extract(j.value, '$.billed')) != m.quantity
		LIMIT ?`, scope.RecordsAfter, limit)
	if err != nil {
		return nil, fmt.Errorf("verify metering shares: %w", err)
	}
	for srows.Next() {
		var v mpsaas.MeterViolation
		var h, uq, q, su, sb int64
		if err := srows.Scan(&v.MeterRecordID, &v.SubscriberKey, &v.Dimension, &h, &uq, &q, &su, &sb); err != nil {
			srows.Close()
			return nil, err
		}
		v.Hour, v.Kind, v.Total = time.Unix(h, 0).UTC(), mpsaas.ViolationSumMismatch, "shares by usage hour"
		v.Want, v.Got = uq, su
		if uq == su {
			v.Total, v.Want, v.Got = "billed shares by usage hour", q, sb
		}
		out = append(out, v)
	}
	srows.Close()
	if err := srows.Err(); err != nil {
		return nil, err
	}
	if scope == (mpsaas.VerifyScope{}) {
		drift, err := d.verifyTotals(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, drift...)
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// verifyTotals recomputes the running totals the status reads from the
// rows they sum (a full scan: only a whole-store verify does it).
func (d *DB) verifyTotals(ctx context.Context) ([]mpsaas.MeterViolation, error) {
	tx, err := d.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("verify totals: %w", err)
	}
	defer tx.Rollback()
	var out []mpsaas.MeterViolation
	drift := func(total string, want, got int64) {
		if want != got {
			out = append(out, mpsaas.MeterViolation{Kind: mpsaas.ViolationTotalsDrift, Total: total, Want: want, Got: got})
		}
	}
	var tr, tq, ur, uq int64
	if err := tx.QueryRowContext(ctx, `SELECT records, quantity FROM usage_totals WHERE id = 1`).Scan(&tr, &tq); err != nil {
		return nil, fmt.Errorf("verify totals: %w", err)
	}
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(quantity), 0) FROM usage`).Scan(&ur, &uq); err != nil {
		return nil, fmt.Errorf("verify totals: %w", err)
	}
	drift("usage records", tr, ur)
	drift("usage quantity", tq, uq)
	rows, err := tx.QueryContext(ctx, `SELECT COALESCE(t.state, m.state), COALESCE(t.records, 0), COALESCE(t.usage_records, 0), COALESCE(t.usage_quantity, 0), COALESCE(t.quantity, 0),
			COALESCE(m.records, 0), COALESCE(m.usage_records, 0), COALESCE(m.usage_quantity, 0), COALESCE(m.quantity, 0)
		FROM meter_totals t FULL OUTER JOIN (SELECT state, COUNT(*) AS records, SUM(usage_records) AS usage_records,
			SUM(COALESCE(usage_quantity, 0)) AS usage_quantity, SUM(quantity) AS quantity FROM meter_records WHERE counted = 1 GROUP BY state) m
		ON m.state = t.state`)
	if err != nil {
		return nil, fmt.Errorf("verify totals: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var state string
		var a, b [4]int64
		if err := rows.Scan(&state, &a[0], &a[1], &a[2], &a[3], &b[0], &b[1], &b[2], &b[3]); err != nil {
			return nil, err
		}
		for i, name := range []string{"meter records", "usage records", "usage quantity", "meter quantity"} {
			drift(state+" "+name, a[i], b[i])
		}
	}
	return out, rows.Err()
}

// firstIDs parses up to 10 ids of a GROUP_CONCAT list.
func firstIDs(list string) []int64 {
	var out []int64
	for _, f := range strings.SplitN(list, ",", 11) {
		if id, err := strconv.ParseInt(f, 10, 64); err == nil && len(out) < 10 {
			out = append(out, id)
		}
	}
	return out
}

// ConsistentPendingScan reports that ScanPending sees every committed usage
// row: SQLite reads are transactionally consistent (see
// metering.ConsistentScanner).
func (d *DB) ConsistentPendingScan() bool { return true }

// MeterRecordsFor returns the records of a buyer and dimension for the
// hours from..to, with their shares (the unique key's index serves it).
func (d *DB) MeterRecordsFor(ctx context.Context, subscriberKey, dimension string, from, to time.Time) ([]mpsaas.MeterRecord, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT id, hour, quantity, COALESCE(usage_quantity, 0), state, shares FROM meter_records
		WHERE subscriber_key = ? AND dimension = ? AND hour BETWEEN ? AND ? ORDER BY hour`, subscriberKey, dimension, from.Unix(), to.Unix())
	if err != nil {
		return nil, fmt.Errorf("meter records of %s/%s: %w", subscriberKey, dimension, err)
	}
	defer rows.Close()
	var out []mpsaas.MeterRecord
	for rows.Next() {
		r := mpsaas.MeterRecord{SubscriberKey: subscriberKey, Dimension: dimension}
		var h int64
		var shares string
		if err := rows.Scan(&r.ID, &h, &r.Quantity, &r.UsageQuantity, &r.State, &shares); err != nil {
			return nil, err
		}
		r.Hour = time.Unix(h, 0).UTC()
		if shares != "" {
			if err := json.Unmarshal([]byte(shares), &r.Shares); err != nil {
				return nil, fmt.Errorf("meter record %d shares: %w", r.ID, err)
			}
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

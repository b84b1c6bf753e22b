package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"time"
)

// MeteringTarget is the kind of Marketplace endpoint ("aws" or "emulator")
// this database meters to, "" if it was never recorded.
func (d *DB) MeteringTarget(ctx context.Context) (string, error) {
	var v string
	err := d.db.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = 'metering_target'`).Scan(&v)
	if isNoRows(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("metering target: %w", err)
	}
	return v, nil
}

// SetMeteringTarget records the kind of endpoint the database meters to.
func (d *DB) SetMeteringTarget(ctx context.Context, kind string) error {
	_, err := d.db.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES ('metering_target', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, kind)
	if err != nil {
		return fmt.Errorf("set metering target: %w", err)
	}
	return nil
}

// HasBilled reports whether any meter record was billed (from the running
// totals: constant time).
func (d *DB) HasBilled(ctx context.Context) (bool, error) {
	var n int64
	err := d.db.QueryRowContext(ctx, `SELECT COALESCE((SELECT records FROM meter_totals WHERE state = 'billed'), 0)`).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("has billed: %w", err)
	}
	return n > 0, nil
}

// Gauges reads what a metrics scrape shows of the store: access changes
// waiting for delivery and the age of the oldest, the age of the oldest
// ended hour that still has pending usage (from the lowest pending id:
// usage arrives in time order, so that is, all but for late usage, the
// oldest), and the size of the database file and its WAL. Each is one
// indexed read.
func (d *DB) Gauges(ctx context.Context, now time.Time) (outboxPending int64, outboxOldest, unsealedOldest time.Duration, dbBytes int64, err error) {
	var oldest sql.NullInt64
	if err = d.db.QueryRowContext(ctx, `SELECT COUNT(*), MIN(created_at) FROM outbox WHERE delivered_at = 0`).Scan(&outboxPending, &oldest); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("gauges: %w", err)
	}
	if oldest.Valid {
		outboxOldest = max(0, now.Sub(fromUnixNano(oldest.Int64)))
	}
	var hour int64
	switch err = d.db.QueryRowContext(ctx, `SELECT meter_hour FROM usage WHERE state = 'pending' ORDER BY id LIMIT 1`).Scan(&hour); {
	case isNoRows(err):
		err = nil
	case err != nil:
		return 0, 0, 0, 0, fmt.Errorf("gauges: %w", err)
	default:
		unsealedOldest = max(0, now.Sub(time.Unix(hour, 0).Add(time.Hour)))
	}
	for _, p := range []string{d.path, d.path + "-wal"} {
		if fi, statErr := os.Stat(p); statErr == nil {
			dbBytes += fi.Size()
		}
	}
	return outboxPending, outboxOldest, unsealedOldest, dbBytes, nil
}

// Writable checks that the database takes a write now (a write
// transaction is begun and rolled back), within ctx.
func (d *DB) Writable(ctx context.Context) error {
	conn, err := d.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("database not writable: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	return nil
}

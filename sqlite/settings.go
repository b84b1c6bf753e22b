package sqlite

import (
	"context"
	"fmt"
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

package sqlite

import (
	"context"
	"database/sql"
)

// meterSums are the parts of a meter record that meter_totals adds up:
// 1 (the record), usage_records, usage_quantity and quantity.
type meterSums [4]int64

// totals collects, within one transaction, the changes to meter_totals of
// counted meter records changing state (see 0004_totals.sql).
type totals map[string]*meterSums

func (t totals) add(state string, sign int64, v meterSums) {
	s := t[state]
	if s == nil {
		s = &meterSums{}
		t[state] = s
	}
	for i := range v {
		s[i] += sign * v[i]
	}
}

// move records a counted record going from one state (with the sums it
// had) to another (with the sums it has now).
func (t totals) move(from string, was meterSums, to string, is meterSums) {
	t.add(from, -1, was)
	t.add(to, 1, is)
}

// apply writes the changes in tx.
func (t totals) apply(ctx context.Context, tx *sql.Tx) error {
	for state, v := range t {
		if *v == (meterSums{}) {
			continue
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO meter_totals (state, records, usage_records, usage_quantity, quantity) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (state) DO UPDATE SET records = records + excluded.records, usage_records = usage_records + excluded.usage_records,
				usage_quantity = usage_quantity + excluded.usage_quantity, quantity = quantity + excluded.quantity`,
			state, v[0], v[1], v[2], v[3]); err != nil {
			return err
		}
	}
	return nil
}

// returningSums is the RETURNING clause that reads a changed record's
// counted flag and sums.
const returningSums = ` RETURNING counted, usage_records, COALESCE(usage_quantity, 0), quantity`

// scanSums reads the rows of a RETURNING returningSums statement and adds
// the counted ones up.
func scanSums(rows *sql.Rows) (meterSums, error) {
	defer rows.Close()
	var sum meterSums
	for rows.Next() {
		var counted int
		var v meterSums
		if err := rows.Scan(&counted, &v[1], &v[2], &v[3]); err != nil {
			return sum, err
		}
		if counted == 1 {
			v[0] = 1
			for i := range v {
				sum[i] += v[i]
			}
		}
	}
	return sum, rows.Err()
}

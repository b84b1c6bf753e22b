//go:build !unix

package sqlite

import "context"

// LockMetering is a no-op where flock is unavailable: run one metering
// process per database there.
func (d *DB) LockMetering(ctx context.Context) (unlock func(), epoch int64, err error) {
	return func() {}, d.memEpoch.Add(1), nil
}

//go:build unix

package sqlite

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// LockMetering takes the metering lock of the database: a metering pass or
// replay in one process (serve, "mpsaas meter run", "mpsaas meter replay")
// waits for one in another process sharing the file, so a replay cannot
// move usage into what a pass is sealing. The lock is an flock on
// "<db>-meter.lock": the kernel releases it when its holder dies, so a
// killed process never leaves it held. It waits until ctx is done.
//
// The file holds a counter incremented by every holder; the epoch returned
// tells the caller whether anyone else held the lock since it last did.
func (d *DB) LockMetering(ctx context.Context) (unlock func(), epoch int64, err error) {
	if d.path == ":memory:" {
		return func() {}, d.memEpoch.Add(1), nil // private to this process
	}
	f, err := os.OpenFile(d.path+"-meter.lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("metering lock: %w", err)
	}
	wait := 10 * time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			unlock := func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}
			var b [8]byte
			if _, err := f.ReadAt(b[:], 0); err != nil && !errors.Is(err, io.EOF) {
				unlock()
				return nil, 0, fmt.Errorf("metering lock: %w", err)
			}
			epoch := int64(binary.BigEndian.Uint64(b[:])) + 1
			binary.BigEndian.PutUint64(b[:], uint64(epoch))
			if _, err := f.WriteAt(b[:], 0); err != nil {
				unlock()
				return nil, 0, fmt.Errorf("metering lock: %w", err)
			}
			return unlock, epoch, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, 0, fmt.Errorf("metering lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, 0, fmt.Errorf("metering lock: another process is metering %s: %w", d.path, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

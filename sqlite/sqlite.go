// Package sqlite implements the mpsaas stores on an embedded SQLite
// database (modernc.org/sqlite, pure Go).
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/mpsaas/mpsaas"
)

//go:embed migration/*.sql
var migrationFS embed.FS

// DB is an open database. Use Open to create one.
type DB struct {
	db   *sql.DB
	path string
	Now  func() time.Time
	// memEpoch stands in for the lock file's counter where there is none
	// (guarded by the caller's lock, see LockMetering).
	memEpoch atomic.Int64

	// The usage writer group-commits AddUsage calls (see AddUsage).
	usageWrites chan *usageWrite
	writerOnce  sync.Once
	writerDone  chan struct{}
	closing     chan struct{}
	closeOnce   sync.Once
}

// Open opens (creating if needed) the database at path and applies
// migrations. Use ":memory:" for a private in-memory database.
func Open(ctx context.Context, path string) (*DB, error) {
	dsn := path
	if path == ":memory:" {
		// One shared in-memory database per DB value.
		dsn = fmt.Sprintf("file:mem%d?mode=memory&cache=shared", time.Now().UnixNano())
	}
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	dsn += sep + "_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_txlock=immediate"
	if path != ":memory:" {
		// journal_size_limit: a WAL that grew while a long read held back
		// checkpoints is cut back to 64 MB after the next one.
		dsn += "&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=cache_size(-8192)&_pragma=temp_store(1)&_pragma=journal_size_limit(67108864)"
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	// Each connection has its own page cache (8 MB): a few connections keep
	// memory bounded while a long read (a metering scan) runs beside writes.
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(4)
	d := &DB{db: db, path: path, Now: func() time.Time { return time.Now().UTC() }, usageWrites: make(chan *usageWrite), closing: make(chan struct{})}
	if err := d.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate sqlite %s: %w", path, err)
	}
	return d, nil
}

// Checkpoint copies the write-ahead log into the database and truncates
// it, so the WAL file does not stay large after a burst of writes. serve
// calls it after every metering run. It reports whether readers or
// writers kept it from finishing (then the next call does the rest).
func (d *DB) Checkpoint(ctx context.Context) (busy bool, err error) {
	var b, logPages, done int
	if err := d.db.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&b, &logPages, &done); err != nil {
		return false, fmt.Errorf("checkpoint: %w", err)
	}
	return b != 0, nil
}

// Path is the file the database was opened at (":memory:" for none).
func (d *DB) Path() string { return d.path }

// Close closes the database. Usage being written is committed first.
func (d *DB) Close() error {
	d.closeOnce.Do(func() { close(d.closing) })
	d.writerOnce.Do(func() {}) // no writer starts after this
	if d.writerDone != nil {
		<-d.writerDone
	}
	return d.db.Close()
}

func (d *DB) migrate(ctx context.Context) error {
	if _, err := d.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY)`); err != nil {
		return err
	}
	names, err := fs.Glob(migrationFS, "migration/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		if err := d.applyMigration(ctx, name); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

func (d *DB) applyMigration(ctx context.Context, name string) error {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM migrations WHERE name = ?`, name).Scan(&n); err != nil {
		return err
	} else if n > 0 {
		return nil
	}
	b, err := migrationFS.ReadFile(name)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, string(b)); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO migrations (name) VALUES (?)`, name); err != nil {
		return err
	}
	return tx.Commit()
}

// withTx runs fn in a transaction and commits if fn returns nil.
func (d *DB) withTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func notFound(what string) error {
	return mpsaas.Errorf(mpsaas.ENOTFOUND, "%s not found", what)
}

var errNoRows = sql.ErrNoRows

func isNoRows(err error) bool { return errors.Is(err, errNoRows) }

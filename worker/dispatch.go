package worker

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/mpsaas/mpsaas"
)

// Sender delivers one outbox message on its channel. It must be safe to call
// again with the same message: receivers dedupe on the idempotency key.
type Sender interface {
	Send(ctx context.Context, m mpsaas.OutboxMessage) error
}

// Dispatcher delivers queued access changes at least once, retrying failed
// deliveries with exponential backoff and jitter (capped at MaxBackoff).
type Dispatcher struct {
	Outbox     mpsaas.Outbox
	Senders    map[string]Sender // by channel
	Clock      mpsaas.Clock
	Logger     *slog.Logger
	Poll       time.Duration // default 500ms
	MaxBackoff time.Duration // default 1h
	Wake       chan struct{}
}

func (d *Dispatcher) defaults() {
	if d.Poll == 0 {
		d.Poll = 500 * time.Millisecond
	}
	if d.MaxBackoff == 0 {
		d.MaxBackoff = time.Hour
	}
	if d.Clock == nil {
		d.Clock = mpsaas.SystemClock{}
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
}

// Run dispatches until ctx is done.
func (d *Dispatcher) Run(ctx context.Context) {
	d.defaults()
	poll(ctx, d.RunOnce, d.Wake, d.Poll, func(err error) { d.Logger.Error("outbox read failed", "err", err) })
}

// RunOnce attempts the due messages once and returns how many were delivered.
func (d *Dispatcher) RunOnce(ctx context.Context) (int, error) {
	d.defaults()
	msgs, err := d.Outbox.DueMessages(ctx, d.Clock.Now(), 50)
	if err != nil {
		return 0, err
	}
	delivered := 0
	for _, m := range msgs {
		sender, ok := d.Senders[m.Channel]
		var sendErr error
		if !ok {
			sendErr = mpsaas.Errorf(mpsaas.EINVALID, "no sender configured for channel %q", m.Channel)
		} else {
			sendErr = sender.Send(ctx, m)
		}
		if sendErr == nil {
			if err := d.Outbox.MarkDelivered(ctx, m.ID, d.Clock.Now()); err != nil {
				return delivered, err
			}
			delivered++
			continue
		}
		next := d.Clock.Now().Add(d.backoff(m.Attempts + 1))
		level := slog.LevelWarn
		if m.Attempts+1 >= 10 {
			level = slog.LevelError
		}
		d.Logger.Log(ctx, level, "access change delivery failed; will retry", "channel", m.Channel, "key", m.IdempotencyKey, "attempt", m.Attempts+1, "next", next, "err", sendErr)
		if err := d.Outbox.MarkFailed(ctx, m.ID, sendErr.Error(), next); err != nil {
			return delivered, err
		}
	}
	return delivered, nil
}

func (d *Dispatcher) backoff(attempt int) time.Duration {
	b := time.Second << min(attempt-1, 20)
	if b > d.MaxBackoff || b <= 0 {
		b = d.MaxBackoff
	}
	// Full jitter in [b/2, b).
	return b/2 + time.Duration(rand.Int64N(int64(b/2)+1))
}

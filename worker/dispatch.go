package worker

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
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
// Channels are independent: each is delivered by its own loop, with a
// deadline per attempt, so a webhook receiver that hangs delays neither
// email nor SNS.
type Dispatcher struct {
	Outbox     mpsaas.Outbox
	Senders    map[string]Sender // by channel
	Clock      mpsaas.Clock
	Logger     *slog.Logger
	Poll       time.Duration // default 500ms
	MaxBackoff time.Duration // default 1h
	// SendTimeout bounds one delivery attempt (default 15s).
	SendTimeout time.Duration
	Wake        chan struct{}
	// Observe, when set, hears of every delivery attempt (metrics).
	Observe func(channel string, err error)
}

// channelOutbox is an outbox that can list one channel's due messages, so
// a channel whose messages are stuck never hides the others'.
type channelOutbox interface {
	DueMessagesOn(ctx context.Context, channel string, now time.Time, limit int) ([]mpsaas.OutboxMessage, error)
}

// batch is how many messages one pass takes (per channel when it can).
const batch = 50

func (d *Dispatcher) defaults() {
	if d.Poll == 0 {
		d.Poll = 500 * time.Millisecond
	}
	if d.MaxBackoff == 0 {
		d.MaxBackoff = time.Hour
	}
	if d.SendTimeout == 0 {
		d.SendTimeout = 15 * time.Second
	}
	if d.Clock == nil {
		d.Clock = mpsaas.SystemClock{}
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
}

func (d *Dispatcher) channels() []string {
	chs := make([]string, 0, len(d.Senders))
	for ch := range d.Senders {
		chs = append(chs, ch)
	}
	sort.Strings(chs)
	return chs
}

// Run dispatches until ctx is done: one loop per channel when the outbox
// lists channels apart, else one loop for all.
func (d *Dispatcher) Run(ctx context.Context) {
	d.defaults()
	onErr := func(err error) { d.Logger.Error("outbox read failed", "err", err) }
	co, ok := d.Outbox.(channelOutbox)
	if !ok {
		poll(ctx, d.RunOnce, d.Wake, d.Poll, onErr)
		return
	}
	var wg sync.WaitGroup
	var wakes []chan struct{}
	for _, ch := range d.channels() {
		wake := make(chan struct{}, 1)
		wakes = append(wakes, wake)
		wg.Go(func() {
			poll(ctx, func(ctx context.Context) (int, error) { return d.runChannel(ctx, co, ch) }, wake, d.Poll, onErr)
		})
	}
	// Fan the wake-ups out to every channel's loop.
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-d.Wake:
			for _, w := range wakes {
				select {
				case w <- struct{}{}:
				default:
				}
			}
		}
	}
}

// RunOnce attempts the due messages once, every channel at the same time,
// and returns how many were delivered.
func (d *Dispatcher) RunOnce(ctx context.Context) (int, error) {
	d.defaults()
	groups := map[string][]mpsaas.OutboxMessage{}
	if co, ok := d.Outbox.(channelOutbox); ok {
		for _, ch := range d.channels() {
			msgs, err := co.DueMessagesOn(ctx, ch, d.Clock.Now(), batch)
			if err != nil {
				return 0, err
			}
			groups[ch] = msgs
		}
	} else {
		msgs, err := d.Outbox.DueMessages(ctx, d.Clock.Now(), batch)
		if err != nil {
			return 0, err
		}
		for _, m := range msgs {
			groups[m.Channel] = append(groups[m.Channel], m)
		}
	}
	var wg sync.WaitGroup
	var delivered atomic.Int64
	errs := make(chan error, len(groups))
	for _, msgs := range groups {
		wg.Go(func() {
			n, err := d.deliver(ctx, msgs)
			delivered.Add(int64(n))
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return int(delivered.Load()), <-errs
}

// runChannel delivers one channel's due messages.
func (d *Dispatcher) runChannel(ctx context.Context, co channelOutbox, ch string) (int, error) {
	msgs, err := co.DueMessagesOn(ctx, ch, d.Clock.Now(), batch)
	if err != nil {
		return 0, err
	}
	return d.deliver(ctx, msgs)
}

// deliver sends one channel's messages in order. After a failed attempt
// the rest wait for the next pass: a receiver that is down costs one
// attempt per pass, not one per message.
func (d *Dispatcher) deliver(ctx context.Context, msgs []mpsaas.OutboxMessage) (int, error) {
	delivered := 0
	for _, m := range msgs {
		sender, ok := d.Senders[m.Channel]
		var sendErr error
		if !ok {
			sendErr = mpsaas.Errorf(mpsaas.EINVALID, "no sender configured for channel %q", m.Channel)
		} else {
			actx, cancel := context.WithTimeout(ctx, d.SendTimeout)
			sendErr = sender.Send(actx, m)
			cancel()
		}
		if d.Observe != nil && (sendErr == nil || ctx.Err() == nil) {
			d.Observe(m.Channel, sendErr)
		}
		if sendErr == nil {
			if err := d.Outbox.MarkDelivered(ctx, m.ID, d.Clock.Now()); err != nil {
				return delivered, err
			}
			delivered++
			continue
		}
		if ctx.Err() != nil {
			return delivered, nil // shutting down: the attempt is not the receiver's fault
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
		if ok {
			break
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

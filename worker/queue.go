// Package worker runs the background loops of `mpsaas serve`: the local
// queue consumer (notifications → subscription workflow) and the outbox
// dispatcher (access changes → webhook and notifications).
package worker

import (
	"context"
	"log/slog"
	"time"

	"github.com/mpsaas/mpsaas"
)

// MessageHandler handles one notification body; an EINVALID error means it
// can never succeed.
type MessageHandler interface {
	HandleMessage(ctx context.Context, body []byte) error
}

// QueueWorker consumes a durable queue. A message is deleted only after it
// was handled; a failure makes it visible again after the visibility
// timeout, and a message that is malformed or failed MaxReceives times is
// dead-lettered, never dropped.
type QueueWorker struct {
	Queue       mpsaas.Queue
	Handler     MessageHandler
	Logger      *slog.Logger
	Visibility  time.Duration // default 30s
	MaxReceives int           // default 10
	Poll        time.Duration // idle poll interval, default 250ms
	// Wake, when non-nil, starts a poll at once (e.g. after Enqueue).
	Wake chan struct{}
}

func (w *QueueWorker) defaults() {
	if w.Visibility == 0 {
		w.Visibility = 30 * time.Second
	}
	if w.MaxReceives == 0 {
		w.MaxReceives = 10
	}
	if w.Poll == 0 {
		w.Poll = 250 * time.Millisecond
	}
	if w.Logger == nil {
		w.Logger = slog.New(slog.DiscardHandler)
	}
}

// Run consumes until ctx is done.
func (w *QueueWorker) Run(ctx context.Context) {
	w.defaults()
	poll(ctx, w.RunOnce, w.Wake, w.Poll, func(err error) { w.Logger.Error("queue receive failed", "err", err) })
}

// poll calls once until ctx is done: again at once while it finds work,
// otherwise after every or when woken.
func poll(ctx context.Context, once func(context.Context) (int, error), wake <-chan struct{}, every time.Duration, onErr func(error)) {
	for {
		n, err := once(ctx)
		if err != nil && ctx.Err() == nil {
			onErr(err)
		}
		if n > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-time.After(every):
		}
	}
}

// RunOnce handles one batch and returns how many messages it received.
func (w *QueueWorker) RunOnce(ctx context.Context) (int, error) {
	w.defaults()
	msgs, err := w.Queue.Receive(ctx, 10, w.Visibility)
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		err := w.Handler.HandleMessage(ctx, m.Body)
		switch {
		case err == nil:
			if err := w.Queue.Delete(ctx, m.ID); err != nil {
				w.Logger.Error("queue delete failed", "message", m.ID, "err", err)
			}
		case mpsaas.ErrorCode(err) == mpsaas.EINVALID:
			w.Logger.Warn("dead-lettering malformed message", "message", m.ID, "err", err)
			if err := w.Queue.DeadLetter(ctx, m.ID, err.Error()); err != nil {
				w.Logger.Error("dead-letter failed", "message", m.ID, "err", err)
			}
		case m.Attempts >= w.MaxReceives:
			w.Logger.Error("dead-lettering message after repeated failures", "message", m.ID, "attempts", m.Attempts, "err", err)
			if err := w.Queue.DeadLetter(ctx, m.ID, err.Error()); err != nil {
				w.Logger.Error("dead-letter failed", "message", m.ID, "err", err)
			}
		default:
			w.Logger.Warn("message failed; will retry", "message", m.ID, "attempt", m.Attempts, "err", err)
		}
	}
	return len(msgs), nil
}

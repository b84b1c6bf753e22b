package worker_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mpsaas/mpsaas"
	"github.com/mpsaas/mpsaas/sqlite"
	"github.com/mpsaas/mpsaas/worker"
)

func openDB(t *testing.T) *sqlite.DB {
	t.Helper()
	db, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "w.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

type handlerFunc func(context.Context, []byte) error

func (f handlerFunc) HandleMessage(ctx context.Context, b []byte) error { return f(ctx, b) }

func TestQueueWorker(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	now := time.Now()
	db.Now = func() time.Time { return now }
	for _, b := range []string{"ok", "malformed", "flaky", "broken"} {
		if err := db.Enqueue(ctx, []byte(b)); err != nil {
			t.Fatal(err)
		}
	}
	handled := map[string]int{}
	w := &worker.QueueWorker{Queue: db, MaxReceives: 3, Visibility: time.Minute, Handler: handlerFunc(func(_ context.Context, b []byte) error {
		handled[string(b)]++
		switch string(b) {
		case "malformed":
			return mpsaas.Errorf(mpsaas.EINVALID, "bad")
		case "flaky":
			if handled["flaky"] < 2 {
				return errors.New("transient")
			}
		case "broken":
			return errors.New("always fails")
		}
		return nil
	})}
	for i := 0; i < 5; i++ {
		if _, err := w.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		now = now.Add(2 * time.Minute) // past the visibility timeout
	}
	if handled["ok"] != 1 || handled["malformed"] != 1 || handled["flaky"] != 2 || handled["broken"] != 3 {
		t.Errorf("handled = %v, want ok 1, malformed 1, flaky 2, broken 3", handled)
	}
	dead, err := db.DeadNotifications(ctx, 10) // newest first
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range dead {
		names = append(names, d.Body)
	}
	if len(names) != 2 || names[0] != "broken" || names[1] != "malformed" {
		t.Errorf("dead letters = %v, want malformed and broken", names)
	}
	if msgs, _ := db.Receive(ctx, 10, time.Minute); len(msgs) != 0 {
		t.Errorf("queue still has %d messages", len(msgs))
	}
}

type senderFunc func(context.Context, mpsaas.OutboxMessage) error

func (f senderFunc) Send(ctx context.Context, m mpsaas.OutboxMessage) error { return f(ctx, m) }

func TestDispatcherRetriesUntilDelivered(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	db.Now = func() time.Time { return now }
	s := &mpsaas.Subscriber{Key: "K", Identity: mpsaas.Identity{CustomerIdentifier: "K"}, State: mpsaas.State{Status: mpsaas.StatusActive}, Access: mpsaas.AccessGranted, AccessVersion: 1}
	c := mpsaas.NewAccessChange(s, now)
	if err := db.SaveSubscriber(ctx, s, &c, []string{mpsaas.ChannelWebhook}); err != nil {
		t.Fatal(err)
	}
	attempts := 0
	d := &worker.Dispatcher{Outbox: db, Clock: mpsaas.ClockFunc(func() time.Time { return now }), MaxBackoff: time.Minute,
		Senders: map[string]worker.Sender{mpsaas.ChannelWebhook: senderFunc(func(_ context.Context, m mpsaas.OutboxMessage) error {
			attempts++
			if m.IdempotencyKey != "K:1" {
				t.Errorf("key = %s", m.IdempotencyKey)
			}
			if attempts < 3 {
				return errors.New("receiver down")
			}
			return nil
		})}}
	for i := 0; i < 10 && attempts < 3; i++ {
		n, err := d.RunOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if attempts < 3 && n != 0 {
			t.Fatalf("delivered %d while the receiver is down", n)
		}
		// Nothing is retried before its backoff has passed.
		if n, _ := d.RunOnce(ctx); n != 0 || attempts > i+1 {
			t.Fatalf("retried immediately (attempts %d after %d rounds)", attempts, i+1)
		}
		now = now.Add(2 * time.Minute)
	}
	if attempts != 3 {
		t.Fatalf("attempts = %d, want 3", attempts)
	}
	if due, _ := db.DueMessages(ctx, now.Add(time.Hour), 10); len(due) != 0 {
		t.Errorf("still due after delivery: %+v", due)
	}
}

// TestHangingReceiverDoesNotDelayOtherChannels (issue 9): with a webhook
// receiver that never answers, email and SNS changes are still delivered
// at once; each webhook attempt ends at SendTimeout, and a receiver that
// is down costs one attempt per pass, not one per message.
func TestHangingReceiverDoesNotDelayOtherChannels(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	for i := range 5 {
		s := &mpsaas.Subscriber{Key: fmt.Sprint("K", i), State: mpsaas.State{Status: mpsaas.StatusActive}}
		c := mpsaas.AccessChange{IdempotencyKey: fmt.Sprintf("K%d:1", i), Access: mpsaas.AccessGranted, Version: 1}
		if err := db.SaveSubscriber(ctx, s, &c, []string{mpsaas.ChannelWebhook, mpsaas.ChannelNotify, mpsaas.ChannelSNS}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	got := map[string]int{}
	fast := func(ch string) worker.Sender {
		return senderFunc(func(context.Context, mpsaas.OutboxMessage) error {
			mu.Lock()
			defer mu.Unlock()
			got[ch]++
			return nil
		})
	}
	var hung atomic.Int32
	d := &worker.Dispatcher{Outbox: db, SendTimeout: 300 * time.Millisecond, Poll: 20 * time.Millisecond, Senders: map[string]worker.Sender{
		mpsaas.ChannelWebhook: senderFunc(func(ctx context.Context, _ mpsaas.OutboxMessage) error {
			hung.Add(1)
			<-ctx.Done() // a receiver that never answers
			return ctx.Err()
		}),
		mpsaas.ChannelNotify: fast(mpsaas.ChannelNotify),
		mpsaas.ChannelSNS:    fast(mpsaas.ChannelSNS),
	}}
	// One pass: the other channels are done while the webhook hangs once.
	start := time.Now()
	n, err := d.RunOnce(ctx)
	if err != nil || n != 10 {
		t.Fatalf("RunOnce = %d, %v; want the 10 email and SNS changes", n, err)
	}
	if el := time.Since(start); el > 2*time.Second || hung.Load() != 1 {
		t.Errorf("one pass took %s with %d webhook attempts; want about the 300ms deadline and one attempt", el, hung.Load())
	}
	// The loops: new changes on the other channels keep flowing.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { d.Run(runCtx); close(done) }()
	s := &mpsaas.Subscriber{Key: "L", State: mpsaas.State{Status: mpsaas.StatusActive}}
	c := mpsaas.AccessChange{IdempotencyKey: "L:1", Access: mpsaas.AccessGranted, Version: 1}
	if err := db.SaveSubscriber(ctx, s, &c, []string{mpsaas.ChannelWebhook, mpsaas.ChannelNotify}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		mu.Lock()
		n := got[mpsaas.ChannelNotify]
		mu.Unlock()
		if n == 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new email change waited behind the hanging webhook (%d sent)", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

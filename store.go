package mpsaas

import (
	"context"
	"time"
)

// SubscriberStore persists subscribers and their events.
type SubscriberStore interface {
	// FindSubscriber returns the subscriber that shares a non-empty identity
	// field (CustomerIdentifier, LicenseID) with id, or ENOTFOUND.
	FindSubscriber(ctx context.Context, id Identity) (*Subscriber, error)
	// GetSubscriber returns the subscriber stored under key, or ENOTFOUND.
	GetSubscriber(ctx context.Context, key string) (*Subscriber, error)
	// SaveSubscriber inserts (Version 0) or updates the subscriber if its
	// stored version still equals s.Version (else ECONFLICT), and increments
	// s.Version. When change is non-nil it is queued for delivery on each of
	// channels in the same transaction, once per (channel, idempotency key).
	SaveSubscriber(ctx context.Context, s *Subscriber, change *AccessChange, channels []string) error

	// AddEvent stores an event unless one with its ID exists; it reports
	// whether the event was new.
	AddEvent(ctx context.Context, e Event) (bool, error)
	// EventsFor returns the events that belong to a subscriber's identity:
	// those sharing its CustomerIdentifier or LicenseID, and those of any
	// agreement linked to its LicenseID by a license event.
	EventsFor(ctx context.Context, id Identity) ([]Event, error)
	// SubscribersFor returns the keys of the stored subscribers an event belongs to.
	SubscribersFor(ctx context.Context, e Event) ([]string, error)
}

// Outbox holds access changes until each channel has delivered them.
type Outbox interface {
	// DueMessages returns up to limit undelivered messages whose next attempt is due.
	DueMessages(ctx context.Context, now time.Time, limit int) ([]OutboxMessage, error)
	// MarkDelivered records a successful delivery.
	MarkDelivered(ctx context.Context, id string, at time.Time) error
	// MarkFailed records a failed attempt and when to try again.
	MarkFailed(ctx context.Context, id string, errMsg string, next time.Time) error
}

// Queue is a durable FIFO of raw notification bodies (SNS envelopes or
// EventBridge events), the local stand-in for SQS.
type Queue interface {
	Enqueue(ctx context.Context, body []byte) error
	// Receive returns up to max visible messages and hides them for visibility.
	Receive(ctx context.Context, max int, visibility time.Duration) ([]QueueMessage, error)
	// Delete removes a handled message.
	Delete(ctx context.Context, id int64) error
	// DeadLetter moves a message that cannot be handled out of the queue.
	DeadLetter(ctx context.Context, id int64, reason string) error
}

// QueueMessage is one received queue message.
type QueueMessage struct {
	ID       int64
	Body     []byte
	Attempts int // receives so far, including this one
}

CREATE TABLE subscribers (
	key                     TEXT PRIMARY KEY,
	customer_identifier     TEXT NOT NULL DEFAULT '',
	aws_account_id          TEXT NOT NULL DEFAULT '',
	license_arn             TEXT NOT NULL DEFAULT '',
	license_id              TEXT NOT NULL DEFAULT '',
	product_code            TEXT NOT NULL DEFAULT '',
	company_name            TEXT NOT NULL DEFAULT '',
	contact_person          TEXT NOT NULL DEFAULT '',
	contact_phone           TEXT NOT NULL DEFAULT '',
	contact_email           TEXT NOT NULL DEFAULT '',
	registered_at           INTEGER NOT NULL DEFAULT 0,
	offer_type              TEXT NOT NULL DEFAULT '',
	status                  TEXT NOT NULL DEFAULT 'pending',
	free_trial              INTEGER NOT NULL DEFAULT 0,
	offer_id                TEXT NOT NULL DEFAULT '',
	last_event_at           INTEGER NOT NULL DEFAULT 0,
	entitlements            TEXT NOT NULL DEFAULT '[]',
	entitlements_raw        TEXT NOT NULL DEFAULT '',
	entitlements_checked_at INTEGER NOT NULL DEFAULT 0,
	access                  TEXT NOT NULL DEFAULT '',
	access_version          INTEGER NOT NULL DEFAULT 0,
	access_fingerprint      TEXT NOT NULL DEFAULT '',
	created_at              INTEGER NOT NULL,
	updated_at              INTEGER NOT NULL,
	version                 INTEGER NOT NULL
);
CREATE INDEX subscribers_ci ON subscribers(customer_identifier) WHERE customer_identifier != '';
CREATE INDEX subscribers_license ON subscribers(license_id) WHERE license_id != '';

CREATE TABLE events (
	id                  TEXT PRIMARY KEY,
	kind                TEXT NOT NULL,
	source              TEXT NOT NULL,
	event_time          INTEGER NOT NULL,
	received_at         INTEGER NOT NULL,
	customer_identifier TEXT NOT NULL DEFAULT '',
	aws_account_id      TEXT NOT NULL DEFAULT '',
	license_id          TEXT NOT NULL DEFAULT '',
	agreement_id        TEXT NOT NULL DEFAULT '',
	product_code        TEXT NOT NULL DEFAULT '',
	free_trial          INTEGER,
	offer_id            TEXT NOT NULL DEFAULT '',
	agreement_status    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_ci ON events(customer_identifier) WHERE customer_identifier != '';
CREATE INDEX events_license ON events(license_id) WHERE license_id != '';
CREATE INDEX events_agreement ON events(agreement_id) WHERE agreement_id != '';

CREATE TABLE outbox (
	id              INTEGER PRIMARY KEY AUTOINCREMENT,
	channel         TEXT NOT NULL,
	idempotency_key TEXT NOT NULL,
	subscriber_key  TEXT NOT NULL,
	payload         TEXT NOT NULL,
	created_at      INTEGER NOT NULL,
	attempts        INTEGER NOT NULL DEFAULT 0,
	next_attempt_at INTEGER NOT NULL,
	delivered_at    INTEGER NOT NULL DEFAULT 0,
	last_error      TEXT NOT NULL DEFAULT '',
	UNIQUE (channel, idempotency_key)
);
CREATE INDEX outbox_due ON outbox(next_attempt_at) WHERE delivered_at = 0;

CREATE TABLE queue (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	body        BLOB NOT NULL,
	enqueued_at INTEGER NOT NULL,
	attempts    INTEGER NOT NULL DEFAULT 0,
	visible_at  INTEGER NOT NULL,
	dead_at     INTEGER NOT NULL DEFAULT 0,
	last_error  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX queue_visible ON queue(visible_at) WHERE dead_at = 0;

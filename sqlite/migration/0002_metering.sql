CREATE TABLE usage_requests (
	key         TEXT PRIMARY KEY,
	hash        TEXT NOT NULL,
	accepted    INTEGER NOT NULL,
	first_id    INTEGER NOT NULL,
	received_at INTEGER NOT NULL
);

CREATE TABLE usage (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	request_key    TEXT NOT NULL,
	subscriber_key TEXT NOT NULL,
	dimension      TEXT NOT NULL,
	quantity       INTEGER NOT NULL,
	usage_time     INTEGER NOT NULL,
	meter_hour     INTEGER NOT NULL,
	tag_sig        TEXT NOT NULL DEFAULT '',
	state          TEXT NOT NULL DEFAULT 'pending',
	meter_id       INTEGER,
	reason         TEXT NOT NULL DEFAULT '',
	received_at    INTEGER NOT NULL
);
CREATE INDEX usage_pending ON usage(meter_hour, subscriber_key, dimension) WHERE state = 'pending';
CREATE INDEX usage_meter ON usage(meter_id);
CREATE INDEX usage_subscriber ON usage(subscriber_key, id);

CREATE TABLE meter_records (
	id                  INTEGER PRIMARY KEY AUTOINCREMENT,
	subscriber_key      TEXT NOT NULL,
	dimension           TEXT NOT NULL,
	hour                INTEGER NOT NULL,
	quantity            INTEGER NOT NULL,
	allocations         TEXT NOT NULL DEFAULT '',
	customer_identifier TEXT NOT NULL DEFAULT '',
	aws_account_id      TEXT NOT NULL DEFAULT '',
	license_arn         TEXT NOT NULL DEFAULT '',
	product_code        TEXT NOT NULL DEFAULT '',
	state               TEXT NOT NULL,
	batch_id            INTEGER,
	metering_record_id  TEXT NOT NULL DEFAULT '',
	reason              TEXT NOT NULL DEFAULT '',
	response            TEXT NOT NULL DEFAULT '',
	created_at          INTEGER NOT NULL,
	updated_at          INTEGER NOT NULL,
	UNIQUE (subscriber_key, dimension, hour)
);
CREATE INDEX meter_sealed ON meter_records(id) WHERE state = 'sealed';
CREATE INDEX meter_batch ON meter_records(batch_id);
CREATE INDEX meter_hour ON meter_records(hour);

CREATE TABLE meter_batches (
	id              INTEGER PRIMARY KEY AUTOINCREMENT,
	product_code    TEXT NOT NULL,
	request         TEXT NOT NULL,
	state           TEXT NOT NULL DEFAULT 'pending',
	attempts        INTEGER NOT NULL DEFAULT 0,
	next_attempt_at INTEGER NOT NULL,
	last_error      TEXT NOT NULL DEFAULT '',
	created_at      INTEGER NOT NULL,
	done_at         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX meter_batches_due ON meter_batches(next_attempt_at) WHERE state = 'pending';

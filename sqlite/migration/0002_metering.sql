CREATE TABLE usage_requests (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	key         TEXT NOT NULL UNIQUE,
	hash        TEXT NOT NULL,
	accepted    INTEGER NOT NULL,
	first_id    INTEGER NOT NULL,
	received_at INTEGER NOT NULL
);

CREATE TABLE usage (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	request_id     INTEGER NOT NULL,
	subscriber_key TEXT NOT NULL,
	dimension      TEXT NOT NULL,
	quantity       INTEGER NOT NULL,
	usage_time     INTEGER NOT NULL,
	meter_hour     INTEGER NOT NULL,
	tag_sig        TEXT NOT NULL DEFAULT '',
	-- pending, or sealed: then the meter record of (subscriber_key,
	-- dimension, meter_hour) holds it
	state          TEXT NOT NULL DEFAULT 'pending',
	reason         TEXT NOT NULL DEFAULT '',
	received_at    INTEGER NOT NULL
);
-- Usage is appended in id order and sealed in id ranges: the only index is
-- on the (few) pending rows, so ingestion stays fast as history grows.
CREATE INDEX usage_pending ON usage(id) WHERE state = 'pending';

CREATE TABLE meter_records (
	id                  INTEGER PRIMARY KEY AUTOINCREMENT,
	subscriber_key      TEXT NOT NULL,
	dimension           TEXT NOT NULL,
	hour                INTEGER NOT NULL,
	quantity            INTEGER NOT NULL,
	-- usage of this key with id <= max_usage_id is summed in quantity
	max_usage_id        INTEGER NOT NULL DEFAULT 0,
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

-- A batch is one BatchMeterUsage call. Its records (with their quantities,
-- timestamps and buyer identities) are fixed in meter_records before the
-- call is made, so a resend after a crash is identical.
CREATE TABLE meter_batches (
	id              INTEGER PRIMARY KEY AUTOINCREMENT,
	product_code    TEXT NOT NULL,
	state           TEXT NOT NULL DEFAULT 'pending',
	attempts        INTEGER NOT NULL DEFAULT 0,
	next_attempt_at INTEGER NOT NULL,
	last_error      TEXT NOT NULL DEFAULT '',
	created_at      INTEGER NOT NULL,
	done_at         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX meter_batches_due ON meter_batches(next_attempt_at) WHERE state = 'pending';

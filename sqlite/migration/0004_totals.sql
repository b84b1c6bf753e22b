-- Running totals, so GET /v1/meter/status and "mpsaas meter status" answer
-- in constant time however much usage is stored. A whole-store verify
-- ("mpsaas meter verify") recomputes them and reports any drift.
--
-- A meter record counts toward meter_totals once the usage it includes is
-- sealed (counted = 1): InsertMeterRecords stores records uncounted and
-- SealUsage counts them in the transaction that seals their usage, so no
-- usage is ever counted both as pending and in its record. Pending usage
-- is what was ingested less what counted records include.

-- How many usage rows a meter record includes (usage_quantity is their sum).
ALTER TABLE meter_records ADD COLUMN usage_records INTEGER NOT NULL DEFAULT 0;
ALTER TABLE meter_records ADD COLUMN counted INTEGER NOT NULL DEFAULT 1;
CREATE INDEX meter_uncounted ON meter_records(id) WHERE counted = 0;

-- Existing records include the sealed usage of their key; records stored
-- before usage_quantity existed get it from that usage too.
CREATE TEMP TABLE sealed_sums AS
	SELECT subscriber_key, dimension, meter_hour AS hour, COUNT(*) AS n, SUM(quantity) AS q
	FROM usage WHERE state = 'sealed' GROUP BY subscriber_key, dimension, meter_hour;
CREATE UNIQUE INDEX temp.sealed_sums_key ON sealed_sums(subscriber_key, dimension, hour);
UPDATE meter_records SET usage_records = s.n, usage_quantity = COALESCE(meter_records.usage_quantity, s.q)
	FROM sealed_sums s
	WHERE s.subscriber_key = meter_records.subscriber_key AND s.dimension = meter_records.dimension AND s.hour = meter_records.hour;
UPDATE meter_records SET usage_quantity = 0 WHERE usage_quantity IS NULL;
DROP TABLE sealed_sums;

-- Every usage row ever accepted (one row, id 1).
CREATE TABLE usage_totals (
	id       INTEGER PRIMARY KEY CHECK (id = 1),
	records  INTEGER NOT NULL,
	quantity INTEGER NOT NULL
);
INSERT INTO usage_totals (id, records, quantity) SELECT 1, COUNT(*), COALESCE(SUM(quantity), 0) FROM usage;

-- Counted meter records by state: how many, the usage they include, and
-- the quantity they carry to AWS (usage less contract entitlements).
CREATE TABLE meter_totals (
	state          TEXT PRIMARY KEY,
	records        INTEGER NOT NULL,
	usage_records  INTEGER NOT NULL,
	usage_quantity INTEGER NOT NULL,
	quantity       INTEGER NOT NULL
);
INSERT INTO meter_totals (state, records, usage_records, usage_quantity, quantity)
	SELECT state, COUNT(*), SUM(usage_records), SUM(usage_quantity), SUM(quantity) FROM meter_records WHERE counted = 1 GROUP BY state;

-- The store's methods keep meter_totals in step, in the transaction that
-- changes a counted record (sqlite/totals.go). Triggers would do it too,
-- but a trigger makes SQLite write a statement journal for every insert
-- and update of meter_records, which made metering 4x slower there.

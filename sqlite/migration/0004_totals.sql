-- Running totals, so GET /v1/meter/status and "mpsaas meter status" answer
-- in constant time however much usage is stored.
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

CREATE TRIGGER meter_totals_insert AFTER INSERT ON meter_records WHEN new.counted = 1
BEGIN
	INSERT INTO meter_totals (state, records, usage_records, usage_quantity, quantity)
		VALUES (new.state, 1, new.usage_records, COALESCE(new.usage_quantity, 0), new.quantity)
		ON CONFLICT (state) DO UPDATE SET records = records + 1, usage_records = usage_records + excluded.usage_records,
			usage_quantity = usage_quantity + excluded.usage_quantity, quantity = quantity + excluded.quantity;
END;

CREATE TRIGGER meter_totals_update AFTER UPDATE OF state, counted, usage_records, usage_quantity, quantity ON meter_records
BEGIN
	UPDATE meter_totals SET records = records - 1, usage_records = usage_records - old.usage_records,
		usage_quantity = usage_quantity - COALESCE(old.usage_quantity, 0), quantity = quantity - old.quantity
		WHERE old.counted = 1 AND state = old.state;
	INSERT INTO meter_totals (state, records, usage_records, usage_quantity, quantity)
		SELECT new.state, 1, new.usage_records, COALESCE(new.usage_quantity, 0), new.quantity WHERE new.counted = 1
		ON CONFLICT (state) DO UPDATE SET records = records + 1, usage_records = usage_records + excluded.usage_records,
			usage_quantity = usage_quantity + excluded.usage_quantity, quantity = quantity + excluded.quantity;
END;

CREATE TRIGGER meter_totals_delete AFTER DELETE ON meter_records WHEN old.counted = 1
BEGIN
	UPDATE meter_totals SET records = records - 1, usage_records = usage_records - old.usage_records,
		usage_quantity = usage_quantity - COALESCE(old.usage_quantity, 0), quantity = quantity - old.quantity
		WHERE state = old.state;
END;

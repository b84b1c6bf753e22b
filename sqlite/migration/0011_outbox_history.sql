-- Each delivery attempt of an access change (time and error; empty: delivered),
-- the last 20, for the seller console.
ALTER TABLE outbox ADD COLUMN history TEXT NOT NULL DEFAULT '[]';

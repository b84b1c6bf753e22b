-- The message each event came in, as received, for the seller console.
ALTER TABLE events ADD COLUMN raw TEXT NOT NULL DEFAULT '';

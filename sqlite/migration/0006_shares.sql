-- How a meter record splits by the hour its usage happened in (JSON map of
-- UNIX hour to {usage, billed}), for records that include late usage of
-- earlier hours; '' means all of it is usage of its own hour.
ALTER TABLE meter_records ADD COLUMN shares TEXT NOT NULL DEFAULT '';

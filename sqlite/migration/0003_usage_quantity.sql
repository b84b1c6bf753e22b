-- The sum of the usage a meter record includes, before a contract's
-- entitlement is deducted: what "mpsaas meter verify" checks the usage
-- against. NULL for records stored before this column existed.
ALTER TABLE meter_records ADD COLUMN usage_quantity INTEGER;

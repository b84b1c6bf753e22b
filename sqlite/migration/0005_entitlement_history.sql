-- Every entitlement a buyer had and when it was in force (JSON list of
-- mpsaas.EntitlementPeriod), so usage is measured against the entitlement
-- of its hour. Existing buyers start with their current entitlements,
-- in force since their subscription began.
ALTER TABLE subscribers ADD COLUMN entitlement_history TEXT NOT NULL DEFAULT '';

-- When the final metering window of a cancellation began (UNIX ns; 0:
-- none), so the scheduled sweep finds whose window has passed.
ALTER TABLE subscribers ADD COLUMN final_window_from INTEGER NOT NULL DEFAULT 0;

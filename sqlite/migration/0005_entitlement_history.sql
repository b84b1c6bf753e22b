-- Every entitlement a buyer had and when it was in force (JSON list of
-- mpsaas.EntitlementPeriod), so usage is measured against the entitlement
-- of its hour. Existing buyers start with their current entitlements,
-- in force since their subscription began.
ALTER TABLE subscribers ADD COLUMN entitlement_history TEXT NOT NULL DEFAULT '';

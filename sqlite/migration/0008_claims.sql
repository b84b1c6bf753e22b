-- Sign-up handoff (issue 12): the seller's account id a buyer is linked
-- to, and the claim code last redeemed for the buyer (a code redeems once).
ALTER TABLE subscribers ADD COLUMN linked_account_id TEXT NOT NULL DEFAULT '';
ALTER TABLE subscribers ADD COLUMN claim_id TEXT NOT NULL DEFAULT '';
-- Usage and entitlement checks may name a buyer by the seller's account id.
CREATE INDEX subscribers_linked_account ON subscribers(linked_account_id) WHERE linked_account_id != '';

-- Sign-up handoff (issue 12): the seller's account id a buyer is linked
-- to, and the claim code last redeemed for the buyer (a code redeems once).
ALTER TABLE subscribers ADD COLUMN linked_account_id TEXT NOT NULL DEFAULT '';
ALTER TABLE subscribers ADD COLUMN claim_id TEXT NOT NULL DEFAULT '';

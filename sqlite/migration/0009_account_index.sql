-- A buyer's new agreement finds the seller's account its previous one was
-- linked to (by AWS account and product).
CREATE INDEX subscribers_account_product ON subscribers(aws_account_id, product_code) WHERE aws_account_id != '';

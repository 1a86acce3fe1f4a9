-- What a merchant created under an `Idempotency-Key` was made from (a SHA-256 of its fields as sent),
-- so that the key sent again with other content is refused rather than answered with this merchant.
-- Nullable, no default: adding it rewrites nothing, and the release before this one (which does not
-- write it) keeps working beside it. Merchants made without a key have none.
ALTER TABLE merchants ADD COLUMN idempotency_digest bytea;

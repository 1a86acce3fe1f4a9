-- Reverts the digest with the code that wrote it; keyed merchants stay, as merchants without a key.
ALTER TABLE merchants DROP COLUMN IF EXISTS idempotency_digest;

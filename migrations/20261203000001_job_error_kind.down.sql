-- Reverts the failure kind with the code that wrote it.
ALTER TABLE jobs DROP COLUMN IF EXISTS last_error_kind;

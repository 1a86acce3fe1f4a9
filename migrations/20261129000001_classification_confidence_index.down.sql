-- no-transaction
DROP INDEX CONCURRENTLY IF EXISTS idx_classifications_active_confidence;

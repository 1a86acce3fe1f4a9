-- no-transaction
-- The plan's optimized classification query reads active classifications by confidence, highest
-- first. Built concurrently (merchants keep being classified during the build), so this file holds
-- this one statement and runs outside a transaction. An interrupted build leaves an INVALID index that
-- IF NOT EXISTS would keep; `kybctl db indexes apply` rebuilds it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_classifications_active_confidence
    ON classifications (confidence_score DESC) WHERE status = 'active';

-- The active classification's method, matched terms and alternatives, kept on the merchant row so a
-- merchant read is one primary-key lookup instead of a join (issue 9: the read path was 0.2 x
-- pgbench -S, and the join was a third of its database time).
--
-- Expand-only: the columns are nullable and the classifications table stays the record of every
-- classification. A binary from before this migration keeps inserting classifications without filling
-- these columns, so a trigger copies each new active classification onto its merchant; a binary that
-- already wrote the same values in its INSERT costs the trigger one index lookup and no write.
ALTER TABLE merchants
    ADD COLUMN classification_method text,
    ADD COLUMN matched_terms text[],
    ADD COLUMN alternatives jsonb;

CREATE FUNCTION merchants_copy_active_classification() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE merchants
       SET industry_id = NEW.industry_id,
           mcc = NEW.mcc,
           confidence_score = NEW.confidence_score,
           classification_method = NEW.classification_method,
           matched_terms = NEW.matched_terms,
           alternatives = NEW.alternatives
     WHERE id = NEW.business_id
       AND (industry_id, mcc, confidence_score, classification_method, matched_terms, alternatives)
           IS DISTINCT FROM
           (NEW.industry_id, NEW.mcc, NEW.confidence_score, NEW.classification_method,
            NEW.matched_terms, NEW.alternatives);
    RETURN NULL;
END
$$;

CREATE TRIGGER classifications_copy_active
    AFTER INSERT ON classifications
    FOR EACH ROW WHEN (NEW.status = 'active')
    EXECUTE FUNCTION merchants_copy_active_classification();

-- Existing rows, in this migration's transaction (rows written meanwhile by older binaries are covered
-- by the trigger once it commits). On a table of many millions of rows this one statement holds each
-- merchant's row lock until the commit; batch it by id range there.
UPDATE merchants m
   SET classification_method = c.classification_method,
       matched_terms = c.matched_terms,
       alternatives = c.alternatives
  FROM classifications c
 WHERE c.business_id = m.id AND c.status = 'active';

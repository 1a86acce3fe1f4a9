-- A version for each merchant's list of risk assessments, so a cached list carries the version it was
-- read at and an older list can never replace a newer one in any cache (issue 13).
--
-- Expand-only: a column with a constant default (no table rewrite) and a trigger, so a binary from
-- before this migration, which inserts assessments without knowing the column, still bumps it.
ALTER TABLE merchants ADD COLUMN risk_version integer NOT NULL DEFAULT 0;

CREATE FUNCTION merchants_bump_risk_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE merchants SET risk_version = risk_version + 1 WHERE id = NEW.business_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER business_risk_assessments_bump_version
    AFTER INSERT ON business_risk_assessments
    FOR EACH ROW
    EXECUTE FUNCTION merchants_bump_risk_version();

DROP TRIGGER IF EXISTS classifications_copy_active ON classifications;
DROP FUNCTION IF EXISTS merchants_copy_active_classification();
ALTER TABLE merchants
    DROP COLUMN IF EXISTS classification_method,
    DROP COLUMN IF EXISTS matched_terms,
    DROP COLUMN IF EXISTS alternatives;

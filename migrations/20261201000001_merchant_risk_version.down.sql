DROP TRIGGER IF EXISTS business_risk_assessments_bump_version ON business_risk_assessments;
DROP FUNCTION IF EXISTS merchants_bump_risk_version();
ALTER TABLE merchants DROP COLUMN IF EXISTS risk_version;

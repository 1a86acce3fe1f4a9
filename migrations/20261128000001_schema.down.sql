DROP TABLE IF EXISTS cache_entries;
DROP TABLE IF EXISTS business_risk_assessments;
DROP TABLE IF EXISTS classifications;
DROP TABLE IF EXISTS merchants;
DROP TABLE IF EXISTS industry_codes;

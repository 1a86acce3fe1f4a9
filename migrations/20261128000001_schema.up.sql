-- Core KYB schema: merchants, their classifications and risk assessments, industry reference data,
-- and the L3 cache table. Indexes here are created with the tables (empty, so no lock concern);
-- `kybctl db indexes` manages concurrent builds on live data.

CREATE TABLE industry_codes (
    system text NOT NULL CHECK (system IN ('naics2022', 'mcc')),
    code   text COLLATE "C" NOT NULL,
    title  text NOT NULL,
    PRIMARY KEY (system, code)
);

CREATE TABLE merchants (
    id               uuid PRIMARY KEY,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description      text,
    website          text,
    country          char(2),
    declared_mcc     char(4),
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('pending', 'active', 'suspended', 'closed')),
    -- NAICS code; "C" collation so an industry prefix filter is an index range scan.
    industry_id      text COLLATE "C",
    mcc              char(4),
    confidence_score double precision CHECK (confidence_score BETWEEN 0 AND 1),
    version          integer NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Keyset listing filtered by industry or status.
CREATE INDEX idx_merchants_industry_id ON merchants (industry_id, id);
CREATE INDEX idx_merchants_status_id ON merchants (status, id);
-- The plan's "recent merchants" index. Its `WHERE created_at > NOW() - INTERVAL '30 days'` predicate is
-- not allowed (index predicates must be immutable), so it is a plain composite index.
CREATE INDEX idx_merchants_created_industry ON merchants (created_at, industry_id);

CREATE TABLE classifications (
    id                    uuid PRIMARY KEY,
    business_id           uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    industry_id           text COLLATE "C" NOT NULL,
    mcc                   char(4),
    confidence_score      double precision NOT NULL CHECK (confidence_score BETWEEN 0 AND 1),
    classification_method text NOT NULL,
    matched_terms         text[] NOT NULL DEFAULT '{}',
    alternatives          jsonb NOT NULL DEFAULT '[]',
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'superseded')),
    created_at            timestamptz NOT NULL DEFAULT now()
);

-- The plan's classification index: active classifications by business and industry.
CREATE INDEX idx_classifications_business_industry
    ON classifications (business_id, industry_id) WHERE status = 'active';
-- One active classification per business.
CREATE UNIQUE INDEX idx_classifications_one_active
    ON classifications (business_id) WHERE status = 'active';

CREATE TABLE business_risk_assessments (
    id              uuid PRIMARY KEY,
    business_id     uuid NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    risk_level      text NOT NULL CHECK (risk_level IN ('low', 'medium', 'high', 'critical')),
    risk_score      double precision NOT NULL,
    factors         jsonb NOT NULL,
    assessment_date timestamptz NOT NULL DEFAULT now()
);

-- Listing a merchant's assessments, newest first.
CREATE INDEX idx_risk_assessments_business ON business_risk_assessments (business_id, assessment_date DESC, id DESC);
-- The plan's index for the high-risk review queue.
CREATE INDEX idx_risk_assessments_business_date
    ON business_risk_assessments (business_id, assessment_date DESC)
    WHERE risk_level IN ('high', 'critical');

-- L3 cache: computed results shared by every instance, kept when Redis is down.
CREATE TABLE cache_entries (
    key        text COLLATE "C" PRIMARY KEY,
    value      text NOT NULL, -- the exact JSON body served, so every level returns identical bytes
    expires_at timestamptz NOT NULL
);
CREATE INDEX idx_cache_entries_expires ON cache_entries (expires_at);

-- The job queue (issue 14): jobs, one row per attempt, and dead letters. In the merchants' database
-- (each shard's), so a job is enqueued in the transaction of the write that needs it. Expand-only: new
-- tables the previous release never touches.
CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    queue            text NOT NULL DEFAULT 'kyb-processing',
    kind             text NOT NULL CHECK (kind IN ('classify', 'risk_assessment', 'industry_report', 'reclassify_all', 'noop')),
    payload          jsonb NOT NULL DEFAULT '{}',
    -- Higher runs first, but never forever: see ready_at.
    priority         smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN -10 AND 10),
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    -- Not before this (a retry's delay, a scheduled run).
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- Claim order: run_at moved earlier by the priority's head start (priority x the aging step), so a
    -- low-priority job waits behind later high-priority ones for a bounded time only (aging).
    ready_at         timestamptz NOT NULL,
    enqueued_at      timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 4 CHECK (max_attempts BETWEEN 1 AND 100),
    -- Fencing token of the current attempt: only the holder of the newest token may finish the job.
    lease_token      bigint,
    leased_by        text,
    lease_expires_at timestamptz,
    first_started_at timestamptz,
    finished_at      timestamptz,
    last_error       text,
    -- What the job produced (a report, a classification), for GET /v1/jobs/{id}.
    result           jsonb,
    -- At most one job per key: a scheduler tick, an idempotent enqueue.
    unique_key       text UNIQUE
);

-- Claiming: the jobs of a queue that may run (new, or failed and waiting to retry) in claim order.
CREATE INDEX idx_jobs_ready ON jobs (queue, ready_at) WHERE state IN ('queued', 'failed');
-- Rescue: expired leases.
CREATE INDEX idx_jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';

-- Fencing tokens: strictly increasing across every claim and every worker.
CREATE SEQUENCE job_lease_tokens;

-- A queue table is rewritten all day (every job is inserted, updated 2-3 times, and finished rows age
-- out): vacuum it after 1 % of its rows changed rather than PostgreSQL's 20 %, without the cost delay,
-- and leave room on each page for HOT updates (the state changes touch no indexed column but state).
ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    fillfactor = 80
);

CREATE TABLE job_attempts (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    lease_token bigint NOT NULL,
    worker      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- NULL while running; succeeded, failed (an error or a panic), expired (the lease ran out: the
    -- worker died or stalled) or cancelled.
    outcome     text CHECK (outcome IN ('succeeded', 'failed', 'expired', 'cancelled')),
    error       text,
    PRIMARY KEY (job_id, attempt)
);

ALTER TABLE job_attempts SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);

-- Jobs that used up their attempts, with every attempt's error. A replay enqueues a copy once:
-- replay_job_id is set in the same transaction, so a second replay finds it and does nothing.
CREATE TABLE dead_letters (
    job_id        uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    queue         text NOT NULL,
    kind          text NOT NULL,
    payload       jsonb NOT NULL,
    errors        jsonb NOT NULL,
    died_at       timestamptz NOT NULL DEFAULT now(),
    replayed_at   timestamptz,
    replay_job_id uuid
);

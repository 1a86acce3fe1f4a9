-- Reverts the job queue with the code that used it.
DROP TABLE IF EXISTS dead_letters;
DROP TABLE IF EXISTS job_attempts;
DROP TABLE IF EXISTS jobs;
DROP SEQUENCE IF EXISTS job_lease_tokens;

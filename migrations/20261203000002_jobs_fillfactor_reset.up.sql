-- `jobs` was given fillfactor = 80 to leave room for HOT updates, but every update of a job changes
-- `state`, which the partial indexes' predicates read, so no update can be HOT (0 % measured under
-- churn; BENCHMARKS.md, "The jobs table under churn") and the room was never used. Pages written from
-- now on are filled; existing pages are as they were until vacuum reuses them. Changing a storage
-- parameter takes SHARE UPDATE EXCLUSIVE, which claims, inserts and updates do not wait for.
ALTER TABLE jobs RESET (fillfactor);

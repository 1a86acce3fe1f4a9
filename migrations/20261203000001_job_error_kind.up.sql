-- What kind of failure a job's last error was (`jobs::failure`), so that `GET /v1/jobs/{id}` can tell
-- its caller what happened without the operator's detail (hosts, statements, panic messages). Nullable
-- and unchecked: the release before this one does not write it, and a row without it is told as
-- `internal`.
ALTER TABLE jobs ADD COLUMN last_error_kind text;

-- Background jobs (src/jobs): one row per job, written by whichever replica
-- ran its last step under the job's advisory lock. The row is for people
-- and metrics; each job keeps its real cursor in its own table.
CREATE TABLE job_status (
    job               text PRIMARY KEY CHECK (char_length(job) <= 128),
    -- Set by an operator (e.g. `tollgate exports pause`): every replica
    -- skips the job until it is cleared.
    paused            boolean NOT NULL DEFAULT false,
    -- host:pid of the replica that ran the last step.
    holder            text,
    last_run_at       timestamptz,
    last_success_at   timestamptz,
    last_error        text,
    last_error_at     timestamptz,
    failures_in_a_row integer NOT NULL DEFAULT 0,
    runs              bigint NOT NULL DEFAULT 0,
    cursor            text,
    lag_rows          bigint,
    lag_seconds       double precision
);

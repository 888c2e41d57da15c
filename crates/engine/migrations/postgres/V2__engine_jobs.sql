-- Engine jobs, so that every replica answers any job's status and result. The replica that
-- accepted a job runs it and writes its state here: `progress` (JSON) while it works, then
-- `result` (the json_result text as WBIA renders it).
CREATE TABLE lightglue_jobs (
    jobid TEXT PRIMARY KEY,
    replica TEXT NOT NULL,
    status TEXT NOT NULL,
    progress TEXT,
    result TEXT,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX lightglue_jobs_created ON lightglue_jobs (created);

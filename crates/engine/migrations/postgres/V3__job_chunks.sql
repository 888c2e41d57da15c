-- A large engine job's matching, split into chunks that any replica's model worker can take
-- (FOR UPDATE SKIP LOCKED). A taken chunk carries a lease: when its replica dies, the lease
-- expires and another replica takes the chunk again, so no work is lost.
CREATE TABLE lightglue_chunks (
    jobid TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    owner TEXT,
    lease_until TIMESTAMPTZ,
    attempts INTEGER NOT NULL DEFAULT 0,
    scores TEXT,
    error TEXT,
    PRIMARY KEY (jobid, chunk)
);

CREATE INDEX lightglue_chunks_open ON lightglue_chunks (state, lease_until);

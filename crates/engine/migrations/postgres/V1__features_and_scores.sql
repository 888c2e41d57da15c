-- Features and pair scores, as the SQLite store keeps them (crates/engine/src/store.rs): the
-- plugin's LightGlueFeatures and LightGlue tables, every row with its SHA-256 checksum.
CREATE TABLE lightglue_features (
    annot_uuid TEXT NOT NULL,
    settings TEXT NOT NULL,
    chip_sha256 BYTEA NOT NULL,
    keypoints BYTEA NOT NULL,
    keypoint_scores BYTEA NOT NULL,
    descriptors BYTEA NOT NULL,
    width DOUBLE PRECISION NOT NULL,
    height DOUBLE PRECISION NOT NULL,
    checksum BYTEA NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (annot_uuid, settings, chip_sha256)
);

CREATE TABLE lightglue_scores (
    query_features TEXT NOT NULL,
    database_features TEXT NOT NULL,
    matcher TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    checksum BYTEA NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (query_features, database_features, matcher)
);

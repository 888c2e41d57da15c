//! A damaged feature store never stops the service and never serves damaged data: a corrupt
//! file is moved aside and replaced, a damaged row is a miss (deleted and counted), and a
//! file of the old schema (no checksums) is recreated.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use uuid::Uuid;
use wbia_lightglue_engine::store::FeatureStore;
use wbia_lightglue_engine::FeatureKey;
use wbia_lightglue_model::Features;

const STORE_FILE: &str = "features.sqlite3";

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wbia-lg-{name}-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn store_file(&self) -> PathBuf {
        self.0.join(STORE_FILE)
    }

    /// Files named like a quarantined store.
    fn quarantined(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with("features.sqlite3.corrupt-")
                    && !name.ends_with("-shm")
                    && !name.ends_with("-wal")
            })
            .collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn key(i: u128) -> FeatureKey {
    FeatureKey::for_chip_bytes(Uuid::from_u128(i), "settings", [i as u8; 32], "model")
}

/// Finite, distinct per `seed`, with `n` keypoints (descriptors of 128 values each).
fn features(seed: u32, n: usize) -> Features {
    let v = |i: usize| ((seed as usize * 7919 + i) % 1000) as f32 / 1000.0;
    Features {
        keypoints: (0..n).map(|i| [v(i) * 100.0, v(i + 1) * 100.0]).collect(),
        scores: (0..n).map(v).collect(),
        descriptors: (0..n * Features::DESCRIPTOR_DIM).map(v).collect(),
        image_size: [640.0, 480.0 + seed as f32],
    }
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_store_with_a_garbage_header_is_quarantined_and_replaced() {
    let dir = TempDir::new("store-header");
    {
        let store = FeatureStore::open(&dir.0).unwrap();
        store.put(&key(1), &features(1, 4)).unwrap();
        store
            .put_scores("m", &[("q".into(), "d".into(), 3.5)])
            .unwrap();
        assert!(store.quarantined().is_none());
    }
    overwrite(&dir.store_file(), 0, &[0xA5; 100]);

    let store = FeatureStore::open(&dir.0).expect("a corrupt cache must not stop the service");
    let moved = store
        .quarantined()
        .expect("the corrupt file is reported")
        .to_path_buf();
    assert!(moved.exists(), "{} was not kept", moved.display());
    assert_eq!(dir.quarantined(), vec![moved.clone()]);
    let name = moved.file_name().unwrap().to_string_lossy().into_owned();
    let secs = name.strip_prefix("features.sqlite3.corrupt-").unwrap();
    assert!(secs.parse::<u64>().is_ok(), "{name}");
    // The garbage itself was kept, for inspection.
    let mut head = [0; 100];
    std::fs::File::open(&moved)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(head, [0xA5; 100]);

    // A fresh store, which works.
    assert_eq!(store.len().unwrap(), 0);
    assert_eq!(store.get(&key(1)).unwrap(), None);
    store.put(&key(2), &features(2, 4)).unwrap();
    assert_eq!(store.get(&key(2)).unwrap(), Some(features(2, 4)));
    store
        .put_scores("m", &[("q".into(), "d".into(), 1.25)])
        .unwrap();
    assert_eq!(store.score("q", "d", "m").unwrap(), Some(1.25));
    drop(store);

    // And stays: the next start finds it sound.
    let store = FeatureStore::open(&dir.0).unwrap();
    assert!(store.quarantined().is_none());
    assert_eq!(store.get(&key(2)).unwrap(), Some(features(2, 4)));
    assert_eq!(dir.quarantined().len(), 1);
}

#[test]
fn corrupt_middle_pages_never_yield_wrong_data() {
    let dir = TempDir::new("store-pages");
    let rows = 60u32;
    // 64 keypoints: ~33 KB of descriptors a row, mostly on overflow pages.
    let original = |i: u32| features(i, 64);
    {
        let store = FeatureStore::open(&dir.0).unwrap();
        for i in 0..rows {
            store.put(&key(i as u128), &original(i)).unwrap();
        }
    }
    let path = dir.store_file();
    let size = std::fs::metadata(&path).unwrap().len();
    let mut header = [0; 18];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact(&mut header)
        .unwrap();
    let page = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => n as u64,
    };
    assert!(size > 100 * page, "only {size} bytes");
    // Inside pages in the middle of the file, past their headers (so mostly blob bytes of
    // overflow pages, which quick_check does not read): bytes that decode as finite floats,
    // i.e. data that would look plausible if served.
    let first = size / page / 2 - 4;
    for p in first..first + 8 {
        overwrite(&path, p * page + 512, &[0x3F; 1024]);
    }

    let store = FeatureStore::open(&dir.0).expect("a corrupt cache must not stop the service");
    if store.quarantined().is_some() {
        assert_eq!(store.len().unwrap(), 0);
        return;
    }
    let mut misses = 0;
    for i in 0..rows {
        match store.get(&key(i as u128)) {
            Ok(Some(f)) => assert!(f == original(i), "row {i} came back different"),
            Ok(None) => misses += 1,
            Err(e) => panic!("row {i}: {e}"),
        }
    }
    assert!(misses > 0, "the damage went unnoticed");
    assert_eq!(store.corrupt_rows(), misses);
    // Damaged rows were deleted: a second read is a plain miss, not counted again.
    assert_eq!(store.len().unwrap(), (rows as u64 - misses) as usize);
    for i in 0..rows {
        let _ = store.get(&key(i as u128)).unwrap();
    }
    assert_eq!(store.corrupt_rows(), misses);
}

#[test]
fn a_row_altered_behind_the_stores_back_is_a_counted_miss() {
    let dir = TempDir::new("store-row");
    let store = FeatureStore::open(&dir.0).unwrap();
    store.put(&key(1), &features(1, 8)).unwrap();
    store.put(&key(2), &features(2, 8)).unwrap();
    store
        .put_scores(
            "m",
            &[
                ("q".into(), "d1".into(), 2.5),
                ("q".into(), "d2".into(), 7.0),
            ],
        )
        .unwrap();

    // Another writer changes one descriptor blob (still finite values of the right length,
    // so it would pass as valid features) and one score.
    let raw = Connection::open(dir.store_file()).unwrap();
    let annot = Uuid::from_u128(1).to_string();
    let mut desc: Vec<u8> = raw
        .query_row(
            "SELECT descriptors FROM lightglue_features WHERE annot_uuid = ?1",
            params![annot],
            |r| r.get(0),
        )
        .unwrap();
    desc[..4].copy_from_slice(&0.5f32.to_le_bytes());
    let changed = raw
        .execute(
            "UPDATE lightglue_features SET descriptors = ?1 WHERE annot_uuid = ?2",
            params![desc, annot],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let changed = raw
        .execute(
            "UPDATE lightglue_scores SET score = 99.0 WHERE database_features = 'd1'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(raw);

    assert_eq!(store.corrupt_rows(), 0);
    assert_eq!(store.get(&key(1)).unwrap(), None);
    assert_eq!(store.corrupt_rows(), 1);
    assert_eq!(store.get(&key(2)).unwrap(), Some(features(2, 8)));
    assert_eq!(store.score("q", "d1", "m").unwrap(), None);
    assert_eq!(store.score("q", "d2", "m").unwrap(), Some(7.0));
    assert_eq!(store.corrupt_rows(), 2);
    // Deleted, so rewritten on the next computation.
    assert_eq!(store.len().unwrap(), 1);
    assert_eq!(store.score_count().unwrap(), 1);
    store.put(&key(1), &features(1, 8)).unwrap();
    assert_eq!(store.get(&key(1)).unwrap(), Some(features(1, 8)));
    assert_eq!(store.corrupt_rows(), 2);
}

#[test]
fn a_store_of_the_old_schema_is_recreated() {
    let dir = TempDir::new("store-schema");
    // The tables as the first version wrote them: no checksums, no schema version.
    let old = Connection::open(dir.store_file()).unwrap();
    old.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE lightglue_features (
             annot_uuid TEXT NOT NULL,
             settings TEXT NOT NULL,
             chip_sha256 BLOB NOT NULL,
             keypoints BLOB NOT NULL,
             keypoint_scores BLOB NOT NULL,
             descriptors BLOB NOT NULL,
             width REAL NOT NULL,
             height REAL NOT NULL,
             created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
             PRIMARY KEY (annot_uuid, settings, chip_sha256)
         );
         CREATE TABLE lightglue_scores (
             query_features TEXT NOT NULL,
             database_features TEXT NOT NULL,
             matcher TEXT NOT NULL,
             score REAL NOT NULL,
             created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
             PRIMARY KEY (query_features, database_features, matcher)
         );
         INSERT INTO lightglue_scores (query_features, database_features, matcher, score)
         VALUES ('q', 'd', 'm', 4.0);",
    )
    .unwrap();
    drop(old);

    let store = FeatureStore::open(&dir.0).unwrap();
    assert!(store.quarantined().is_none(), "an old schema is not damage");
    assert!(dir.quarantined().is_empty());
    assert_eq!(
        store.score_count().unwrap(),
        0,
        "unchecksummed rows are dropped"
    );
    assert_eq!(store.score("q", "d", "m").unwrap(), None);
    assert_eq!(store.corrupt_rows(), 0);
    store.put(&key(1), &features(1, 4)).unwrap();
    store
        .put_scores("m", &[("q".into(), "d".into(), 4.0)])
        .unwrap();
    drop(store);
    let store = FeatureStore::open(&dir.0).unwrap();
    assert_eq!(store.get(&key(1)).unwrap(), Some(features(1, 4)));
    assert_eq!(store.score("q", "d", "m").unwrap(), Some(4.0));
}

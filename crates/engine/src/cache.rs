//! Features in memory, least recently used first out, bounded both in entries and in bytes
//! (a 2,048-keypoint set is ~1.1 MB; a count alone let 10,000 entries grow to ~10 GiB).

use lru::LruCache;

use crate::{AnnotFeatures, FeatureKey};

pub(crate) struct FeatureCache {
    entries: LruCache<FeatureKey, AnnotFeatures>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

/// Heap bytes of one feature set (keypoints, scores, descriptors).
pub(crate) fn feature_bytes(f: &AnnotFeatures) -> usize {
    let n = f.features.len();
    n * (2 * 4 + 4) + f.features.descriptors.len() * 4 + 256
}

impl FeatureCache {
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: LruCache::unbounded(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    pub(crate) fn get(&mut self, key: &FeatureKey) -> Option<AnnotFeatures> {
        self.entries.get(key).cloned()
    }

    pub(crate) fn put(&mut self, key: FeatureKey, value: AnnotFeatures) {
        let size = feature_bytes(&value);
        if size > self.max_bytes {
            return;
        }
        if let Some(old) = self.entries.put(key, value) {
            self.bytes -= feature_bytes(&old);
        }
        self.bytes += size;
        while self.bytes > self.max_bytes || self.entries.len() > self.max_entries {
            match self.entries.pop_lru() {
                Some((_, old)) => self.bytes -= feature_bytes(&old),
                None => break,
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use uuid::Uuid;
    use wbia_lightglue_model::Features;

    use super::*;
    use crate::ChipId;

    fn entry(i: u128, keypoints: usize) -> (FeatureKey, AnnotFeatures) {
        let key = FeatureKey {
            annot: Uuid::from_u128(i),
            settings: "s".into(),
            chip: ChipId::Bytes([0; 32]),
            model: "m".into(),
        };
        let features = Features {
            keypoints: vec![[0.0; 2]; keypoints],
            scores: vec![0.0; keypoints],
            descriptors: vec![0.0; keypoints * 128],
            image_size: [1.0, 1.0],
        };
        let value = AnnotFeatures {
            key: key.clone(),
            features: Arc::new(features),
        };
        (key, value)
    }

    /// 1,000 insertions of 2,048-keypoint sets into a 10 MB cache: it never holds more than
    /// 10 MB, keeps the newest, and evicts the least recently used first.
    #[test]
    fn stays_under_its_byte_bound() {
        let one = feature_bytes(&entry(0, 2048).1);
        let mut cache = FeatureCache::new(10_000, 10 << 20);
        for i in 0..1000 {
            let (k, v) = entry(i, 2048);
            cache.put(k, v);
            assert!(cache.bytes() <= 10 << 20);
            // Keep entry 0 recently used.
            cache.get(&entry(0, 2048).0);
        }
        assert_eq!(cache.len(), (10 << 20) / one);
        assert!(cache.get(&entry(999, 2048).0).is_some());
        assert!(cache.get(&entry(0, 2048).0).is_some());
        assert!(cache.get(&entry(500, 2048).0).is_none());
    }

    #[test]
    fn stays_under_its_entry_bound() {
        let mut cache = FeatureCache::new(3, usize::MAX);
        for i in 0..10 {
            let (k, v) = entry(i, 4);
            cache.put(k, v);
        }
        assert_eq!(cache.len(), 3);
    }
}

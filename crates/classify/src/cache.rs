//! [`Classifier`]: classification behind a bounded, sharded cache keyed on statement shape.
//! Lookups take one uncontended shard lock; the cache never holds more than its capacity.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

use crate::{classify, lexer, SharedClassification};

const SHARDS: usize = 16;

/// Shape hash → (shape, classification).
type Shard = Mutex<HashMap<u64, (Box<str>, SharedClassification), PreHashed>>;

/// Classification with a shape-keyed cache.
pub struct Classifier {
    read_only_functions: Vec<String>,
    /// Keyed by the shape's hash (computed once, with a per-process random seed); the entry
    /// keeps the shape itself, compared on every hit, so a collision is only ever a miss.
    shards: Vec<Shard>,
    per_shard: usize,
    /// Fast and seeded: the shape is compared on a hit anyway, so SipHash's strength buys
    /// nothing here but time.
    hasher: foldhash::fast::RandomState,
}

impl Classifier {
    /// A classifier holding at most `capacity` shapes; `read_only_functions` extends the
    /// built-in list of side-effect-free functions.
    pub fn new(capacity: usize, read_only_functions: Vec<String>) -> Self {
        Classifier {
            read_only_functions,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Classifies `sql`, from the cache when a statement of the same shape was seen. `scratch`
    /// is a caller-owned buffer reused for the shape.
    pub fn classify(&self, sql: &str, scratch: &mut String) -> SharedClassification {
        self.classify_counted(sql, scratch).0
    }

    /// [`Classifier::classify`], also saying whether the cache answered.
    pub fn classify_counted(
        &self,
        sql: &str,
        scratch: &mut String,
    ) -> (SharedClassification, bool) {
        if lexer::shape_into(sql, scratch).is_err() {
            // Text the scanner refuses is classified every time (it is rare and suspicious).
            return (self.classify_uncached(sql), false);
        }
        self.classify_shaped(sql, scratch)
    }

    /// Classifies `sql` whose shape the caller already computed with [`lexer::shape_into`]
    /// (so a session that keys its own cache on the shape scans the text once).
    pub fn classify_shaped(&self, sql: &str, shape: &str) -> (SharedClassification, bool) {
        debug_assert_eq!(lexer::shape(sql).as_deref(), Ok(shape));
        let hash = self.hasher.hash_one(shape);
        let shard = &self.shards[(hash as usize) % SHARDS];
        if let Some((cached, hit)) = shard.lock().expect("cache shard").get(&hash) {
            if **cached == *shape {
                return (hit.clone(), true);
            }
        }
        let classification = self.classify_uncached(sql);
        let mut map = shard.lock().expect("cache shard");
        if map.len() >= self.per_shard {
            // Bounded: start the shard afresh rather than track recency on every hit.
            map.clear();
        }
        map.insert(hash, (shape.into(), classification.clone()));
        (classification, false)
    }

    /// Classifies `sql` without the cache (text that does not scan, or an unsafe encoding).
    pub fn classify_uncached(&self, sql: &str) -> SharedClassification {
        Arc::new(classify(sql, &self.read_only_functions))
    }

    /// Entries currently cached.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("cache shard").len())
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The keys are already hashes: hashing them again would only cost time.
type PreHashed = BuildHasherDefault<IdentityHasher>;

#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

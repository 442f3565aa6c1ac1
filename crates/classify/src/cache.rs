//! [`Classifier`]: classification behind a bounded, sharded cache keyed on statement shape.
//! Lookups take one uncontended shard lock; the cache never holds more than its capacity.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use crate::{classify, lexer, Classification, SharedClassification};

const SHARDS: usize = 16;

/// Classification with a shape-keyed cache.
pub struct Classifier {
    read_only_functions: Vec<String>,
    shards: Vec<Mutex<HashMap<Box<str>, SharedClassification>>>,
    per_shard: usize,
    hasher: RandomState,
}

impl Classifier {
    /// A classifier holding at most `capacity` shapes; `read_only_functions` extends the
    /// built-in list of side-effect-free functions.
    pub fn new(capacity: usize, read_only_functions: Vec<String>) -> Self {
        Classifier {
            read_only_functions,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    /// Classifies `sql`, from the cache when a statement of the same shape was seen. `scratch`
    /// is a caller-owned buffer reused for the shape.
    pub fn classify(&self, sql: &str, scratch: &mut String) -> SharedClassification {
        if lexer::shape_into(sql, scratch).is_err() {
            // Text the scanner refuses is classified every time (it is rare and suspicious).
            return Arc::new(classify(sql, &self.read_only_functions));
        }
        let shard = &self.shards[(self.hasher.hash_one(scratch.as_str()) as usize) % SHARDS];
        if let Some(hit) = shard.lock().expect("cache shard").get(scratch.as_str()) {
            return hit.clone();
        }
        let classification = Arc::new(classify(sql, &self.read_only_functions));
        let mut map = shard.lock().expect("cache shard");
        if map.len() >= self.per_shard {
            // Bounded: start the shard afresh rather than track recency on every hit.
            map.clear();
        }
        map.insert(scratch.as_str().into(), classification.clone());
        classification
    }

    /// Classifies without the cache.
    pub fn classify_uncached(&self, sql: &str) -> Classification {
        classify(sql, &self.read_only_functions)
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

//! [`Classifier`]: classification behind a bounded, sharded cache. Lookups take one
//! uncontended shard lock; the cache never holds more than its capacity, and a full shard
//! lets its oldest entry go for each new one, whose buffers the new entry takes over. Two
//! indexes: by
//! statement shape, and by a key blind to integer and string literals ([`lexer::text_key`])
//! whose entries keep the [`ShapeTemplate`] of a text classified before, so a text that differs
//! from it only in those literals is recalled with a byte comparison instead of a scan.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

use crate::lexer::{self, ShapeTemplate};
use crate::{classify, SharedClassification};

const SHARDS: usize = 16;

/// One shard of both indexes (an entry lives in the shard its own hash picks).
#[derive(Default)]
struct Entries {
    /// Shape hash → (shape, classification).
    shapes: Bounded<(String, SharedClassification)>,
    /// Text key → (template of a text with that key, classification of its shape).
    texts: Bounded<(ShapeTemplate, SharedClassification)>,
}

/// A map of hashes holding at most a given number of entries, first in first out: one entry
/// leaves per entry that comes in, never a whole map at once (freeing hundreds of entries
/// under a shard's lock would stall every session that needs the shard meanwhile).
struct Bounded<V> {
    map: HashMap<u64, V, PreHashed>,
    /// The map's keys, oldest first, each once.
    order: VecDeque<u64>,
}

impl<V> Default for Bounded<V> {
    fn default() -> Self {
        Bounded {
            map: HashMap::default(),
            order: VecDeque::new(),
        }
    }
}

impl<V> Bounded<V> {
    fn get(&self, key: u64) -> Option<&V> {
        self.map.get(&key)
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        self.map.get_mut(&key)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    /// When the map holds `limit` entries already, lets the oldest go and returns it: its
    /// buffers for the entry about to come in, the rest for the caller to drop once it has let
    /// the shard's lock go.
    #[must_use]
    fn make_room(&mut self, limit: usize) -> Option<V> {
        if self.map.len() < limit {
            return None;
        }
        self.order
            .pop_front()
            .and_then(|oldest| self.map.remove(&oldest))
    }

    /// Inserts `value` for `key`, which the map does not hold, once [`Bounded::make_room`]
    /// made room for it.
    fn insert_new(&mut self, key: u64, value: V) {
        debug_assert!(!self.map.contains_key(&key));
        self.map.insert(key, value);
        self.order.push_back(key);
    }
}

impl<B: Default> Bounded<(B, SharedClassification)> {
    /// Inserts `classification` for `key`, which the map does not hold, beside what `fill`
    /// makes of the buffer of the entry let go to make room (a new, empty one when none is).
    /// Returns the classification let go, for the caller to drop once it has let the shard's
    /// lock go.
    #[must_use]
    fn insert_reusing(
        &mut self,
        limit: usize,
        key: u64,
        classification: SharedClassification,
        fill: impl FnOnce(B) -> B,
    ) -> Option<SharedClassification> {
        let (buffer, evicted) = match self.make_room(limit) {
            Some((buffer, evicted)) => (buffer, Some(evicted)),
            None => (B::default(), None),
        };
        self.insert_new(key, (fill(buffer), classification));
        evicted
    }
}

/// What [`Classifier::recall`] found.
#[derive(Debug)]
pub enum Recall {
    /// A text differing only in integer and string literals was classified before: this.
    Hit(SharedClassification),
    /// Nothing; the text's key when it was computed, for [`Classifier::classify_template`]
    /// (a text too long to keep for recall has none, and needs none).
    Miss(Option<TextKey>),
}

/// A text's key in the recall index ([`lexer::text_key`] under the classifier's seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextKey(u64);

/// Classification with a shape-keyed cache.
pub struct Classifier {
    read_only_functions: Vec<String>,
    /// Keyed by the shape's hash (computed once, with a per-process random seed) and by the
    /// text key; an entry keeps its shape (or template), compared on every hit, so a
    /// collision is only ever a miss.
    shards: Vec<Mutex<Entries>>,
    per_shard: usize,
    /// Fast and seeded: the shape is compared on a hit anyway, so SipHash's strength buys
    /// nothing here but time.
    hasher: foldhash::fast::RandomState,
    text_seed: u64,
}

impl Classifier {
    /// A classifier holding at most `capacity` shapes and `capacity` recallable texts (each at
    /// most [`lexer::MAX_TEMPLATE_TEXT`] bytes); `read_only_functions` extends the built-in
    /// list of side-effect-free functions.
    pub fn new(capacity: usize, read_only_functions: Vec<String>) -> Self {
        let hasher = foldhash::fast::RandomState::default();
        Classifier {
            read_only_functions,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            text_seed: hasher.hash_one("text keys"),
            hasher,
        }
    }

    /// Classifies `sql`, from the cache when a statement of the same shape was seen.
    /// `scratch` is a caller-owned template reused for the shape.
    pub fn classify(&self, sql: &str, scratch: &mut ShapeTemplate) -> SharedClassification {
        self.classify_counted(sql, scratch).0
    }

    /// [`Classifier::classify`], also saying whether the cache answered.
    pub fn classify_counted(
        &self,
        sql: &str,
        scratch: &mut ShapeTemplate,
    ) -> (SharedClassification, bool) {
        let key = match self.recall(sql, scratch) {
            Recall::Hit(recalled) => return (recalled, true),
            Recall::Miss(key) => key,
        };
        if lexer::shape_into_template(sql, scratch).is_err() {
            // Text the scanner refuses is classified every time (it is rare and suspicious).
            return (self.classify_uncached(sql), false);
        }
        self.classify_template(sql, scratch, key)
    }

    /// The classification of `sql` when it differs from a text classified before only in
    /// integer and string literals; that text's template (so `sql`'s shape) is copied into
    /// `template`. No scan: a hash and a byte comparison.
    pub fn recall(&self, sql: &str, template: &mut ShapeTemplate) -> Recall {
        if sql.len() > lexer::MAX_TEMPLATE_TEXT {
            return Recall::Miss(None);
        }
        let key = self.text_key(sql);
        let entries = self.shard(key.0).lock().expect("cache shard");
        match entries.texts.get(key.0) {
            Some((known, classification)) if known.same_shape(sql) => {
                template.copy_from(known);
                Recall::Hit(classification.clone())
            }
            _ => Recall::Miss(Some(key)),
        }
    }

    fn text_key(&self, sql: &str) -> TextKey {
        TextKey(lexer::text_key(sql.as_bytes(), self.text_seed))
    }

    /// Classifies `sql`, which `template` was just made from ([`lexer::shape_into_template`]),
    /// and keeps the template for [`Classifier::recall`] when it can match other texts.
    /// `key` is the text's key when a [`Recall::Miss`] already computed it.
    pub fn classify_template(
        &self,
        sql: &str,
        template: &ShapeTemplate,
        key: Option<TextKey>,
    ) -> (SharedClassification, bool) {
        let (classification, hit) = self.classify_shaped(sql, template.shape());
        if template.is_matchable() {
            let TextKey(key) = key.unwrap_or_else(|| self.text_key(sql));
            let mut entries = self.shard(key).lock().expect("cache shard");
            // The first text with a key keeps it: texts that share a key but not a shape
            // (`t1` and `t2`, or decimals) would otherwise replace each other, allocating
            // every time.
            if entries.texts.get(key).is_none() {
                // A template is at most MAX_TEMPLATE_TEXT bytes of text, so a buffer taken
                // over is never much larger than the one it stands for.
                let evicted = entries.texts.insert_reusing(
                    self.per_shard,
                    key,
                    classification.clone(),
                    |mut kept| {
                        kept.copy_from(template);
                        kept
                    },
                );
                drop(entries);
                drop(evicted);
            }
        }
        (classification, hit)
    }

    /// Classifies `sql` whose shape the caller already computed with [`lexer::shape_into`].
    fn classify_shaped(&self, sql: &str, shape: &str) -> (SharedClassification, bool) {
        debug_assert_eq!(lexer::shape(sql).as_deref(), Ok(shape));
        let hash = self.hasher.hash_one(shape);
        let shard = self.shard(hash);
        if let Some((cached, hit)) = shard.lock().expect("cache shard").shapes.get(hash) {
            if **cached == *shape {
                return (hit.clone(), true);
            }
        }
        let classification = self.classify_uncached(sql);
        let mut entries = shard.lock().expect("cache shard");
        let evicted = match entries.shapes.get_mut(hash) {
            // Another session's entry since the lookup, or another shape with this hash.
            Some(known) => {
                let entry = (shape.to_owned(), classification.clone());
                Some(std::mem::replace(known, entry).1)
            }
            None => entries.shapes.insert_reusing(
                self.per_shard,
                hash,
                classification.clone(),
                |buffer| recycled(buffer, shape),
            ),
        };
        drop(entries);
        drop(evicted);
        (classification, false)
    }

    fn shard(&self, hash: u64) -> &Mutex<Entries> {
        &self.shards[(hash as usize) % SHARDS]
    }

    /// Classifies `sql` without the cache (text that does not scan, or an unsafe encoding).
    pub fn classify_uncached(&self, sql: &str) -> SharedClassification {
        Arc::new(classify(sql, &self.read_only_functions))
    }

    /// Shapes currently cached.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("cache shard").shapes.len())
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `shape` in the buffer of an entry let go, unless that buffer is more than twice the size
/// (shapes have no length limit: one long statement's buffer must not stay for short ones).
fn recycled(mut buffer: String, shape: &str) -> String {
    if buffer.capacity() > 2 * shape.len().max(64) {
        return shape.to_owned();
    }
    buffer.clear();
    buffer.push_str(shape);
    buffer
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

#[cfg(test)]
mod tests {
    use super::*;

    fn recalled_by(classifier: &Classifier, sql: &str, template: &mut ShapeTemplate) -> bool {
        matches!(classifier.recall(sql, template), Recall::Hit(_))
    }

    #[test]
    fn a_text_like_one_classified_before_is_recalled_without_a_scan() {
        let classifier = Classifier::new(64, Vec::new());
        let mut template = ShapeTemplate::default();
        let first = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213 AND note = 'a';";
        // A miss hands over the text's key, so keeping the text need not compute it again.
        let Recall::Miss(key) = classifier.recall(first, &mut template) else {
            panic!("recalled from an empty cache");
        };
        assert_eq!(key, Some(classifier.text_key(first)));
        let (classified, hit) = classifier.classify_counted(first, &mut template);
        assert!(!hit);
        // Another session's template: only the literals changed.
        let mut other = ShapeTemplate::default();
        let next = "SELECT abalance FROM pgbench_accounts WHERE aid = 7 AND note = 'it''s';";
        let Recall::Hit(recalled) = classifier.recall(next, &mut other) else {
            panic!("not recalled");
        };
        assert!(Arc::ptr_eq(&recalled, &classified));
        assert_eq!(other.shape(), template.shape());
        assert!(other.same_shape(first) && other.same_shape(next));
        // A name with other digits, or a literal recall does not let vary: not recalled (the
        // decimal is then found by shape, after a scan).
        for sql in [
            "SELECT abalance FROM pgbench_accounts2 WHERE aid = 7 AND note = 'x';",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7.5 AND note = 'x';",
        ] {
            assert!(!recalled_by(&classifier, sql, &mut other), "{sql}");
        }
        let (by_shape, hit) = classifier.classify_counted(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7.5 AND note = 'x';",
            &mut other,
        );
        assert!(hit && Arc::ptr_eq(&by_shape, &classified));
        // Same key (digits that are not a literal are left out of it too), other shape: the
        // comparison refuses it.
        classifier.classify("SELECT \"12\" FROM t WHERE id = 1", &mut template);
        let quoted = "SELECT \"13\" FROM t WHERE id = 1";
        let key = |sql: &str| classifier.text_key(sql);
        assert_eq!(key(quoted), key("SELECT \"12\" FROM t WHERE id = 1"));
        assert!(!recalled_by(&classifier, quoted, &mut other));
        // A text the fast path does not take is never kept for recall.
        let set = "SET work_mem = 64";
        classifier.classify_counted(set, &mut template);
        assert!(!recalled_by(&classifier, "SET work_mem = 65", &mut other));
    }

    #[test]
    fn texts_whose_literals_name_a_table_are_never_taken_for_each_other() {
        let classifier = Classifier::new(64, Vec::new());
        let mut template = ShapeTemplate::default();
        let reads = |sql: &str, template: &mut ShapeTemplate| -> Vec<String> {
            let classified = classifier.classify(sql, template);
            classified.reads().iter().map(|t| t.to_string()).collect()
        };
        for _ in 0..2 {
            for table in ["orders", "customers", "billing.invoices"] {
                let sql = format!("SELECT table_to_xml('{table}', true, false, '')");
                assert_eq!(reads(&sql, &mut template), [table], "{sql}");
            }
        }
        let mut memo = crate::ShapeMemo::new(4096);
        memo.get("SELECT table_to_xml('orders', true, false, '')")
            .unwrap();
        memo.remember("SELECT table_to_xml('orders', true, false, '')", 1u8);
        assert_eq!(
            memo.get("SELECT table_to_xml('customers', true, false, '')"),
            Ok(None)
        );
    }

    #[test]
    fn a_full_map_lets_only_its_oldest_entry_go() {
        let mut map = Bounded::default();
        for key in 1..=3 {
            assert_eq!(map.make_room(3), None);
            map.insert_new(key, key * 10);
        }
        // Full: the oldest leaves, handed back; the others stay.
        assert_eq!(map.make_room(3), Some(10));
        map.insert_new(4, 40);
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(1), None);
        assert_eq!((map.get(2), map.get(4)), (Some(&20), Some(&40)));
        assert_eq!(map.make_room(3), Some(20));
        map.insert_new(5, 50);
        assert_eq!((map.len(), map.order.len()), (3, 3));
    }

    #[test]
    fn a_full_cache_gives_the_buffers_of_the_entry_it_lets_go_to_the_new_one() {
        // One entry per shard in each index: a new shape or text in a full shard replaces the
        // one there.
        let classifier = Classifier::new(SHARDS, Vec::new());
        let mut scratch = ShapeTemplate::default();
        let text = |i: usize| format!("SELECT c{i} FROM t WHERE id = 1");
        for i in 100..400 {
            classifier.classify(&text(i), &mut scratch);
        }
        // Each index's entry in shard 0: its key, and where its shape's bytes lie.
        let shape_entry = |c: &Classifier| {
            let entries = c.shards[0].lock().expect("cache shard");
            let (key, (shape, _)) = entries.shapes.map.iter().next().expect("full");
            (*key, shape.as_ptr())
        };
        let text_entry = |c: &Classifier| {
            let entries = c.shards[0].lock().expect("cache shard");
            let (key, (template, _)) = entries.texts.map.iter().next().expect("full");
            (*key, template.shape().as_ptr())
        };
        let (shape_key, shape_buffer) = shape_entry(&classifier);
        let (text_key, text_buffer) = text_entry(&classifier);
        let (mut shape_replaced, mut text_replaced) = (false, false);
        // Same lengths, other names: each new entry fits the buffers of the one it replaces
        // (made while those were still in use, a new allocation could not share their address).
        for i in 400..1000 {
            classifier.classify(&text(i), &mut scratch);
            let (key, buffer) = shape_entry(&classifier);
            if key != shape_key && !shape_replaced {
                assert_eq!(buffer, shape_buffer, "shape entry");
                shape_replaced = true;
            }
            let (key, buffer) = text_entry(&classifier);
            if key != text_key && !text_replaced {
                assert_eq!(buffer, text_buffer, "text entry");
                text_replaced = true;
            }
        }
        assert!(shape_replaced && text_replaced);
        // A buffer much larger than the shape that would take it over is let go instead.
        let large = String::with_capacity(4096);
        let at = large.as_ptr();
        let taken = recycled(large, "select ?");
        assert_ne!(taken.as_ptr(), at);
        let fitting = String::with_capacity(64);
        let at = fitting.as_ptr();
        let taken = recycled(fitting, "select ?");
        assert_eq!((taken.as_ptr(), taken.as_str()), (at, "select ?"));
    }

    #[test]
    fn recallable_texts_stay_bounded() {
        let classifier = Classifier::new(32, Vec::new());
        let mut scratch = ShapeTemplate::default();
        for i in 0..1_000 {
            classifier.classify(&format!("SELECT c{i} FROM t WHERE id = 1"), &mut scratch);
        }
        for shard in &classifier.shards {
            let entries = shard.lock().expect("cache shard");
            assert!(entries.texts.len() <= classifier.per_shard);
            assert!(entries.shapes.len() <= classifier.per_shard);
        }
        // The last text is still there to recall.
        assert!(recalled_by(
            &classifier,
            "SELECT c999 FROM t WHERE id = 2",
            &mut scratch
        ));
    }
}

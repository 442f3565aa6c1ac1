//! [`ShapeMemo`]: one owner's (a session's) memory of what it decided per statement. No lock
//! and no shared counter: a repeat costs one lookup in maps only its owner touches. Texts
//! without literals (parameterised statements, which clients send verbatim again and again)
//! are found by their exact text, without a scan; texts with literals by their shape, taken
//! without a scan when only integer or string literals differ from one of the last texts
//! scanned ([`ShapeTemplate`]). Bounded in bytes; full, it starts afresh.

use std::collections::HashMap;

use crate::lexer::{self, LexError, ShapeTemplate};

type Map<K, V> = HashMap<Box<K>, V, foldhash::fast::RandomState>;

/// How many recently scanned texts a memo keeps to compare new texts with: enough for the
/// handful of statements a transaction or an ORM's unit of work repeats with new values.
const RECENT_TEXTS: usize = 8;

/// Statements remembered for one owner, each with a value (what was decided). Laid out as
/// declared (`repr(C)`): what a repeat reads first, the shape index (read on a miss) last.
#[repr(C)]
pub struct ShapeMemo<V> {
    /// The texts scanned last, most recent first, each with its shape; the first holds the
    /// shape of the text last looked up when `shaped`. Reused, never shrunk.
    recent: Vec<Recent<V>>,
    /// Keyed by the text's bytes, so a verbatim repeat is found before it is even decoded.
    exact: Map<[u8], V>,
    shaped: bool,
    bytes: usize,
    max_bytes: usize,
    shapes: Map<str, V>,
}

/// A recently scanned text, and the value `shapes` holds for its shape once looked up (so a
/// text matching it skips hashing the shape). Only ever a copy of what `shapes` holds:
/// cleared with it, set only from it or together with it.
struct Recent<V> {
    template: ShapeTemplate,
    value: Option<V>,
}

impl<V: Copy> ShapeMemo<V> {
    /// A memo holding at most `max_bytes` of text and shapes; a statement whose shape is longer
    /// than an eighth of that is never remembered (one long text must not flush the rest).
    pub fn new(max_bytes: usize) -> Self {
        ShapeMemo {
            recent: Vec::new(),
            shaped: false,
            exact: HashMap::default(),
            shapes: HashMap::default(),
            bytes: 0,
            max_bytes,
        }
    }

    /// The value remembered for `sql` (same text, or same [`lexer::shape`]). On a miss the
    /// shape stays in the memo for [`ShapeMemo::last_shape`] and [`ShapeMemo::remember`];
    /// an error says the text does not scan (and nothing is remembered for it).
    pub fn get(&mut self, sql: &str) -> Result<Option<V>, LexError> {
        if let Some(value) = self.get_verbatim(sql.as_bytes()) {
            return Ok(Some(value));
        }
        self.get_by_shape(sql, |_, _| false)
    }

    /// The value remembered for exactly this text (a text is only ever remembered as valid
    /// UTF-8, so the caller need not decode `sql` first).
    pub fn get_verbatim(&mut self, sql: &[u8]) -> Option<V> {
        self.shaped = false;
        self.exact.get(sql).copied()
    }

    /// [`ShapeMemo::get`] for a text [`ShapeMemo::get_verbatim`] just missed: by shape only.
    /// Before scanning a text none of the recent ones matches, `recall` may fill in the
    /// template of a text of the same shape (from a cache shared with other owners), saying
    /// whether it did.
    pub fn get_by_shape(
        &mut self,
        sql: &str,
        recall: impl FnOnce(&str, &mut ShapeTemplate) -> bool,
    ) -> Result<Option<V>, LexError> {
        self.shaped = false;
        self.take_shape(sql, recall)?;
        let first = &mut self.recent[0];
        if first.value.is_none() {
            first.value = self.shapes.get(first.template.shape()).copied();
        }
        Ok(first.value)
    }

    /// Puts the shape of `sql` first in `recent`: from a recent text of the same shape, from
    /// `recall`, or by a scan.
    fn take_shape(
        &mut self,
        sql: &str,
        recall: impl FnOnce(&str, &mut ShapeTemplate) -> bool,
    ) -> Result<(), LexError> {
        match self.recent.iter().position(|r| r.template.same_shape(sql)) {
            Some(found) => self.recent[..=found].rotate_right(1),
            None => {
                // A text the fast path did not take (or too long to keep) matches nothing:
                // let the next scan overwrite it rather than push out one that matches.
                if self
                    .recent
                    .first()
                    .is_none_or(|r| r.template.is_matchable())
                {
                    if self.recent.len() < RECENT_TEXTS {
                        self.recent.push(Recent {
                            template: ShapeTemplate::default(),
                            value: None,
                        });
                    }
                    self.recent.rotate_right(1);
                }
                let first = &mut self.recent[0];
                first.value = None;
                if !recall(sql, &mut first.template) {
                    lexer::shape_into_template(sql, &mut first.template)?;
                }
            }
        }
        self.shaped = true;
        Ok(())
    }

    /// The shape of the text of the last [`ShapeMemo::get`] that missed.
    pub fn last_shape(&self) -> Option<&str> {
        self.shaped.then(|| self.recent[0].template.shape())
    }

    /// The template (with the shape) of `sql`, the text of the last [`ShapeMemo::get`]: taken
    /// now if that found the text verbatim.
    pub fn template_of(&mut self, sql: &str) -> Result<&ShapeTemplate, LexError> {
        if !self.shaped {
            self.take_shape(sql, |_, _| false)?;
        }
        Ok(&self.recent[0].template)
    }

    /// Remembers `value` for `sql`, the text of the last [`ShapeMemo::get`] that missed.
    pub fn remember(&mut self, sql: &str, value: V) {
        if !self.shaped {
            return;
        }
        let shape = self.recent[0].template.shape();
        let shape_len = shape.len();
        if shape_len * 8 > self.max_bytes {
            return;
        }
        // A shape without a hidden literal means the text has none: it will come back
        // verbatim, so it is worth finding without a scan, when it fits too. (`?` is also an
        // operator; such a text is then only found by shape, which is as correct, just slower.)
        let verbatim = !shape.contains('?') && (shape_len + sql.len()) * 8 <= self.max_bytes;
        let cost = shape_len + if verbatim { sql.len() } else { 0 };
        if self.bytes + cost > self.max_bytes {
            self.clear();
        }
        self.bytes += cost;
        let first = &mut self.recent[0];
        self.shapes.insert(first.template.shape().into(), value);
        first.value = Some(value);
        if verbatim {
            self.exact.insert(sql.as_bytes().into(), value);
        }
    }

    /// Forgets every decision remembered (and gives the memory back); the recent texts stay,
    /// as they say nothing about decisions.
    pub fn clear(&mut self) {
        for recent in &mut self.recent {
            recent.value = None;
        }
        self.exact = HashMap::default();
        self.shapes = HashMap::default();
        self.bytes = 0;
    }

    /// Shapes remembered.
    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_by_shape_and_by_text_and_stays_bounded() {
        let mut memo = ShapeMemo::new(1024);
        let first = "SELECT a FROM t WHERE id = 1";
        assert_eq!(memo.get(first), Ok(None));
        memo.remember(first, 7u8);
        // Another literal, other spacing and case: the same shape.
        assert_eq!(memo.get("select A from T where ID=2 -- again"), Ok(Some(7)));
        // A literal that matters is kept in the shape.
        memo.get("SET x = 1").unwrap();
        memo.remember("SET x = 1", 1);
        assert_eq!(memo.get("SET x = 2"), Ok(None));
        // A parameterised text is found verbatim, without a scan.
        let param = "SELECT b FROM t WHERE id = $1";
        memo.get(param).unwrap();
        memo.remember(param, 3);
        assert!(
            memo.exact.contains_key(param.as_bytes()) && !memo.exact.contains_key(first.as_bytes())
        );
        assert_eq!(memo.get(param), Ok(Some(3)));
        assert_eq!(memo.last_shape(), None);
        // By its bytes too, before anyone decodes them; bytes that are not the text are not it.
        assert_eq!(memo.get_verbatim(param.as_bytes()), Some(3));
        assert_eq!(
            memo.get_verbatim(&[param.as_bytes(), b"\xff"].concat()),
            None
        );
        assert_eq!(memo.get_verbatim(first.as_bytes()), None);
        assert_eq!(
            memo.template_of(param).map(ShapeTemplate::shape),
            Ok("select b from t where id = $1")
        );
        // Text that does not scan is neither found nor remembered.
        assert!(memo.get("SELECT 'open").is_err());
        memo.remember("SELECT 'open", 9);
        assert_eq!(memo.len(), 3);
        // Past its bound it starts afresh rather than grow.
        for i in 0..100 {
            let sql = format!("SELECT c{i} FROM t");
            memo.get(&sql).unwrap();
            memo.remember(&sql, 0);
            assert!(memo.bytes <= 1024);
        }
        assert!(memo.len() < 100);
        // Too long to keep verbatim as well, but its shape fits: found by shape.
        memo.clear();
        let wide = format!("SELECT {}c FROM t", "c, ".repeat(22));
        memo.get(&wide).unwrap();
        memo.remember(&wide, 5);
        assert!(memo.exact.is_empty());
        assert_eq!(memo.get(&wide), Ok(Some(5)));
        let long = format!("SELECT {} FROM t", "c, ".repeat(30));
        memo.get(&long).unwrap();
        memo.remember(&long, 0);
        assert_eq!(memo.get(&long), Ok(None));
        memo.clear();
        assert!(memo.is_empty());
    }

    #[test]
    fn a_recent_text_forgets_its_decision_with_the_memo() {
        let mut memo = ShapeMemo::new(1024);
        let sql = |i: u32| format!("SELECT a FROM t WHERE id = {i}");
        assert_eq!(memo.get(&sql(1)), Ok(None));
        memo.remember(&sql(1), 5u8);
        assert_eq!(memo.get(&sql(2)), Ok(Some(5)));
        // Cleared (as on a policy change): a text matching a recent one is not decided.
        memo.clear();
        assert_eq!(memo.get(&sql(3)), Ok(None));
        memo.remember(&sql(3), 6);
        assert_eq!(memo.get(&sql(4)), Ok(Some(6)));
        // Found by shape in the memo while the recent text had no decision yet: taken over.
        memo.get("SELECT b FROM t").unwrap();
        memo.remember("SELECT b FROM t", 7);
        memo.get(&sql(5)).unwrap();
        assert_eq!(memo.get("SELECT b FROM t"), Ok(Some(7)));
    }

    #[test]
    fn a_recalled_template_stands_in_for_the_scan() {
        let mut memo = ShapeMemo::new(1024);
        let mut known = ShapeTemplate::default();
        lexer::shape_into_template("SELECT a FROM t WHERE id = 1", &mut known).unwrap();
        let mut asked = 0;
        let found = memo.get_by_shape("SELECT a FROM t WHERE id = 2", |_, template| {
            asked += 1;
            template.copy_from(&known);
            true
        });
        assert_eq!(found, Ok(None));
        assert_eq!(memo.last_shape(), Some("select a from t where id = ?"));
        memo.remember("SELECT a FROM t WHERE id = 2", 4);
        // The recalled template is one of the recent texts: the next literal needs no recall.
        let found = memo.get_by_shape("SELECT a FROM t WHERE id = 3", |_, _| {
            asked += 1;
            false
        });
        assert_eq!((found, asked), (Ok(Some(4)), 1));
        // Nothing recalled: the scan decides.
        assert_eq!(memo.get_by_shape("SELECT b FROM t", |_, _| false), Ok(None));
        assert_eq!(memo.last_shape(), Some("select b from t"));
    }

    #[test]
    fn statements_taken_in_turn_are_found_without_a_scan() {
        let mut memo = ShapeMemo::new(16 * 1024);
        let turn = |i: usize| {
            [
                format!("UPDATE a SET v = v + {i} WHERE id = {}", i * 7),
                format!("SELECT v FROM a WHERE id = {i}"),
                format!("INSERT INTO h (id, note) VALUES ({i}, 'note ''{i}''')"),
            ]
        };
        for (value, sql) in turn(1).iter().enumerate() {
            assert_eq!(memo.get(sql), Ok(None));
            memo.remember(sql, value);
        }
        for i in 2..50 {
            for (value, sql) in turn(i).iter().enumerate() {
                assert_eq!(memo.get(sql), Ok(Some(value)), "{sql}");
            }
        }
        // Each text matched one of the three kept: none was scanned again.
        assert_eq!(memo.recent.len(), 3);
        // Texts that cannot match others do not push out those that can.
        for i in 0..20 {
            memo.get(&format!("SET x = {i}")).unwrap();
        }
        assert_eq!(
            memo.recent
                .iter()
                .filter(|r| r.template.is_matchable())
                .count(),
            3
        );
        // More statements in turn than it keeps: found by a scan, still right.
        for i in 0..3 {
            for j in 0..RECENT_TEXTS + 2 {
                let sql = format!("SELECT c{j} FROM t WHERE id = {i}");
                if i > 0 {
                    assert_eq!(memo.get(&sql), Ok(Some(j)));
                } else {
                    memo.get(&sql).unwrap();
                    memo.remember(&sql, j);
                }
            }
        }
        assert_eq!(memo.recent.len(), RECENT_TEXTS);
    }
}

//! [`ShapeMemo`]: one owner's (a session's) memory of what it decided per statement. No lock
//! and no shared counter: a repeat costs one lookup in maps only its owner touches. Texts
//! without literals (parameterised statements, which clients send verbatim again and again)
//! are found by their exact text, without a scan; texts with literals by their shape, taken
//! without a scan when only integers differ from the text last scanned ([`ShapeTemplate`]).
//! Bounded in bytes; full, it starts afresh.

use std::collections::HashMap;

use crate::lexer::{self, LexError, ShapeTemplate};

type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// Statements remembered for one owner, each with a value (what was decided).
pub struct ShapeMemo<V> {
    /// The shape of the text last looked up; reused, never shrunk.
    scratch: String,
    /// The last text scanned, whose shape `scratch` holds: a text differing from it only in
    /// its integer literals needs no scan.
    template: ShapeTemplate,
    shaped: bool,
    exact: Map<V>,
    shapes: Map<V>,
    bytes: usize,
    max_bytes: usize,
}

impl<V: Copy> ShapeMemo<V> {
    /// A memo holding at most `max_bytes` of text and shapes; a statement whose shape is longer
    /// than an eighth of that is never remembered (one long text must not flush the rest).
    pub fn new(max_bytes: usize) -> Self {
        ShapeMemo {
            scratch: String::new(),
            template: ShapeTemplate::default(),
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
        self.shaped = false;
        if let Some(value) = self.exact.get(sql) {
            return Ok(Some(*value));
        }
        if !self.template.same_shape(sql) {
            lexer::shape_into_template(sql, &mut self.scratch, &mut self.template)?;
        }
        self.shaped = true;
        Ok(self.shapes.get(self.scratch.as_str()).copied())
    }

    /// The shape of the text of the last [`ShapeMemo::get`] that missed.
    pub fn last_shape(&self) -> Option<&str> {
        self.shaped.then_some(self.scratch.as_str())
    }

    /// The shape of `sql`, the text of the last [`ShapeMemo::get`]: scanned now if that
    /// found the text verbatim.
    pub fn shape_of(&mut self, sql: &str) -> Result<&str, LexError> {
        if !self.shaped {
            lexer::shape_into_template(sql, &mut self.scratch, &mut self.template)?;
            self.shaped = true;
        }
        Ok(self.scratch.as_str())
    }

    /// Remembers `value` for `sql`, the text of the last [`ShapeMemo::get`] that missed.
    pub fn remember(&mut self, sql: &str, value: V) {
        if !self.shaped {
            return;
        }
        let shape_len = self.scratch.len();
        if shape_len * 8 > self.max_bytes {
            return;
        }
        // A shape without a hidden literal means the text has none: it will come back
        // verbatim, so it is worth finding without a scan, when it fits too. (`?` is also an
        // operator; such a text is then only found by shape, which is as correct, just slower.)
        let verbatim = !self.scratch.contains('?') && (shape_len + sql.len()) * 8 <= self.max_bytes;
        let cost = shape_len + if verbatim { sql.len() } else { 0 };
        if self.bytes + cost > self.max_bytes {
            self.clear();
        }
        self.bytes += cost;
        self.shapes.insert(self.scratch.as_str().into(), value);
        if verbatim {
            self.exact.insert(sql.into(), value);
        }
    }

    /// Forgets everything remembered (and gives the memory back).
    pub fn clear(&mut self) {
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
        assert!(memo.exact.contains_key(param) && !memo.exact.contains_key(first));
        assert_eq!(memo.get(param), Ok(Some(3)));
        assert_eq!(memo.last_shape(), None);
        assert_eq!(memo.shape_of(param), Ok("select b from t where id = $1"));
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
}

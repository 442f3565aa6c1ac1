//! What a SQL statement does.
//!
//! [`classify`] parses a query text with sqlparser (PostgreSQL dialect) and reports its
//! [`Kind`]s, the tables it reads and writes, the functions it calls and why; statements
//! sqlparser cannot parse are recognised by keyword ([`fallback`]) or reported as
//! [`Kind::Unknown`]. Writes hidden in reads count as writes: data-modifying CTEs,
//! SELECT INTO, FOR UPDATE, functions not known to be read-only, COPY to or from files and
//! programs. [`Classifier`] adds a bounded cache keyed on the statement *shape*
//! ([`lexer::shape`]), so a repeated statement costs a scan and a hash lookup, not a parse;
//! [`ShapeMemo`] is the lock-free per-session layer in front of it.

mod analyze;
mod cache;
mod fallback;
mod functions;
mod kind;
pub mod lexer;
mod memo;
mod pinned;
mod search_path;
mod table;

use std::cell::Cell;
use std::sync::Arc;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Span, TokenWithSpan, Tokenizer};

pub use cache::{Classifier, Recall, TextKey};
pub use kind::{Kind, KindSet};
pub use lexer::LexError;
pub use memo::ShapeMemo;
pub use pinned::safe_value as pinned_setting_is_safe;
pub use search_path::SearchPath;
pub use table::TableName;

/// One thing a statement does: a kind, and the table it does it to when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Facet {
    pub kind: Kind,
    pub table: Option<TableName>,
}

/// The classification of a whole query text (all its statements).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    pub kinds: KindSet,
    /// Everything the text does, deduplicated; the policy decides per facet (and
    /// [`Classification::reads`] and [`Classification::writes`] list its tables).
    pub facets: Vec<Facet>,
    /// Functions called, folded (`pg_catalog.` kept only when written).
    pub functions: Vec<String>,
    /// Why non-obvious kinds were assigned (hidden writes, unparsed text).
    pub reasons: Vec<String>,
    /// Set when the text would turn off a setting pgstepup pins; always denied.
    pub pinned_violation: Option<String>,
    /// Whether sqlparser parsed every statement (otherwise keywords decided, or nothing did).
    pub fully_parsed: bool,
    /// Schemas the text puts on the session's search_path, where unqualified table names (its
    /// own later ones, and the session's from then on) may be found.
    pub search_path: Option<SearchPath>,
    /// What the text does with SQL-level prepared statements, whose text the session sees
    /// only at their PREPARE.
    pub sql_prepared: SqlPrepared,
}

/// SQL-level prepared statements (`PREPARE name AS ...`, `EXECUTE name(...)`) a text names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SqlPrepared {
    #[default]
    None,
    /// The text is this one PREPARE: its classification is the prepared statement's.
    PrepareAlone(String),
    /// The text is this one EXECUTE, with constant arguments: it runs the prepared statement
    /// and nothing else.
    ExecuteAlone(String),
    /// PREPAREs among other statements (what each prepares is not told apart).
    Prepares(Vec<String>),
}

impl Classification {
    /// Tables read, in the order first met.
    pub fn reads(&self) -> Vec<&TableName> {
        self.tables(|kind| kind == Kind::Read)
    }

    /// Tables written, created, altered or dropped, in the order first met.
    pub fn writes(&self) -> Vec<&TableName> {
        self.tables(|kind| kind != Kind::Read)
    }

    // Derived when asked (a report, a test), not kept: the hot path reads only the facets,
    // and keeping two more lists of copied names cost a short statement's miss about 1% of a
    // parse.
    fn tables(&self, wanted: impl Fn(Kind) -> bool) -> Vec<&TableName> {
        let mut tables: Vec<&TableName> = Vec::new();
        for facet in self.facets.iter().filter(|facet| wanted(facet.kind)) {
            if let Some(table) = &facet.table {
                if !tables.contains(&table) {
                    tables.push(table);
                }
            }
        }
        tables
    }

    /// Fully parsed reads that call only read-only functions, none of them `set_config`,
    /// cannot change a setting (a DBA's read-only list is not trusted with that one).
    fn cannot_change_settings(&self) -> bool {
        self.fully_parsed
            && self.kinds.iter().all(|kind| kind == Kind::Read)
            && !self.functions.iter().any(|f| f.ends_with("set_config"))
    }
}

/// sqlparser's default recursion limit; deeper nesting counts as unparseable.
const RECURSION_LIMIT: usize = 50;

/// Classifies a query text. `read_only_functions` are functions a DBA declared free of side
/// effects in addition to PostgreSQL's own.
pub fn classify(sql: &str, read_only_functions: &[String]) -> Classification {
    let mut builder = Builder::default();
    builder.out.fully_parsed = true;
    match parse(sql) {
        Some(statements) => {
            for statement in &statements {
                builder.add(analyze::analyze(statement));
            }
        }
        None => match lexer::split_statements(sql) {
            Some(pieces) => {
                for piece in pieces {
                    let parsed = parse(piece).or_else(|| {
                        lexer::builtin_operators_spelled_plainly(piece).and_then(|p| parse(&p))
                    });
                    match parsed {
                        Some(statements) => {
                            for statement in &statements {
                                builder.add(analyze::analyze(statement));
                            }
                        }
                        None => {
                            builder.out.fully_parsed = false;
                            let (facets, reason) = fallback::classify(piece);
                            builder.add(analyze::Findings {
                                facets,
                                reasons: reason.into_iter().collect(),
                                ..Default::default()
                            });
                        }
                    }
                }
            }
            None => {
                builder.out.fully_parsed = false;
                builder.add(analyze::Findings {
                    facets: vec![Facet {
                        kind: Kind::Unknown,
                        table: None,
                    }],
                    reasons: vec![
                        "the text does not scan as SQL (unterminated quote or comment)".into(),
                    ],
                    ..Default::default()
                });
            }
        },
    }
    let mut out = builder.finish(read_only_functions);
    if !out.cannot_change_settings() {
        out.pinned_violation = pinned::violation(sql);
    }
    if may_set_the_search_path_unseen(&out, sql) {
        out.search_path = Some(SearchPath::Unknown);
    }
    out
}

/// Text that names `search_path` and could set it where the analysis cannot see the value:
/// not fully parsed, or running code (DO, CALL, functions not known to be read-only), DDL or
/// role changes. Reads, SHOW, RESET and the SETs the analysis reads cannot (nor does admin
/// work such as ALTER SYSTEM: a server default, like a role's, is not the session's to see).
fn may_set_the_search_path_unseen(out: &Classification, sql: &str) -> bool {
    let understood = out.fully_parsed
        && out.kinds.iter().all(|kind| {
            matches!(
                kind,
                Kind::Read | Kind::Utility | Kind::Transaction | Kind::Admin
            )
        });
    // A U& identifier can spell the name with other bytes.
    let names = |needle: &[u8]| {
        sql.as_bytes()
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle))
    };
    !understood && (names(b"search_path") || names(b"u&"))
}

fn parse(sql: &str) -> Option<Vec<sqlparser::ast::Statement>> {
    let dialect = PostgreSqlDialect {};
    // The token vector is this thread's, kept from one parse to the next (sqlparser's own
    // `try_with_sql` grows a new one from empty: four reallocations for a short statement,
    // the last of them large enough to make glibc consolidate its free lists).
    // (A thread being torn down has no vector to lend: it gets a new one.)
    let mut tokens = TOKENS.try_with(Cell::take).unwrap_or_default();
    // Without locations: nothing here reads them, and sqlparser formats one into every error
    // it raises while trying alternatives (and then drops), unless it is blank.
    let tokenized = Tokenizer::new(&dialect, sql)
        .with_unescape(true)
        .tokenize_with_location_into_buf_with_mapper(&mut tokens, |token| TokenWithSpan {
            span: Span::empty(),
            ..token
        });
    if tokenized.is_err() {
        keep_for_next_parse(tokens);
        return None;
    }
    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .with_tokens_with_locations(tokens);
    let statements = parser.parse_statements().ok();
    keep_for_next_parse(parser.into_tokens());
    statements
}

/// Gives this thread's token vector back, emptied, unless one long text grew it.
fn keep_for_next_parse(mut tokens: Vec<TokenWithSpan>) {
    if tokens.capacity() <= MAX_KEPT_TOKENS {
        tokens.clear();
        // A thread being torn down drops it instead.
        let _ = TOKENS.try_with(|kept| kept.set(tokens));
    }
}

/// Tokens a thread keeps room for between parses, at most (45 KB, about a 1.5 KB statement): one
/// long statement must not leave every thread holding its buffer.
const MAX_KEPT_TOKENS: usize = 512;

thread_local! {
    static TOKENS: Cell<Vec<TokenWithSpan>> = const { Cell::new(Vec::new()) };
}

#[derive(Default)]
struct Builder {
    out: Classification,
    /// Read facets of the tables read, added after all others.
    relations: Vec<Facet>,
    statements: usize,
    prepares: Vec<String>,
    executes: Option<String>,
}

impl Builder {
    fn add(&mut self, findings: analyze::Findings) {
        self.statements += 1;
        self.prepares.extend(findings.prepares);
        self.executes = findings.executes;
        append(&mut self.out.facets, findings.facets);
        append(&mut self.relations, findings.relations);
        append(&mut self.out.functions, findings.functions);
        append(&mut self.out.reasons, findings.reasons);
        if let Some(change) = &findings.search_path {
            change.add_to(&mut self.out.search_path);
        }
    }

    fn finish(mut self, read_only_functions: &[String]) -> Classification {
        let mut out = std::mem::take(&mut self.out);
        for function in &out.functions {
            if !functions::is_read_only(function, read_only_functions) {
                out.facets.push(Facet {
                    kind: Kind::Write,
                    table: None,
                });
                out.reasons.push(format!(
                    "calls {function}(), which is not known to be read-only"
                ));
            }
        }
        append(&mut out.facets, self.relations);
        dedup(&mut out.facets);
        dedup(&mut out.functions);
        dedup(&mut out.reasons);
        // A read facet without a table says nothing once a tabled read exists.
        if out
            .facets
            .iter()
            .any(|f| f.kind == Kind::Read && f.table.is_some())
        {
            out.facets
                .retain(|f| f.kind != Kind::Read || f.table.is_some());
        }
        out.kinds = out.facets.iter().map(|f| f.kind).collect();
        out.sql_prepared = match (self.statements, self.prepares, self.executes) {
            (1, mut names, None) if names.len() == 1 => SqlPrepared::PrepareAlone(names.remove(0)),
            (1, names, Some(name)) if names.is_empty() => SqlPrepared::ExecuteAlone(name),
            (_, names, _) if names.is_empty() => SqlPrepared::None,
            (_, names, _) => SqlPrepared::Prepares(names),
        };
        out
    }
}

/// Moves `items` to the end of `list`, taking the allocation whole when `list` is empty (one
/// statement per text is the common case).
fn append<T>(list: &mut Vec<T>, mut items: Vec<T>) {
    if list.is_empty() {
        *list = items;
    } else {
        list.append(&mut items);
    }
}

/// Removes repeats, keeping first occurrences in order, in place (the lists are short, so
/// a quadratic look beats allocating a set).
fn dedup<T: PartialEq>(items: &mut Vec<T>) {
    let mut kept = 0;
    for i in 0..items.len() {
        if !items[..kept].contains(&items[i]) {
            // Everything between `kept` and `i` is a repeat, so order there does not matter.
            items.swap(kept, i);
            kept += 1;
        }
    }
    items.truncate(kept);
}

/// A classification shared between the cache and the sessions that use it.
pub type SharedClassification = Arc<Classification>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_keeps_first_occurrences_in_order() {
        let mut items = vec!["b", "a", "b", "c", "a", "a", "d", "c"];
        dedup(&mut items);
        assert_eq!(items, ["b", "a", "c", "d"]);
        let mut empty: Vec<u8> = Vec::new();
        dedup(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn findings_of_several_statements_add_up() {
        let c = classify(
            "SELECT * FROM a; INSERT INTO b SELECT * FROM a; SELECT * FROM c, a",
            &[],
        );
        assert_eq!(
            c.reads().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(
            c.writes().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            ["b"]
        );
        // A table written in more than one way (its facets differ in kind) is listed once.
        let c = classify(
            "ALTER TABLE b ADD c int; INSERT INTO b VALUES (1); DELETE FROM d",
            &[],
        );
        assert!(c.facets.len() >= 3, "{:?}", c.facets);
        assert_eq!(
            c.writes().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            ["b", "d"]
        );
    }

    #[test]
    fn parsing_without_locations_gives_sqlparsers_own_statements() {
        let corpus = [
            include_str!("../tests/corpus/client_catalog.jsonl"),
            include_str!("../tests/corpus/client_pg_dump.jsonl"),
            include_str!("../tests/corpus/ddl_dcl_admin.jsonl"),
            include_str!("../tests/corpus/deny.jsonl"),
            include_str!("../tests/corpus/hidden_writes.jsonl"),
            include_str!("../tests/corpus/reads.jsonl"),
            include_str!("../tests/corpus/session_and_tx.jsonl"),
            include_str!("../tests/corpus/tricks.jsonl"),
            include_str!("../tests/corpus/unparseable.jsonl"),
            include_str!("../tests/corpus/writes.jsonl"),
        ];
        let (mut parsed, mut refused) = (0, 0);
        for line in corpus.iter().flat_map(|file| file.lines()) {
            let entry: serde_json::Value = serde_json::from_str(line).expect("corpus line");
            let sql = entry["sql"].as_str().expect("sql");
            let own = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok();
            assert_eq!(parse(sql), own, "{sql}");
            // Spans aside (which statements' equality ignores), the same text comes back.
            if let Some(statements) = &own {
                let printed = |s: &[sqlparser::ast::Statement]| {
                    s.iter().map(ToString::to_string).collect::<Vec<_>>()
                };
                assert_eq!(printed(&parse(sql).expect("parses")), printed(statements));
                parsed += 1;
            } else {
                refused += 1;
            }
        }
        // Both outcomes were compared, many times.
        assert!(
            parsed > 500 && refused > 10,
            "{parsed} parsed, {refused} refused"
        );
    }

    #[test]
    fn a_thread_keeps_its_token_vector_unless_a_long_text_grew_it() {
        let size = std::mem::size_of::<TokenWithSpan>();
        assert!(size * MAX_KEPT_TOKENS <= 64 * 1024, "{size} bytes a token");
        parse("SELECT abalance FROM pgbench_accounts WHERE aid = 1").expect("parses");
        let kept = TOKENS.take();
        assert!(kept.is_empty() && kept.capacity() > 0);
        TOKENS.set(kept);
        // Reused, not reallocated, by the next short text; and kept after a text that does
        // not tokenize.
        let before = TOKENS.with(|t| {
            let v = t.take();
            let at = v.as_ptr();
            t.set(v);
            at
        });
        parse("SELECT 2 FROM t").expect("parses");
        assert!(parse("SELECT 'open").is_none());
        let after = TOKENS.take();
        assert_eq!(after.as_ptr(), before);
        // A long text's buffer is let go.
        let long = format!("SELECT {}c FROM t", "c, ".repeat(400));
        parse(&long).expect("parses");
        assert!(TOKENS.take().capacity() == 0);
    }

    /// A table linked to another (a view that writes through, a child, a partition) makes
    /// writes to it writes to the other: creating or changing the link writes both.
    #[test]
    fn links_that_let_writes_reach_another_table_write_it() {
        let written = |sql: &str| {
            let c = classify(sql, &[]);
            assert!(c.kinds.contains(Kind::Ddl), "{sql}");
            c.writes().iter().map(|t| t.to_string()).collect::<Vec<_>>()
        };
        for (sql, writes) in [
            (
                "CREATE VIEW v AS SELECT * FROM billing.cards WHERE id > 1",
                ["v", "billing.cards"],
            ),
            (
                "CREATE OR REPLACE VIEW v AS SELECT id FROM cards",
                ["v", "cards"],
            ),
            (
                "CREATE VIEW v AS TABLE billing.cards",
                ["v", "billing.cards"],
            ),
            ("CREATE TABLE c () INHERITS (cards)", ["c", "cards"]),
            (
                "CREATE TABLE c PARTITION OF cards FOR VALUES IN (1)",
                ["c", "cards"],
            ),
            (
                "ALTER TABLE p ATTACH PARTITION cards FOR VALUES IN (1)",
                ["p", "cards"],
            ),
            ("ALTER TABLE p DETACH PARTITION cards", ["p", "cards"]),
            ("ALTER TABLE c INHERIT cards", ["c", "cards"]),
            ("ALTER TABLE c NO INHERIT cards", ["c", "cards"]),
        ] {
            assert_eq!(written(sql), writes, "{sql}");
        }
        // A LIKE source's definition is read.
        let c = classify("CREATE TABLE c (LIKE billing.cards)", &[]);
        let reads: Vec<String> = c.reads().iter().map(|t| t.to_string()).collect();
        assert!(reads.contains(&"billing.cards".to_owned()), "{reads:?}");
        // Views PostgreSQL cannot write through read their tables only.
        for sql in [
            "CREATE VIEW v AS SELECT a, count(*) FROM cards GROUP BY a",
            "CREATE VIEW v AS SELECT DISTINCT a FROM cards",
            "CREATE VIEW v AS SELECT * FROM cards JOIN owners USING (id)",
            "CREATE VIEW v AS SELECT * FROM cards UNION ALL SELECT * FROM cards",
            "CREATE VIEW v AS SELECT * FROM cards LIMIT 5",
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM cards",
        ] {
            assert_eq!(written(sql), ["v"], "{sql}");
        }
    }

    /// Grammar sqlparser reports as a call (COALESCE, GREATEST, EXISTS ...) is read-only; in
    /// quotes the same name calls someone's function.
    #[test]
    fn quoted_grammar_names_are_calls_of_functions() {
        let c = classify("SELECT coalesce(1), greatest(1, 2)", &[]);
        assert_eq!(c.kinds, KindSet::from_iter([Kind::Read]));
        assert_ne!(
            crate::lexer::shape("SELECT coalesce(1)").unwrap(),
            crate::lexer::shape("SELECT \"coalesce\"(1)").unwrap(),
            "a cached decision for one never answers the other"
        );
        for sql in [
            "SELECT \"coalesce\"(1)",
            "SELECT \"greatest\"(1)",
            "SELECT \"exists\"(1)",
        ] {
            let c = classify(sql, &[]);
            assert!(c.kinds.contains(Kind::Write), "{sql}: {:?}", c.kinds);
        }
    }

    /// Setting names in quotes or another case are the same settings to PostgreSQL.
    #[test]
    fn quoted_setting_names_are_the_settings_they_name() {
        for (sql, kind) in [
            ("SET \"ROLE\" = alice", Kind::SessionPrivilege),
            (
                "SET \"Session_Authorization\" TO alice",
                Kind::SessionPrivilege,
            ),
            ("SET \"SESSION_REPLICATION_ROLE\" = replica", Kind::Admin),
            ("SET \"LOG_STATEMENT\" = none", Kind::Admin),
        ] {
            let c = classify(sql, &[]);
            assert!(c.kinds.contains(kind), "{sql}: {:?}", c.kinds);
        }
        let c = classify("SET \"SEARCH_PATH\" = billing", &[]);
        assert!(c.search_path.is_some(), "the path change is seen");
    }

    /// SELECT INTO creates its table wherever the top-level SELECT stands.
    #[test]
    fn select_into_writes_in_parentheses_and_set_operations() {
        for (sql, table) in [
            ("SELECT 1 AS a INTO x1 UNION SELECT 2", "x1"),
            ("(SELECT 1 INTO x2)", "x2"),
            ("(SELECT 1 INTO x3) UNION SELECT 2", "x3"),
            ("SELECT 1 INTO x4 EXCEPT SELECT 2", "x4"),
            (
                "WITH c AS (SELECT 1 AS a) SELECT * INTO x5 FROM c UNION SELECT 2",
                "x5",
            ),
            ("EXPLAIN ANALYZE SELECT 1 INTO x6 UNION SELECT 2", "x6"),
        ] {
            let c = classify(sql, &[]);
            assert!(c.kinds.contains(Kind::Write), "{sql}");
            let writes: Vec<String> = c.writes().iter().map(|t| t.to_string()).collect();
            assert_eq!(writes, [table], "{sql}");
        }
    }

    /// `PARTITION BY RANGE|LIST|HASH` names a strategy, not a function; functions in the key
    /// are still calls.
    #[test]
    fn a_partition_strategy_is_no_function_call() {
        for sql in [
            "CREATE TABLE p (id int, t text) PARTITION BY LIST (id)",
            "CREATE TABLE p (id int, t text) PARTITION BY RANGE (id, t)",
            "CREATE TABLE p (id int) PARTITION BY HASH (id)",
        ] {
            let c = classify(sql, &[]);
            assert!(c.functions.is_empty(), "{sql}: {:?}", c.functions);
            assert!(
                c.kinds.contains(Kind::Ddl) && !c.kinds.contains(Kind::Write),
                "{sql}"
            );
        }
        let c = classify(
            "CREATE TABLE p (t text) PARTITION BY RANGE (my_key(t))",
            &[],
        );
        assert_eq!(c.functions, ["my_key"]);
        assert!(c.kinds.contains(Kind::Write));
    }

    #[test]
    fn built_ins_that_read_a_named_table_read_it() {
        for sql in [
            "SELECT table_to_xml('Billing.Invoices', true, false, '')",
            "SELECT pg_catalog.table_to_xml_and_xmlschema('billing.invoices'::regclass, true, false, '')",
            "SELECT table_to_xml(CAST('billing.invoices' AS regclass), true, false, '')",
        ] {
            let c = classify(sql, &[]);
            assert_eq!(c.kinds, KindSet::from_iter([Kind::Read]), "{sql}");
            let reads: Vec<String> = c.reads().iter().map(|t| t.to_string()).collect();
            assert_eq!(reads, ["billing.invoices"], "{sql}");
            assert!(c.functions.iter().any(|f| f.contains("table_to_xml")), "{sql}");
        }
        // Which tables is decided when the call runs: unknown, never a plain read.
        for sql in [
            "SELECT table_to_xml(relname::regclass, true, false, '') FROM pg_class",
            "SELECT table_to_xml(16384, true, false, '')",
            "SELECT schema_to_xml('billing', true, false, '')",
            "SELECT database_to_xml(true, false, '')",
        ] {
            let c = classify(sql, &[]);
            assert!(c.kinds.contains(Kind::Unknown), "{sql}: {c:?}");
            assert!(
                c.reasons.iter().any(|r| r.contains("reads tables")),
                "{sql}"
            );
        }
    }

    #[test]
    fn a_name_means_a_cte_only_where_postgresql_would_see_it() {
        let reads = |sql: &str| -> Vec<String> {
            classify(sql, &[])
                .reads()
                .iter()
                .map(|t| t.to_string())
                .collect()
        };
        // A CTE's own body, and CTEs before a later one, see the table of that name.
        assert_eq!(
            reads("WITH customers AS (SELECT * FROM customers) SELECT * FROM customers"),
            ["customers"]
        );
        assert_eq!(
            reads("WITH x AS (SELECT * FROM customers), customers AS (SELECT 1) SELECT * FROM x"),
            ["customers"]
        );
        // A WITH clause's names end with its query.
        assert_eq!(
            reads(
                "SELECT * FROM (WITH customers AS (SELECT 1) SELECT * FROM customers) a, customers"
            ),
            ["customers"]
        );
        // Where the CTE is visible, the name is the CTE: no table is read.
        assert!(reads("WITH customers AS (SELECT 1) SELECT * FROM customers").is_empty());
        assert!(reads("WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b").is_empty());
        assert!(reads(
            "WITH a AS (SELECT 1) SELECT * FROM (WITH b AS (SELECT * FROM a) SELECT * FROM b) s"
        )
        .is_empty());
        assert!(reads(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) \
             SELECT * FROM r"
        )
        .is_empty());
        // RECURSIVE lets a CTE see the ones after it.
        assert!(
            reads("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a")
                .is_empty()
        );
        // A long chain, each CTE reading the one before it: only the first reads a table.
        let chain: Vec<String> = (1..300)
            .map(|i| format!("c{i} AS (SELECT * FROM c{})", i - 1))
            .collect();
        let sql = format!(
            "WITH c0 AS (SELECT * FROM c1), {} SELECT * FROM c299",
            chain.join(", ")
        );
        assert_eq!(reads(&sql), ["c1"]);
        // `TABLE name` is a read wherever it stands (sqlparser does not report it as a
        // relation), and means a CTE where one is visible.
        for sql in [
            "SELECT 1 UNION TABLE customers",
            "SELECT * FROM t WHERE a IN (TABLE customers) AND false",
            "SELECT ARRAY(TABLE customers)",
            "COPY (TABLE customers) TO STDOUT",
            "DECLARE c CURSOR FOR TABLE customers",
            "WITH c AS MATERIALIZED (TABLE customers) SELECT * FROM c",
            "SELECT 1 UNION (TABLE customers EXCEPT TABLE customers)",
        ] {
            assert!(reads(sql).contains(&"customers".to_owned()), "{sql}");
        }
        assert_eq!(reads("TABLE \"Customers\""), ["Customers"]);
        assert!(reads("WITH customers AS (SELECT 1) TABLE customers").is_empty());
        // A schema-qualified name is always the table.
        assert_eq!(
            reads("WITH customers AS (SELECT 1) SELECT * FROM public.customers"),
            ["public.customers"]
        );
    }

    #[test]
    fn functions_called_lateral_in_from_are_checked_like_any_call() {
        for sql in [
            "SELECT * FROM t, LATERAL nextval('s') AS n",
            "SELECT * FROM t CROSS JOIN LATERAL app.fill(t.id)",
            "SELECT * FROM t JOIN LATERAL setval('s', t.id) v ON true",
        ] {
            let c = classify(sql, &[]);
            assert!(c.kinds.contains(Kind::Write), "{sql}: {c:?}");
        }
        let c = classify(
            "SELECT * FROM t LEFT JOIN LATERAL generate_series(1, t.x) g ON true",
            &[],
        );
        assert_eq!(c.kinds, KindSet::from_iter([Kind::Read]));
        assert_eq!(c.functions, ["generate_series"]);
        // A plain EXPLAIN plans the call, it does not make it.
        let c = classify("EXPLAIN SELECT * FROM t, LATERAL nextval('s')", &[]);
        assert_eq!(c.kinds, KindSet::from_iter([Kind::Read]), "{c:?}");
    }

    #[test]
    fn operators_not_postgresqls_own_count_as_writes() {
        for sql in [
            "SELECT 1 ### 2",
            "SELECT a FROM t WHERE a OPERATOR(app.===) 1",
            "SELECT 1 OPERATOR(public.+) 2",
            "SELECT a FROM t ORDER BY a USING ###",
            "SELECT array_agg(a ORDER BY a USING OPERATOR(app.<)) FROM t",
        ] {
            let c = classify(sql, &[]);
            assert!(c.kinds.contains(Kind::Write), "{sql}: {c:?}");
        }
        for sql in [
            "SELECT 1 + 2, 'a' || 'b', '{}'::jsonb ->> 'k', 'x' ~~* 'X'",
            "SELECT 1 OPERATOR(pg_catalog.+) 2",
            "SELECT a FROM t ORDER BY a USING <",
            "SELECT a FROM t ORDER BY a USING OPERATOR(pg_catalog.>)",
            "SELECT box '((0,0),(1,1))' &<| box '((0,0),(2,2))'",
        ] {
            let c = classify(sql, &[]);
            assert_eq!(c.kinds, KindSet::from_iter([Kind::Read]), "{sql}: {c:?}");
        }
    }

    #[test]
    fn the_schemas_a_text_puts_on_the_search_path_are_reported() {
        let listed = |list: &[&str]| {
            Some(SearchPath::Schemas(
                list.iter().map(|s| s.to_string()).collect(),
            ))
        };
        for (sql, expected) in [
            ("SET search_path = billing", listed(&["billing"])),
            (
                "SET LOCAL search_path TO \"$user\", \"Sales\", public",
                listed(&["$user", "Sales", "public"]),
            ),
            ("SET search_path = 'hr, public'", listed(&["hr", "public"])),
            (
                "SET search_path = app, pg_catalog",
                listed(&["app", "pg_catalog"]),
            ),
            (
                "SELECT set_config('search_path', 'billing', false); SET search_path = hr",
                listed(&["billing", "hr"]),
            ),
            (
                "SELECT set_config('search_path', current_setting('x'), false)",
                Some(SearchPath::Unknown),
            ),
            (
                "DO $$ BEGIN PERFORM set_config('search_path', 'billing', false); END $$",
                Some(SearchPath::Unknown),
            ),
            (
                "SELECT a FROM t WHERE a BETWEEN SYMMETRIC 1 AND 2; SET search_path = x",
                Some(SearchPath::Unknown),
            ),
            ("SHOW search_path", None),
            ("RESET search_path", None),
            ("SELECT current_setting('search_path')", None),
            ("SELECT * FROM t", None),
        ] {
            assert_eq!(classify(sql, &[]).search_path, expected, "{sql}");
        }
    }

    #[test]
    fn a_search_path_that_puts_schemas_before_pg_catalog_is_admin() {
        for sql in [
            "SET search_path = public, pg_catalog",
            "SET LOCAL search_path TO \"$user\", app, pg_catalog",
            "SET search_path = 'app, pg_catalog'",
            "SELECT set_config('search_path', 'app,pg_catalog', false)",
            "SELECT pg_catalog.set_config('search_path', current_setting('x'), false)",
        ] {
            let c = classify(sql, &[]);
            assert!(c.kinds.contains(Kind::Admin), "{sql}: {c:?}");
        }
        for sql in [
            "SET search_path = public",
            "SET search_path TO \"$user\", public",
            "SET search_path = pg_catalog, public",
            "SET search_path = pg_temp, pg_catalog, app",
            "SET search_path TO DEFAULT",
            "SELECT pg_catalog.set_config('search_path', '', false)",
            "SELECT set_config('search_path', 'app, public', false)",
        ] {
            let c = classify(sql, &[]);
            assert!(!c.kinds.contains(Kind::Admin), "{sql}: {c:?}");
        }
    }

    #[test]
    fn pinned_settings_are_checked_unless_the_text_only_reads() {
        let declared = ["set_config".to_owned()];
        for sql in [
            "SET standard_conforming_strings = off",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "SELECT 1; SET standard_conforming_strings = off",
        ] {
            assert!(classify(sql, &[]).pinned_violation.is_some(), "{sql}");
            // Even with set_config declared read-only by a DBA.
            assert!(classify(sql, &declared).pinned_violation.is_some(), "{sql}");
        }
        let read = classify("SELECT * FROM pg_settings WHERE name = 'names'", &[]);
        assert!(read.pinned_violation.is_none());
    }
}

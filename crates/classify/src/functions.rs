//! Which functions are known not to change anything. Everything else a statement calls makes
//! it a write: side effects hide in functions (nextval, pg_terminate_backend, dblink, ...).

use std::collections::HashSet;
use std::sync::OnceLock;

use crate::kind::Kind;

/// PostgreSQL's built-in functions declared immutable or stable (from `pg_proc`), which by
/// contract do not modify the database.
const DECLARED_READ_ONLY: &str = include_str!("read_only_functions.txt");

/// Built-ins declared volatile that only read or only affect the calling session harmlessly.
const VOLATILE_BUT_READ_ONLY: &[&str] = &[
    "clock_timestamp",
    "currval",
    "lastval",
    "gen_random_uuid",
    "random",
    "timeofday",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    // Release advisory locks this session holds, and only those (asyncpg's pool runs
    // `SELECT pg_advisory_unlock_all()` each time it takes a connection back). Taking one
    // stays a write: it can stall another session's work.
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "current_query",
    "pg_blocking_pids",
    "pg_safe_snapshot_blocking_pids",
    "pg_is_in_recovery",
    "pg_is_wal_replay_paused",
    "pg_get_wal_replay_pause_state",
    "pg_jit_available",
    "pg_last_committed_xact",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_lock_status",
    "pg_notification_queue_usage",
    "pg_partition_ancestors",
    "pg_partition_tree",
    "pg_prepared_xact",
    "pg_relation_size",
    "pg_table_size",
    "pg_indexes_size",
    "pg_total_relation_size",
    "pg_database_size",
    "pg_tablespace_size",
    "pg_sequence_last_value",
    "pg_collation_actual_version",
    "pg_database_collation_actual_version",
    "pg_stat_have_stats",
    "pg_stat_clear_snapshot",
    "pg_xact_commit_timestamp",
    "pg_xact_commit_timestamp_origin",
    "pg_xact_status",
    "txid_status",
    "pg_get_backend_memory_contexts",
    "pg_get_shmem_allocations",
    "pg_get_multixact_members",
    "pg_control_checkpoint",
    "pg_control_init",
    "pg_control_recovery",
    "pg_control_system",
    "pg_stat_get_xact_blocks_fetched",
    "pg_stat_get_xact_blocks_hit",
    "pg_stat_get_xact_function_calls",
    "pg_stat_get_xact_function_self_time",
    "pg_stat_get_xact_function_total_time",
    "pg_stat_get_xact_numscans",
    "pg_stat_get_xact_tuples_deleted",
    "pg_stat_get_xact_tuples_fetched",
    "pg_stat_get_xact_tuples_hot_updated",
    "pg_stat_get_xact_tuples_inserted",
    "pg_stat_get_xact_tuples_returned",
    "pg_stat_get_xact_tuples_updated",
];

/// Declared stable but with an effect worth a step-up, or dangerous whatever the declaration.
const NEVER_READ_ONLY: &[&str] = &[
    // `ts_rewrite(tsquery, text)` runs the query in its text (the three-tsquery form is pure,
    // but only the name is seen here).
    "ts_rewrite",
    "set_config",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
];

/// SQL expressions sqlparser reports as function calls although PostgreSQL has no pg_proc
/// entry for them (they are grammar).
const GRAMMAR_FUNCTIONS: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_catalog",
    "current_schema",
    "system_user",
    "row",
    "array",
    "grouping",
    "exists",
    "xmlelement",
    "xmlforest",
    "xmlconcat",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmlexists",
    "json_object",
    "json_array",
    "json_objectagg",
    "json_arrayagg",
    "json_exists",
    "json_query",
    "json_value",
    "json",
    "json_scalar",
    "json_serialize",
    "collation",
    "normalize",
    "any",
    "all",
    "some",
];

/// Whether `name` (folded) is grammar that sqlparser reports as a call: written in quotes it
/// is no longer grammar but a call of a function of that name (someone's own).
pub(crate) fn is_grammar(name: &str) -> bool {
    GRAMMAR_FUNCTIONS.contains(&name)
}

fn read_only_set() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        DECLARED_READ_ONLY
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .chain(VOLATILE_BUT_READ_ONLY.iter().copied())
            .chain(GRAMMAR_FUNCTIONS.iter().copied())
            .filter(|name| !NEVER_READ_ONLY.contains(name) && !name.starts_with("lo_"))
            .collect()
    })
}

/// Which tables a built-in reads the rows of, when they are named by its arguments rather than
/// in a FROM list (a sensitive table read this way must still meet its rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TablesRead {
    /// The table named by the first argument (a `regclass`).
    FirstArgument,
    /// Every table of a schema, or of the database.
    Many,
}

/// The [`TablesRead`] of a call of `name` (folded, `pg_catalog.` kept when written), if it
/// reads table rows named by its arguments.
pub(crate) fn tables_read_by(name: &str) -> Option<TablesRead> {
    let bare = name.strip_prefix("pg_catalog.").unwrap_or(name);
    match bare {
        "table_to_xml" | "table_to_xml_and_xmlschema" => Some(TablesRead::FirstArgument),
        "schema_to_xml"
        | "schema_to_xml_and_xmlschema"
        | "database_to_xml"
        | "database_to_xml_and_xmlschema" => Some(TablesRead::Many),
        _ => None,
    }
}

/// What a call of a sequence function does to the sequence its first argument names (folded
/// name, `pg_catalog.` kept when written): advances or sets it, or reads it.
pub(crate) fn sequence_access(name: &str) -> Option<Kind> {
    match name.strip_prefix("pg_catalog.").unwrap_or(name) {
        "nextval" | "setval" => Some(Kind::Write),
        "currval" | "pg_sequence_last_value" => Some(Kind::Read),
        _ => None,
    }
}

/// PostgreSQL's own operator names (`pg_operator` in `pg_catalog`). None of their functions is
/// volatile; any other operator is someone's function, which may write.
const BUILT_IN_OPERATORS: &[&str] = &[
    "!!", "!~", "!~*", "!~~", "!~~*", "#", "##", "#-", "#>", "#>>", "%", "&", "&&", "&<", "&<|",
    "&>", "*", "*<", "*<=", "*<>", "*=", "*>", "*>=", "+", "-", "->", "->>", "-|-", "/", "<",
    "<->", "<<", "<<=", "<<|", "<=", "<>", "<@", "<^", "=", ">", ">=", ">>", ">>=", ">^", "?",
    "?#", "?&", "?-", "?-|", "?|", "?||", "@", "@-@", "@>", "@?", "@@", "@@@", "^", "^@", "|",
    "|&>", "|/", "|>>", "||", "||/", "~", "~*", "~<=~", "~<~", "~=", "~>=~", "~>~", "~~", "~~*",
    // Spellings the grammar turns into built-in operators.
    "!=", "!",
];

/// Whether an operator, written `name` or `OPERATOR(schema.name)`, is PostgreSQL's own.
pub(crate) fn is_built_in_operator(schema: Option<&str>, name: &str) -> bool {
    matches!(schema, None | Some("pg_catalog")) && BUILT_IN_OPERATORS.contains(&name)
}

/// information_schema's helpers (pgJDBC's metadata queries call `_pg_expandarray`).
const INFORMATION_SCHEMA_READ_ONLY: &[&str] = &[
    "_pg_expandarray",
    "_pg_index_position",
    "_pg_truetypid",
    "_pg_truetypmod",
    "_pg_char_max_length",
    "_pg_char_octet_length",
    "_pg_numeric_precision",
    "_pg_numeric_precision_radix",
    "_pg_numeric_scale",
    "_pg_datetime_precision",
    "_pg_interval_type",
];

/// Whether a call of `name` (folded, possibly schema-qualified) is known to change nothing.
/// `extra` lists functions a DBA declared read-only (`schema.name` or `name`).
pub(crate) fn is_read_only(name: &str, extra: &[String]) -> bool {
    if extra.iter().any(|e| e == name) {
        return true;
    }
    let bare = match name.rsplit_once('.') {
        Some(("pg_catalog", bare)) => bare,
        Some(("information_schema", bare)) => return INFORMATION_SCHEMA_READ_ONLY.contains(&bare),
        Some(_) => return false,
        None => name,
    };
    read_only_set().contains(bare)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_common_reads_and_side_effects() {
        for name in [
            "count",
            "now",
            "pg_catalog.format_type",
            "coalesce",
            "pg_get_expr",
            "pg_sleep",
            "md5",
            "pg_advisory_unlock_all",
            "pg_catalog.pg_advisory_unlock",
            // Assigns the transaction an id and changes no data; DataGrip's introspection
            // calls it on every refresh.
            "pg_catalog.txid_current",
            "pg_current_xact_id",
        ] {
            assert!(is_read_only(name, &[]), "{name}");
        }
        for name in [
            "nextval",
            "setval",
            "pg_terminate_backend",
            "set_config",
            "pg_catalog.set_config",
            "lo_unlink",
            "lo_get",
            "dblink_exec",
            "pg_reload_conf",
            "pg_read_file",
            "query_to_xml",
            "ts_rewrite",
            "myschema.count",
            "do_stuff",
            "pg_advisory_lock",
            "pg_try_advisory_xact_lock",
        ] {
            assert!(!is_read_only(name, &[]), "{name}");
        }
        assert!(is_read_only("app.safe", &["app.safe".to_owned()]));
    }

    #[test]
    fn knows_which_built_ins_read_tables_named_by_argument() {
        assert_eq!(
            tables_read_by("table_to_xml"),
            Some(TablesRead::FirstArgument)
        );
        assert_eq!(
            tables_read_by("pg_catalog.database_to_xml"),
            Some(TablesRead::Many)
        );
        assert_eq!(
            tables_read_by("schema_to_xml_and_xmlschema"),
            Some(TablesRead::Many)
        );
        // A user's function of the same name is not PostgreSQL's (and not read-only).
        assert_eq!(tables_read_by("app.table_to_xml"), None);
        assert_eq!(tables_read_by("table_to_xmlschema"), None);
    }

    #[test]
    fn knows_postgresqls_own_operators() {
        for op in ["+", "||", "->>", "@>", "~~*", "<->", "?|"] {
            assert!(is_built_in_operator(None, op), "{op}");
            assert!(is_built_in_operator(Some("pg_catalog"), op), "{op}");
        }
        assert!(!is_built_in_operator(None, "###"));
        assert!(!is_built_in_operator(Some("public"), "+"));
    }
}

//! Classification of parsed statements: a visitor over sqlparser's AST that records, for every
//! statement node (nested ones included: data-modifying CTEs, EXPLAIN ANALYZE, PREPARE bodies),
//! what it does and to which tables, plus every function it calls.

use std::collections::HashSet;
use std::fmt;
use std::ops::ControlFlow;

use sqlparser::ast::{
    AlterTable, AlterTableOperation, ArrayElemTypeDef, BinaryOperator, CascadeOption, ColumnDef,
    ColumnOption, CommentObject, CopySource, CopyTarget, CreateTable, CreateTableLikeDefaults,
    CreateTableLikeKind, DataType, DropBehavior, Expr, ForeignKeyConstraint, FromTable,
    GrantObjects, GroupByExpr, LockTableMode, ObjectName, ObjectNamePart, ObjectType, OrderByExpr,
    OrderBySort, Query, Set, SetExpr, SetSessionAuthorizationParamKind, Statement, TableConstraint,
    TableFactor, TableObject, UtilityOption, Visit, Visitor,
};

use crate::functions::{self, TablesRead};
use crate::kind::Kind;
use crate::search_path::{self, SearchPath};
use crate::table::{fold, function_name, TableName};
use crate::Facet;

/// What the visitor found in one top-level statement.
#[derive(Default)]
pub(crate) struct Findings {
    pub facets: Vec<Facet>,
    /// Tables read (names that mean a CTE left out), as facets: kept apart from `facets`, and
    /// facets already so that the common read-only text's list becomes the facet list whole.
    pub relations: Vec<Facet>,
    pub functions: Vec<String>,
    pub reasons: Vec<String>,
    /// Schemas the statement puts on the search_path.
    pub search_path: Option<SearchPath>,
    /// The SQL-level prepared statement a PREPARE creates (folded name).
    pub prepares: Option<String>,
    /// The SQL-level prepared statement an EXECUTE with constant arguments runs.
    pub executes: Option<String>,
}

pub(crate) fn analyze(statement: &Statement) -> Findings {
    let mut visitor = Collector::default();
    let _ = statement.visit(&mut visitor);
    visitor.findings
}

fn read(table: TableName) -> Facet {
    Facet {
        kind: Kind::Read,
        table: Some(table),
    }
}

/// The CTEs of one WITH clause, and which of them a name read at this point can mean.
struct CteScope {
    /// The query the WITH clause belongs to.
    query: *const Query,
    /// Folded names, in the clause's order, with the query each defines.
    ctes: Vec<(String, *const Query)>,
    /// The CTE whose body the visitor reaches next (it visits them in order).
    next: usize,
    recursive: bool,
    /// Names visible now: those of the CTEs before the one being defined (all of them in the
    /// query's body, and everywhere under RECURSIVE). A CTE's body cannot see itself or later
    /// CTEs, so a name there means the table.
    visible: HashSet<String>,
}

#[derive(Default)]
struct Collector {
    findings: Findings,
    /// WITH clauses around the node being visited, innermost last.
    cte_scopes: Vec<CteScope>,
    /// Inside a plain EXPLAIN: statements are planned, not run.
    explain_depth: usize,
    /// The next relation visited is a table function's name.
    next_relation_is_function: bool,
    /// `PARTITION BY RANGE|LIST|HASH (...)` of the CREATE TABLE being visited: sqlparser reads
    /// the strategy as a call, but it names no function (and PostgreSQL runs only IMMUTABLE
    /// functions in a partition key, which are still recorded from its arguments).
    partition_strategy: Option<*const Expr>,
    /// Per query being visited, innermost last: the setting its rows are known to name when
    /// it reads `pg_settings WHERE name = '...'` (pg_dump's `SELECT set_config(name, ...)
    /// FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'`).
    settings_rows: Vec<Option<String>>,
}

impl Collector {
    fn add(&mut self, kind: Kind, table: Option<&ObjectName>, reason: Option<&str>) {
        self.add_facet(kind, table.and_then(TableName::from_object_name), reason);
    }

    fn add_facet(&mut self, kind: Kind, table: Option<TableName>, reason: Option<&str>) {
        if self.explain_depth > 0 {
            // Planned only: reading the catalog about it is all that happens.
            if let Some(table) = table {
                self.findings.relations.push(read(table));
            }
            return;
        }
        self.findings.facets.push(Facet { kind, table });
        if let Some(reason) = reason {
            self.findings.reasons.push(reason.to_owned());
        }
    }

    fn classify(&mut self, statement: &Statement) {
        use Statement as S;
        match statement {
            S::Query(query) => self.query(query),
            S::Insert(insert) => {
                let target = match &insert.table {
                    TableObject::TableName(name) => Some(name),
                    _ => None,
                };
                self.add(Kind::Write, target, None);
            }
            S::Update(update) => {
                let target = match &update.table.relation {
                    TableFactor::Table { name, .. } => Some(name),
                    _ => None,
                };
                self.add(Kind::Write, target, None);
            }
            S::Delete(delete) => {
                let from = match &delete.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                let target = from.first().and_then(|t| match &t.relation {
                    TableFactor::Table { name, .. } => Some(name),
                    _ => None,
                });
                self.add(Kind::Write, target, None);
            }
            S::Merge(merge) => {
                let target = match &merge.table {
                    TableFactor::Table { name, .. } => Some(name),
                    _ => None,
                };
                self.add(Kind::Write, target, None);
            }
            S::Truncate(truncate) => {
                for target in &truncate.table_names {
                    self.add(Kind::Write, Some(&target.name), Some("TRUNCATE"));
                }
                if truncate.cascade == Some(CascadeOption::Cascade) {
                    // Which tables reference these is in the catalog, not in the text.
                    self.add(
                        Kind::Write,
                        None,
                        Some("TRUNCATE ... CASCADE also empties every table that references them"),
                    );
                }
            }
            S::Copy {
                source, to, target, ..
            } => {
                match (source, to) {
                    (CopySource::Table { table_name, .. }, false) => {
                        self.add(Kind::Write, Some(table_name), Some("COPY FROM"))
                    }
                    (CopySource::Table { table_name, .. }, true) => {
                        self.add(Kind::Read, Some(table_name), None)
                    }
                    (CopySource::Query(query), _) => self.query(query),
                }
                match target {
                    CopyTarget::File { .. } => {
                        self.add(Kind::Admin, None, Some("COPY with a server file"))
                    }
                    CopyTarget::Program { .. } => {
                        self.add(Kind::Admin, None, Some("COPY with a server program"))
                    }
                    CopyTarget::Stdin | CopyTarget::Stdout => {}
                }
            }
            S::Lock(lock) => {
                // ACCESS SHARE is the lock every SELECT takes (pg_dump takes it on each table
                // it dumps); any stronger one blocks writers or readers.
                let reads = matches!(lock.lock_mode, Some(LockTableMode::AccessShare));
                for target in &lock.tables {
                    match reads {
                        true => self.add(Kind::Read, Some(&target.name), None),
                        false => self.add(Kind::Write, Some(&target.name), Some("LOCK")),
                    }
                }
            }
            S::RefreshMaterializedView(refresh) => self.add(
                Kind::Write,
                Some(&refresh.name),
                Some("REFRESH MATERIALIZED VIEW"),
            ),
            S::Call(function) => {
                self.add(Kind::Write, None, Some("CALL of a procedure"));
                self.findings.functions.push(function_name(&function.name));
            }
            S::Explain {
                analyze, options, ..
            } => {
                self.add(Kind::Read, None, None);
                if !explain_runs(*analyze, options.as_deref()) {
                    self.explain_depth += 1;
                }
            }
            S::ExplainTable { table_name, .. } => self.add(Kind::Read, Some(table_name), None),
            S::CreateTable(create) => self.create_table(create),
            S::CreateView(view) => {
                self.add(Kind::Ddl, Some(&view.name), None);
                if view.materialized {
                    self.add(
                        Kind::Write,
                        Some(&view.name),
                        Some("CREATE MATERIALIZED VIEW"),
                    );
                } else if let Some(base) = written_through(&view.query) {
                    let reason = format!(
                        "writes to view {} reach {base} (an automatically updatable view)",
                        view.name
                    );
                    self.add_facet(Kind::Write, Some(base), Some(&reason));
                }
            }
            S::CreateIndex(index) => self.add(Kind::Ddl, Some(&index.table_name), None),
            S::AlterTable(alter) => {
                self.add(Kind::Ddl, Some(&alter.name), None);
                self.alter_table_links(alter);
            }
            S::Drop {
                object_type,
                names,
                cascade,
                ..
            } => match object_type {
                ObjectType::Role | ObjectType::User | ObjectType::Group => {
                    self.add(Kind::Dcl, None, None)
                }
                ObjectType::Table
                | ObjectType::View
                | ObjectType::MaterializedView
                | ObjectType::ForeignTable
                | ObjectType::Sequence
                | ObjectType::Index => {
                    // Sequences and indexes are relations too, named in the tables' schemas.
                    for name in names {
                        self.add(Kind::Ddl, Some(name), None);
                    }
                    if *cascade {
                        self.dependents_dropped();
                    }
                }
                ObjectType::Schema => {
                    for schema in names {
                        self.add_facet(Kind::Ddl, TableName::every_table_in(schema), None);
                    }
                    if *cascade {
                        self.dependents_dropped();
                    }
                }
                _ => self.add(Kind::Ddl, None, None),
            },
            S::AlterSchema(alter) => {
                self.add_facet(Kind::Ddl, TableName::every_table_in(&alter.name), None)
            }
            S::AlterIndex { name, .. } => self.add(Kind::Ddl, Some(name), None),
            S::CreateTrigger(trigger) => {
                self.add(Kind::Ddl, Some(&trigger.table_name), None);
                // The function it attaches runs at every firing: a call, made by later writes.
                if let Some(body) = &trigger.exec_body {
                    self.findings
                        .functions
                        .push(function_name(&body.func_desc.name));
                }
                // A constraint trigger's FROM table: its changes fire the trigger.
                if let Some(referenced) = &trigger.referenced_table_name {
                    self.add(Kind::Ddl, Some(referenced), None);
                }
            }
            S::DropTrigger(trigger) => self.add(Kind::Ddl, trigger.table_name.as_ref(), None),
            // Objects that live on a table and change what reading or writing it does.
            S::AlterTrigger(trigger) => self.add(Kind::Ddl, Some(&trigger.table_name), None),
            S::CreatePolicy(policy) => self.add(Kind::Ddl, Some(&policy.table_name), None),
            S::AlterPolicy(policy) => self.add(Kind::Ddl, Some(&policy.table_name), None),
            S::DropPolicy(policy) => self.add(Kind::Ddl, Some(&policy.table_name), None),
            S::CreateRule(rule) => self.add(Kind::Ddl, Some(&rule.table_name), None),
            S::DropRule(rule) => self.add(Kind::Ddl, Some(&rule.table_name), None),
            S::AlterView(view) => self.add(Kind::Ddl, Some(&view.name), None),
            S::Comment {
                object_type,
                object_name,
                ..
            } => self.comment(*object_type, object_name),
            S::Grant(grant) => self.privileges_on(grant.objects.as_ref()),
            S::Revoke(revoke) => self.privileges_on(revoke.objects.as_ref()),
            S::CreateRole(_) | S::AlterRole { .. } => self.add(Kind::Dcl, None, None),
            S::GrantRole(_) | S::RevokeRole(_) | S::AlterDefaultPrivileges(_) => {
                self.add(Kind::Dcl, None, None)
            }
            S::Set(set) => self.set(set),
            S::Reset(_) => self.add(Kind::Utility, None, None),
            S::StartTransaction { .. }
            | S::Commit { .. }
            | S::Rollback { .. }
            | S::Savepoint { .. }
            | S::ReleaseSavepoint { .. } => self.add(Kind::Transaction, None, None),
            S::Declare { .. } | S::Fetch { .. } | S::Close { .. } => {
                self.add(Kind::Read, None, None)
            }
            S::ShowVariable { .. } | S::ShowVariables { .. } | S::ShowStatus { .. } => {
                self.add(Kind::Utility, None, None)
            }
            S::Discard { .. } | S::Deallocate { .. } | S::LISTEN { .. } | S::UNLISTEN { .. } => {
                self.add(Kind::Utility, None, None)
            }
            S::Prepare { name, .. } => {
                self.add(Kind::Utility, None, None);
                self.findings.prepares = Some(fold(name));
            }
            S::Execute {
                name, parameters, ..
            } => {
                self.add(
                    Kind::Write,
                    None,
                    Some(
                        "EXECUTE of an SQL-level prepared statement (its text is not visible here)",
                    ),
                );
                // With constant arguments it runs the prepared text and nothing of its own.
                if parameters.iter().all(is_constant) {
                    self.findings.executes =
                        name.as_ref().and_then(|name| match name.0.as_slice() {
                            [ObjectNamePart::Identifier(ident)] => Some(fold(ident)),
                            _ => None,
                        });
                }
            }
            S::NOTIFY { .. } => self.add(Kind::Write, None, Some("NOTIFY")),
            S::Analyze(_) => self.add(Kind::Admin, None, Some("maintenance")),
            S::Vacuum(vacuum) => {
                self.add(Kind::Admin, vacuum.table_name.as_ref(), Some("maintenance"))
            }
            S::Load { .. } | S::Kill { .. } => self.add(Kind::Admin, None, None),
            other => self.by_keyword(other),
        }
    }

    /// Statements matched by their leading keyword (the many CREATE/ALTER/DROP variants).
    fn by_keyword(&mut self, statement: &Statement) {
        let text = statement.to_string();
        let first = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let second = text
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_ascii_uppercase();
        let third = text
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_ascii_uppercase();
        let kind = match (first.as_str(), second.as_str()) {
            ("CREATE" | "ALTER" | "DROP", "USER") if third == "MAPPING" => Kind::Ddl,
            ("CREATE" | "ALTER" | "DROP", "USER" | "ROLE" | "GROUP") => Kind::Dcl,
            ("CREATE" | "ALTER" | "DROP", "PUBLICATION" | "SUBSCRIPTION") => {
                self.add(Kind::Admin, None, Some("logical replication"));
                Kind::Ddl
            }
            ("CREATE" | "ALTER" | "DROP" | "COMMENT" | "SECURITY", _) => Kind::Ddl,
            ("GRANT" | "REVOKE" | "DENY", _) => Kind::Dcl,
            _ => Kind::Unknown,
        };
        self.add(kind, None, None);
    }

    fn set(&mut self, set: &Set) {
        match set {
            // NONE / DEFAULT only go back to the login user's own privileges.
            Set::SetRole {
                role_name: None, ..
            } => self.add(Kind::Utility, None, None),
            Set::SetSessionAuthorization(param)
                if matches!(param.kind, SetSessionAuthorizationParamKind::Default) =>
            {
                self.add(Kind::Utility, None, None)
            }
            Set::SetRole { .. } | Set::SetSessionAuthorization(_) => {
                self.add(Kind::SessionPrivilege, None, None)
            }
            Set::SetTransaction { .. } => self.add(Kind::Transaction, None, None),
            Set::SingleAssignment {
                variable, values, ..
            } => {
                // PostgreSQL matches setting names whatever their case, even quoted ("ROLE").
                let name = function_name(variable).to_ascii_lowercase();
                // `SET role = DEFAULT`: back to the login user's own privileges.
                let to_default = matches!(values.as_slice(), [Expr::Identifier(word)]
                    if word.quote_style.is_none() && word.value.eq_ignore_ascii_case("default"));
                if name == "search_path" {
                    self.search_path(search_path_entries(values));
                } else if to_default && (name == "role" || name == "session_authorization") {
                    self.add(Kind::Utility, None, None);
                } else {
                    self.set_variable(&name);
                }
            }
            _ => self.add(Kind::Utility, None, None),
        }
    }

    /// A new search_path (`None`: not known until it runs). Listing a schema before
    /// `pg_catalog` lets that schema's functions and operators take the built-ins' names, so
    /// the names this classifier trusts could run someone's code: admin, not housekeeping.
    fn search_path(&mut self, entries: Option<Vec<String>>) {
        if entries.as_deref().is_none_or(hides_the_catalog) {
            self.add(
                Kind::Admin,
                None,
                Some("a search_path that may put schemas before pg_catalog, where built-in names could mean other functions"),
            );
        } else {
            self.add(Kind::Utility, None, None);
        }
        entries
            .map_or(SearchPath::Unknown, SearchPath::Schemas)
            .add_to(&mut self.findings.search_path);
    }

    /// `SET name = ...` (or `set_config('name', ...)`), by what the setting governs.
    fn set_variable(&mut self, name: &str) {
        match name {
            "role" | "session_authorization" | "session authorization" => {
                self.add(Kind::SessionPrivilege, None, None)
            }
            name if is_admin_setting(name) => self.add(
                Kind::Admin,
                None,
                Some("a setting that turns off triggers, safety checks or the server's audit logging and monitoring, or loads libraries"),
            ),
            _ => self.add(Kind::Utility, None, None),
        }
    }

    fn query(&mut self, query: &Query) {
        self.add(Kind::Read, None, None);
        self.select_into(&query.body);
    }

    /// `SELECT ... INTO t` creates and fills `t`, wherever the top level's SELECT stands: alone,
    /// in parentheses, or in a UNION, INTERSECT or EXCEPT.
    fn select_into(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Select(select) => {
                let Some(into) = &select.into else { return };
                let target = into.targets.iter().find_map(|t| match t {
                    Expr::Identifier(ident) => Some(ObjectName::from(vec![ident.clone()])),
                    Expr::CompoundIdentifier(parts) => Some(ObjectName::from(parts.clone())),
                    _ => None,
                });
                self.add(
                    Kind::Write,
                    target.as_ref(),
                    Some("SELECT INTO creates a table"),
                );
                self.add(Kind::Ddl, target.as_ref(), None);
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.select_into(left);
                self.select_into(right);
            }
            SetExpr::Query(inner) => self.select_into(&inner.body),
            _ => {}
        }
    }
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        self.classify(statement);
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if let Statement::Explain {
            analyze, options, ..
        } = statement
        {
            if !explain_runs(*analyze, options.as_deref()) {
                self.explain_depth -= 1;
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let setting = self.setting_of_rows(query);
        self.settings_rows.push(setting);
        if let Some(with) = &query.with {
            let ctes: Vec<(String, *const Query)> = with
                .cte_tables
                .iter()
                .map(|cte| (fold(&cte.alias.name), &*cte.query as *const Query))
                .collect();
            let visible = match with.recursive {
                true => ctes.iter().map(|(name, _)| name.clone()).collect(),
                false => HashSet::new(),
            };
            self.cte_scopes.push(CteScope {
                query,
                ctes,
                next: 0,
                recursive: with.recursive,
                visible,
            });
        }
        // Any SELECT, nested or not, that locks rows.
        if !query.locks.is_empty() {
            self.add(
                Kind::Write,
                None,
                Some("SELECT ... FOR UPDATE/SHARE locks rows"),
            );
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table { args: Some(_), .. } => self.next_relation_is_function = true,
            // `LATERAL f(...)`: sqlparser gives the call its own variant, whose name is not
            // visited as a relation, so it is recorded here.
            TableFactor::Function { name, .. } if self.explain_depth == 0 => {
                self.findings.functions.push(function_name(name));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.settings_rows.pop();
        // `TABLE name` in the body, where the query's own CTEs are all visible.
        self.table_commands(&query.body);
        if self
            .cte_scopes
            .last()
            .is_some_and(|scope| std::ptr::eq(scope.query, query))
        {
            self.cte_scopes.pop();
        }
        // After a CTE's body, the next CTE (or the query's body) sees it too.
        if let Some(scope) = self.cte_scopes.last_mut() {
            if let Some((name, _)) = scope
                .ctes
                .get(scope.next)
                .filter(|(_, body)| std::ptr::eq(*body, query))
            {
                if !scope.recursive {
                    scope.visible.insert(name.clone());
                }
                scope.next += 1;
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_order_by_expr(&mut self, order_by: &OrderByExpr) -> ControlFlow<()> {
        if let (Some(OrderBySort::Using(op)), 0) = (&order_by.options.sort, self.explain_depth) {
            self.sort_operator(op);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if std::mem::take(&mut self.next_relation_is_function) {
            if self.explain_depth == 0 {
                self.findings.functions.push(function_name(relation));
            }
        } else if let Some(table) = TableName::from_object_name(relation) {
            // DML targets are real tables whatever their name; they are facets already.
            if !self.names_a_cte(&table) {
                self.findings.relations.push(read(table));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if self.explain_depth > 0 {
            // A plain EXPLAIN plans calls, it does not make them.
            return ControlFlow::Continue(());
        }
        match expr {
            Expr::Function(_) if self.partition_strategy == Some(expr as *const Expr) => {}
            Expr::Function(function) => {
                let mut name = function_name(&function.name);
                if let [ObjectNamePart::Identifier(ident)] = function.name.0.as_slice() {
                    if ident.quote_style.is_some() && functions::is_grammar(&name) {
                        // `"coalesce"(x)` calls a function named coalesce (no built-in is).
                        name = format!("\"{name}\"");
                    }
                }
                if let Some(kind) = functions::sequence_access(&name) {
                    // nextval('billing.s') writes billing's sequence, currval reads it.
                    if let Some(sequence) = first_argument_table(function) {
                        self.findings.facets.push(Facet {
                            kind,
                            table: Some(sequence),
                        });
                    }
                }
                if let Some(tables) = functions::tables_read_by(&name) {
                    self.table_reading_call(&name, tables, function);
                } else if let Some(setting) = setting_of_set_config(
                    &name,
                    function,
                    self.settings_rows.last().and_then(Option::as_deref),
                ) {
                    // set_config with a literal name is a SET of that setting (pgAdmin sends
                    // `set_config('bytea_output', 'hex', false)` on connect).
                    if setting == "search_path" {
                        let value = nth_argument(function, 1).and_then(string_literal);
                        self.search_path(value.map(|v| search_path::split(&v)));
                    } else {
                        self.set_variable(&setting);
                    }
                } else {
                    self.findings.functions.push(name);
                }
            }
            Expr::BinaryOp { op, .. } => self.operator(op),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

impl Collector {
    /// The setting every row of `query` names: it reads `pg_settings` (PostgreSQL's, not a
    /// CTE of that name) alone, `WHERE name = '<setting>'` and nothing else.
    fn setting_of_rows(&self, query: &Query) -> Option<String> {
        let SetExpr::Select(select) = query.body.as_ref() else {
            return None;
        };
        let [from] = select.from.as_slice() else {
            return None;
        };
        let TableFactor::Table { name, .. } = &from.relation else {
            return None;
        };
        let table = TableName::from_object_name(name)?;
        let catalog = matches!(table.schema.as_deref(), None | Some("pg_catalog"));
        let own_cte = query.with.as_ref().is_some_and(|with| {
            with.cte_tables
                .iter()
                .any(|cte| fold(&cte.alias.name) == table.name)
        });
        if !from.joins.is_empty()
            || !catalog
            || table.name != "pg_settings"
            || own_cte
            || self.names_a_cte(&table)
        {
            return None;
        }
        let Some(Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        }) = &select.selection
        else {
            return None;
        };
        match (left.as_ref(), right.as_ref()) {
            (Expr::Identifier(column), literal) | (literal, Expr::Identifier(column))
                if fold(column) == "name" =>
            {
                plain_string(literal)
            }
            _ => None,
        }
    }

    /// CREATE TABLE: DDL on the new table, and on what it links to (parents, referenced
    /// tables, a LIKE source).
    fn create_table(&mut self, create: &CreateTable) {
        self.add(Kind::Ddl, Some(&create.name), None);
        if create.query.is_some() {
            self.add(Kind::Write, Some(&create.name), Some("CREATE TABLE AS"));
        }
        let parents = create.inherits.iter().flatten();
        for parent in parents.chain(&create.partition_of) {
            let reason = format!(
                "rows written to {} show in {parent} (INHERITS, PARTITION OF)",
                create.name
            );
            self.gains_or_loses_rows(parent, &reason);
        }
        self.partition_strategy = create.partition_by.as_deref().map(|e| e as *const Expr);
        let table_keys = create.constraints.iter().filter_map(|c| match c {
            TableConstraint::ForeignKey(key) => Some(key),
            _ => None,
        });
        for key in create
            .columns
            .iter()
            .flat_map(column_keys)
            .chain(table_keys)
        {
            self.references(key, &create.name);
        }
        for column in &create.columns {
            self.column_type(column);
        }
        if let Some(CreateTableLikeKind::Parenthesized(like) | CreateTableLikeKind::Plain(like)) =
            &create.like
        {
            // Its definition is read; copied defaults call its sequences' nextval on every
            // insert into the new table.
            self.add(Kind::Read, Some(&like.name), None);
            if like.defaults == Some(CreateTableLikeDefaults::Including) {
                let reason = format!(
                    "defaults copied from {} can advance its sequences",
                    like.name
                );
                self.add(Kind::Write, None, Some(&reason));
            }
        }
    }

    /// `table` gains or loses rows through another table linked to it (a child, a partition):
    /// its structure changes, and writes to the other table become writes to it.
    fn gains_or_loses_rows(&mut self, table: &ObjectName, reason: &str) {
        self.add(Kind::Ddl, Some(table), None);
        self.add(Kind::Write, Some(table), Some(reason));
    }

    /// A foreign key from `table` changes the table it references: PostgreSQL adds triggers
    /// there, its deletes and key updates can then fail (or cascade into `table`), and whether
    /// a row can be inserted tells which keys it holds.
    fn references(&mut self, key: &ForeignKeyConstraint, table: &ObjectName) {
        let reason = format!(
            "a foreign key from {table} adds triggers to {} and constrains its deletes",
            key.foreign_table
        );
        self.add(Kind::Ddl, Some(&key.foreign_table), Some(&reason));
    }

    /// A CASCADE drops whatever depends on the object (views, foreign keys, ...), wherever it
    /// is: which objects is in the catalog, not in the text.
    fn dependents_dropped(&mut self) {
        self.add(
            Kind::Ddl,
            None,
            Some("CASCADE also drops the objects that depend on it"),
        );
    }

    /// A column of a named type reads that type's definition, which for a table's row type is
    /// the table's (`c billing.cards`; sqlparser also reads `(x int, LIKE t)` as a column
    /// `LIKE` of type `t`): a rule restricting the table meets it. Enums and domains are read
    /// harmlessly.
    fn column_type(&mut self, column: &ColumnDef) {
        let mut data_type = &column.data_type;
        while let DataType::Array(
            ArrayElemTypeDef::AngleBracket(inner)
            | ArrayElemTypeDef::SquareBracket(inner, _)
            | ArrayElemTypeDef::Parenthesis(inner),
        ) = data_type
        {
            data_type = inner;
        }
        if let DataType::Custom(name, _) = data_type {
            self.add(Kind::Read, Some(name), None);
        }
    }

    /// GRANT or REVOKE: a privilege change on each table, sequence or view named, on every
    /// table of a schema for `ALL ... IN SCHEMA s` and `ON SCHEMA s` (its tables become
    /// reachable), and on no table for other objects (functions, databases, ...).
    fn privileges_on(&mut self, objects: Option<&GrantObjects>) {
        use GrantObjects as G;
        match objects {
            Some(G::Tables(names) | G::Views(names) | G::Sequences(names)) => {
                for name in names {
                    self.add(Kind::Dcl, Some(name), None);
                }
            }
            Some(
                G::AllTablesInSchema { schemas }
                | G::AllViewsInSchema { schemas }
                | G::AllMaterializedViewsInSchema { schemas }
                | G::AllExternalTablesInSchema { schemas }
                | G::AllSequencesInSchema { schemas }
                | G::FutureTablesInSchema { schemas }
                | G::FutureViewsInSchema { schemas }
                | G::FutureExternalTablesInSchema { schemas }
                | G::FutureMaterializedViewsInSchema { schemas }
                | G::FutureSequencesInSchema { schemas }
                | G::Schemas(schemas),
            ) => {
                for schema in schemas {
                    self.add_facet(Kind::Dcl, TableName::every_table_in(schema), None);
                }
            }
            _ => self.add(Kind::Dcl, None, None),
        }
    }

    /// COMMENT ON: a schema change of the relation it describes (of a column's table; of
    /// every table of a schema).
    fn comment(&mut self, object_type: CommentObject, name: &ObjectName) {
        use CommentObject as C;
        match object_type {
            C::Table | C::View | C::MaterializedView | C::ForeignTable | C::Sequence | C::Index => {
                self.add(Kind::Ddl, Some(name), None)
            }
            C::Column => {
                let table = ObjectName(name.0[..name.0.len().saturating_sub(1)].to_vec());
                self.add(Kind::Ddl, Some(&table), None)
            }
            C::Schema => self.add_facet(Kind::Ddl, TableName::every_table_in(name), None),
            _ => self.add(Kind::Ddl, None, None),
        }
    }

    /// What ALTER TABLE does beyond its own table: a foreign key added changes the table it
    /// references; with ATTACH/DETACH PARTITION and [NO] INHERIT both tables' rows change; a
    /// dropped column or constraint with CASCADE takes its dependents along.
    fn alter_table_links(&mut self, alter: &AlterTable) {
        for operation in &alter.operations {
            let linked = match operation {
                AlterTableOperation::AddConstraint {
                    constraint: TableConstraint::ForeignKey(key),
                    ..
                } => {
                    self.references(key, &alter.name);
                    continue;
                }
                AlterTableOperation::AddColumn { column_def, .. } => {
                    for key in column_keys(column_def) {
                        self.references(key, &alter.name);
                    }
                    self.column_type(column_def);
                    continue;
                }
                AlterTableOperation::DropColumn {
                    drop_behavior: Some(DropBehavior::Cascade),
                    ..
                }
                | AlterTableOperation::DropConstraint {
                    drop_behavior: Some(DropBehavior::Cascade),
                    ..
                } => {
                    self.dependents_dropped();
                    continue;
                }
                AlterTableOperation::AttachPartitionOf { partition, .. }
                | AlterTableOperation::DetachPartitionOf { partition, .. } => partition,
                AlterTableOperation::Inherit { parent }
                | AlterTableOperation::NoInherit { parent } => parent,
                _ => continue,
            };
            let reason = format!(
                "the rows of {linked} join or leave {} (ATTACH/DETACH PARTITION, [NO] INHERIT)",
                alter.name
            );
            self.gains_or_loses_rows(linked, &reason);
            self.add(Kind::Write, Some(&alter.name), None);
        }
    }

    /// Whether an unqualified name read here means a CTE of an enclosing WITH clause (as
    /// PostgreSQL resolves it: the innermost clause first, only the CTEs visible at this point).
    fn names_a_cte(&self, table: &TableName) -> bool {
        table.schema.is_none()
            && self
                .cte_scopes
                .iter()
                .any(|scope| scope.visible.contains(&table.name))
    }

    /// Reads by `TABLE name` in a query body, alone or in a set operation. sqlparser keeps
    /// such a name as two identifiers, not as a relation, so the visitor never reports it. A
    /// parenthesized query in the operation is a query of its own, visited on its own.
    fn table_commands(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Table(table) => {
                if let Some(table) = table_command_name(table) {
                    if !self.names_a_cte(&table) {
                        self.findings.relations.push(read(table));
                    }
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.table_commands(left);
                self.table_commands(right);
            }
            _ => {}
        }
    }

    /// A built-in that reads the rows of tables its arguments name: a read of the table when
    /// the name is written out, otherwise unknown (which tables is decided at run time).
    fn table_reading_call(
        &mut self,
        name: &str,
        tables: TablesRead,
        function: &sqlparser::ast::Function,
    ) {
        // Listed like any call (it is read-only in itself); the facet carries the decision.
        self.findings.functions.push(name.to_owned());
        let named = match tables {
            TablesRead::FirstArgument => first_argument_table(function),
            TablesRead::Many => None,
        };
        match named {
            Some(table) => self.findings.facets.push(read(table)),
            None => {
                self.findings.facets.push(Facet {
                    kind: Kind::Unknown,
                    table: None,
                });
                self.findings
                    .reasons
                    .push(format!("{name}() reads tables chosen when it runs"));
            }
        }
    }

    /// A binary operator: one that is not PostgreSQL's own runs someone's function.
    fn operator(&mut self, op: &BinaryOperator) {
        match op {
            BinaryOperator::Custom(symbol) => self.check_operator(&[symbol], op),
            BinaryOperator::PGCustomBinaryOperator(parts) => {
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                self.check_operator(&parts, op);
            }
            _ => {}
        }
    }

    /// `ORDER BY x USING op` sorts with the operator's function.
    fn sort_operator(&mut self, op: &ObjectName) {
        let parts: Vec<&str> =
            op.0.iter()
                .map(|part| match part {
                    ObjectNamePart::Identifier(ident) => ident.value.as_str(),
                    ObjectNamePart::Function(_) => "",
                })
                .collect();
        self.check_operator(&parts, op);
    }

    /// An operator (`symbol` or `schema.symbol`) that is not PostgreSQL's own runs someone's
    /// function, which may write.
    fn check_operator(&mut self, parts: &[&str], written: &dyn fmt::Display) {
        let built_in = match parts {
            [symbol] => functions::is_built_in_operator(None, symbol),
            [schema, symbol] => {
                functions::is_built_in_operator(Some(&schema.to_ascii_lowercase()), symbol)
            }
            _ => false,
        };
        if !built_in {
            self.findings.facets.push(Facet {
                kind: Kind::Write,
                table: None,
            });
            self.findings.reasons.push(format!(
                "uses operator {written}, which is not PostgreSQL's own and may write"
            ));
        }
    }
}

/// The table a plain view's INSERT, UPDATE and DELETE reach: PostgreSQL makes a view
/// updatable when its query is one SELECT from one table (or updatable view) with no WITH,
/// DISTINCT, GROUP BY, HAVING, LIMIT, OFFSET or set operation. Aggregates and set-returning
/// functions in the select list also prevent it; they are not looked for, so such a view
/// counts as written through (the safe side).
fn written_through(query: &Query) -> Option<TableName> {
    if query.with.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return None;
    }
    let select = match query.body.as_ref() {
        SetExpr::Select(select) => select,
        SetExpr::Table(table) => return table_command_name(table),
        _ => return None,
    };
    let no_grouping = match &select.group_by {
        GroupByExpr::Expressions(expressions, modifiers) => {
            expressions.is_empty() && modifiers.is_empty()
        }
        GroupByExpr::All(_) => false,
    };
    if select.distinct.is_some() || !no_grouping || select.having.is_some() {
        return None;
    }
    match select.from.as_slice() {
        [only] if only.joins.is_empty() => match &only.relation {
            TableFactor::Table {
                name, args: None, ..
            } => TableName::from_object_name(name),
            _ => None,
        },
        _ => None,
    }
}

/// The foreign keys a column's definition declares (`REFERENCES t`).
fn column_keys(column: &ColumnDef) -> impl Iterator<Item = &ForeignKeyConstraint> {
    column
        .options
        .iter()
        .filter_map(|option| match &option.option {
            ColumnOption::ForeignKey(key) => Some(key),
            _ => None,
        })
}

/// The table of `TABLE name`.
fn table_command_name(table: &sqlparser::ast::Table) -> Option<TableName> {
    let name = table.table_name.as_ref()?;
    Some(TableName {
        schema: table.schema_name.as_ref().map(fold),
        name: fold(name),
    })
}

/// The table a call's first argument names, when it is written out: `'orders'`,
/// `'orders'::regclass` or `CAST('orders' AS regclass)` (or the `tbl =>` argument).
fn first_argument_table(function: &sqlparser::ast::Function) -> Option<TableName> {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments, Value};
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    let argument = match list.args.first()? {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => expr,
        FunctionArg::Named {
            name,
            arg: FunctionArgExpr::Expr(expr),
            ..
        } if name.value.eq_ignore_ascii_case("tbl") => expr,
        _ => return None,
    };
    let mut expr = argument;
    loop {
        match expr {
            Expr::Cast { expr: inner, .. } | Expr::Nested(inner) => expr = inner,
            Expr::Value(value) => {
                return match &value.value {
                    Value::SingleQuotedString(text)
                    | Value::EscapedStringLiteral(text)
                    | Value::NationalStringLiteral(text) => TableName::from_regclass_text(text),
                    Value::DollarQuotedString(quoted) => {
                        TableName::from_regclass_text(&quoted.value)
                    }
                    _ => None,
                };
            }
            _ => return None,
        }
    }
}

/// The setting a `set_config(...)` call assigns, when its first argument is a plain string
/// literal, or the column `name` of rows known to name `row_setting` (lower-cased, as
/// setting names are case-insensitive).
fn setting_of_set_config(
    name: &str,
    function: &sqlparser::ast::Function,
    row_setting: Option<&str>,
) -> Option<String> {
    if name != "set_config" && name != "pg_catalog.set_config" {
        return None;
    }
    match nth_argument(function, 0)? {
        Expr::Identifier(column) if fold(column) == "name" => {
            row_setting.map(str::to_ascii_lowercase)
        }
        literal => plain_string(literal).map(|setting| setting.to_ascii_lowercase()),
    }
}

/// A literal, maybe signed or cast (`'17507'`, `-1`, `'x'::pg_catalog.oid`): evaluating it
/// calls nothing of anyone's.
fn is_constant(expr: &Expr) -> bool {
    use sqlparser::ast::UnaryOperator;
    match expr {
        Expr::Value(_) => true,
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        } => matches!(expr.as_ref(), Expr::Value(_)),
        Expr::Cast { expr, .. } => matches!(expr.as_ref(), Expr::Value(_)),
        _ => false,
    }
}

/// A `'...'` literal's text: no escapes for the parser to have read differently.
fn plain_string(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(value) => match &value.value {
            sqlparser::ast::Value::SingleQuotedString(text) => Some(text.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// A call's `n`th positional argument.
fn nth_argument(function: &sqlparser::ast::Function, n: usize) -> Option<&Expr> {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments};
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    match list.args.get(n)? {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Some(expr),
        _ => None,
    }
}

/// A plain string literal's text.
fn string_literal(expr: &Expr) -> Option<String> {
    use sqlparser::ast::Value;
    match expr {
        Expr::Value(value) => match &value.value {
            Value::SingleQuotedString(text) | Value::EscapedStringLiteral(text) => {
                Some(text.clone())
            }
            _ => None,
        },
        _ => None,
    }
}

/// The schemas a `SET search_path` lists, folded; `None` when a value is not a name or string.
fn search_path_entries(values: &[Expr]) -> Option<Vec<String>> {
    let mut entries = Vec::new();
    for value in values {
        match value {
            Expr::Identifier(ident) => entries.push(fold(ident)),
            other => entries.extend(search_path::split(&string_literal(other)?)),
        }
    }
    Some(entries)
}

/// Whether a schema comes before `pg_catalog` (which is searched first when not listed;
/// `pg_temp` is never searched for functions or operators).
fn hides_the_catalog(entries: &[String]) -> bool {
    entries
        .iter()
        .position(|entry| entry == "pg_catalog")
        .is_some_and(|at| {
            entries[..at]
                .iter()
                .any(|entry| entry != "pg_temp" && !entry.starts_with("pg_temp_"))
        })
}

/// Whether an EXPLAIN executes its statement: `ANALYZE`, or `(ANALYZE [true|on|1])`.
fn explain_runs(analyze: bool, options: Option<&[UtilityOption]>) -> bool {
    analyze
        || options.unwrap_or_default().iter().any(|option| {
            let name = option.name.value.to_ascii_lowercase();
            let off = option.arg.as_ref().is_some_and(|arg| {
                let arg = arg.to_string().trim_matches('\'').to_ascii_lowercase();
                matches!(arg.as_str(), "false" | "off" | "0")
            });
            (name == "analyze" || name == "analyse") && !off
        })
}

/// Superuser settings that silence triggers (including audit triggers), the server's log or
/// its activity and statement tracking, switch off safety checks, or load libraries.
pub(crate) fn is_admin_setting(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "log_",
        "pgaudit.",
        "track_",
        "debug_",
        "pg_stat_statements.",
        "auto_explain.",
    ];
    const NAMES: &[&str] = &[
        "session_replication_role",
        "compute_query_id",
        "zero_damaged_pages",
        "ignore_checksum_failure",
        "ignore_system_indexes",
        "allow_system_table_mods",
        "allow_in_place_tablespaces",
        "lo_compat_privileges",
        "dynamic_library_path",
        "session_preload_libraries",
        "local_preload_libraries",
    ];
    NAMES.contains(&name) || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

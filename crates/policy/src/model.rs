//! The evaluated form of a policy and how a statement is decided.

use std::fmt;
use std::time::Duration;

use pgstepup_classify::{Classification, Facet, Kind, KindSet, SearchPath, TableName};

use crate::glob;

/// What happens to a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    StepUp,
    Deny,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::StepUp => "step_up",
            Action::Deny => "deny",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who an elevation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only the connection that stepped up.
    Connection,
    /// The user on every connection (GUI tools open several).
    User,
}

/// Enforce decisions, or only report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// Make, log and count every decision; hold and refuse nothing.
    Observe,
}

/// One rule, built-in or the DBA's.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// Table patterns (`schema.table`, `table`, globs); empty = any statement.
    pub tables: Vec<String>,
    /// Kinds; empty = any kind (a bit set: each rule is tested for every statement's facets).
    pub kinds: KindSet,
    /// Policy roles; empty = everyone.
    pub roles: Vec<String>,
    pub action: Action,
    /// How long a step-up under this rule lasts; zero = this statement only.
    pub lifetime: Duration,
    pub scope: Scope,
    /// How long a statement waits for approval before it is refused.
    pub hold_timeout: Duration,
    /// Built-in rules lose ties against the DBA's.
    pub builtin: bool,
    /// 1-based line in the policy file, for `check` output.
    pub line: Option<usize>,
}

/// A user as the policy sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub user: String,
    /// Policy roles the user holds.
    pub roles: Vec<String>,
    /// Schemas the session has put on its search_path besides the default path's
    /// (`pg_catalog`, the user's own, `public`); `None` while it has not changed it.
    pub search_path: Option<SearchPath>,
}

impl Subject {
    /// A user with these roles whose session keeps the default search_path.
    pub fn new(user: String, roles: Vec<String>) -> Self {
        Subject {
            user,
            roles,
            search_path: None,
        }
    }
}

/// A role definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoleDef {
    pub name: String,
    pub users: Vec<String>,
    pub upstream_roles: Vec<String>,
    pub can_elevate: bool,
}

/// A complete policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub mode: Mode,
    /// The DBA's rules first, then the built-in defaults.
    pub rules: Vec<Rule>,
    pub(crate) roles: Vec<RoleDef>,
    /// Functions declared free of side effects, beyond PostgreSQL's own.
    pub read_only_functions: Vec<String>,
    /// application_name patterns of clients that show notices only after a statement ends
    /// (pgJDBC tools such as DBeaver): they get the link in an immediate refusal, not a hold.
    pub refuse_at_once_applications: Vec<String>,
}

/// How long a statement is held when its rule does not say.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(120);

/// The outcome for one statement. Borrowed from the policy and the classification, so deciding
/// allocates nothing; [`Decision::reason`] builds the explanation only when someone asks.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<'a> {
    pub action: Action,
    /// The rule that decided.
    pub rule: &'a str,
    pub lifetime: Duration,
    pub scope: Scope,
    pub hold_timeout: Duration,
    why: Why<'a>,
}

#[derive(Debug, Clone, PartialEq)]
enum Why<'a> {
    Pinned(&'a str),
    Empty,
    Rule {
        rule: &'a Rule,
        facet: &'a Facet,
        classification: &'a Classification,
        barred_role: Option<&'a str>,
    },
}

impl Decision<'_> {
    /// The kind of the facet that decided (None when nothing was decided by a rule).
    pub fn kind(&self) -> Option<Kind> {
        match &self.why {
            Why::Rule { facet, .. } => Some(facet.kind),
            _ => None,
        }
    }

    /// Why, for people: the facet that decided, the rule (and its line), and the detail.
    pub fn reason(&self) -> String {
        match &self.why {
            Why::Pinned(violation) => (*violation).to_owned(),
            Why::Empty => "no statement".into(),
            Why::Rule {
                rule,
                facet,
                classification,
                barred_role,
            } => {
                let mut reason = describe(facet, rule, classification);
                if let Some(role) = barred_role {
                    reason.push_str(&format!("; role {role} may not elevate"));
                }
                reason
            }
        }
    }
}

/// How specifically a rule matches a facet; larger wins. Compared field by field in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    /// The DBA's rule over a built-in default.
    dba: bool,
    /// 3 exact table, 2 table glob, 1 no table pattern.
    table: u8,
    /// The rule names roles.
    roles: bool,
    /// The rule names kinds.
    kinds: bool,
    /// On a tie, the stricter action.
    action: Action,
}

impl Policy {
    /// The built-in default: reads, transaction control and session housekeeping flow; every
    /// other kind needs step-up; nothing unknown is let through.
    pub fn builtin() -> Self {
        Policy {
            mode: Mode::Enforce,
            rules: builtin_rules(),
            roles: Vec::new(),
            read_only_functions: Vec::new(),
            refuse_at_once_applications: Vec::new(),
        }
    }

    /// Whether a client with this application_name gets an immediate refusal with the link
    /// instead of a hold.
    pub fn refuses_at_once(&self, application_name: &str) -> bool {
        self.refuse_at_once_applications
            .iter()
            .any(|pattern| glob::matches(pattern, application_name))
    }

    /// The policy roles `user` holds, given the upstream roles they are a member of.
    pub fn roles_of(&self, user: &str, upstream_roles: &[String]) -> Vec<String> {
        self.roles
            .iter()
            .filter(|r| {
                r.users.iter().any(|u| u == user)
                    || r.upstream_roles.iter().any(|u| upstream_roles.contains(u))
            })
            .map(|r| r.name.clone())
            .collect()
    }

    /// Whether any role refers to upstream role membership (then it must be looked up).
    pub fn uses_upstream_roles(&self) -> bool {
        self.roles.iter().any(|r| !r.upstream_roles.is_empty())
    }

    /// Decides a classified statement for a subject.
    ///
    /// Order, per facet: a rule must match the facet's kind (if it names kinds), its table (if
    /// it names tables) and the subject's roles (if it names roles). Among matching rules the
    /// DBA's beat the built-in defaults; then the most specific wins: an exact table beats a
    /// glob beats no table; naming roles beats not; naming kinds beats not; then the stricter
    /// action; then the earlier rule. The statement's decision is the strictest over its facets.
    pub fn evaluate<'a>(
        &'a self,
        classification: &'a Classification,
        subject: &Subject,
    ) -> Decision<'a> {
        if let Some(violation) = &classification.pinned_violation {
            return Decision {
                action: Action::Deny,
                rule: "pinned-setting",
                lifetime: Duration::ZERO,
                scope: Scope::Connection,
                hold_timeout: DEFAULT_HOLD_TIMEOUT,
                why: Why::Pinned(violation),
            };
        }
        let search_path = Schemas {
            session: subject.search_path.as_ref(),
            text: classification.search_path.as_ref(),
        };
        let mut best: Option<(&Rule, &Facet)> = None;
        for facet in &classification.facets {
            let Some(rule) = self.rule_for(facet, subject, search_path) else {
                continue;
            };
            if best.is_none_or(|(b, _)| rule.action > b.action) {
                best = Some((rule, facet));
            }
        }
        let Some((rule, facet)) = best else {
            return Decision {
                action: Action::Allow,
                rule: "empty",
                lifetime: Duration::ZERO,
                scope: Scope::Connection,
                hold_timeout: DEFAULT_HOLD_TIMEOUT,
                why: Why::Empty,
            };
        };
        let mut action = rule.action;
        let mut barred_role = None;
        if action == Action::StepUp {
            if let Some(barred) = self
                .roles
                .iter()
                .find(|r| !r.can_elevate && subject.roles.contains(&r.name))
            {
                action = Action::Deny;
                barred_role = Some(barred.name.as_str());
            }
        }
        Decision {
            action,
            rule: &rule.name,
            lifetime: rule.lifetime,
            scope: rule.scope,
            hold_timeout: rule.hold_timeout,
            why: Why::Rule {
                rule,
                facet,
                classification,
                barred_role,
            },
        }
    }

    fn rule_for(&self, facet: &Facet, subject: &Subject, search_path: Schemas) -> Option<&Rule> {
        let mut best: Option<(Specificity, &Rule)> = None;
        for rule in &self.rules {
            let Some(this) = specificity(rule, facet, subject, search_path) else {
                continue;
            };
            // Strictly greater: the earliest of equally specific rules wins.
            if best.as_ref().is_none_or(|(most, _)| this > *most) {
                best = Some((this, rule));
            }
        }
        best.map(|(_, rule)| rule)
    }
}

fn specificity(
    rule: &Rule,
    facet: &Facet,
    subject: &Subject,
    search_path: Schemas,
) -> Option<Specificity> {
    if !rule.kinds.is_empty() && !rule.kinds.contains(facet.kind) {
        return None;
    }
    if !rule.roles.is_empty() && !rule.roles.iter().any(|r| subject.roles.contains(r)) {
        return None;
    }
    let table = if rule.tables.is_empty() {
        1
    } else {
        let table = facet.table.as_ref()?;
        rule.tables
            .iter()
            .filter_map(|pattern| {
                table_match(pattern, table, rule.action, &subject.user, search_path)
            })
            .max()?
    };
    Some(Specificity {
        table,
        roles: !rule.roles.is_empty(),
        kinds: !rule.kinds.is_empty(),
        dba: !rule.builtin,
        action: rule.action,
    })
}

/// The search_path changes a decision must assume: the session's so far, and the text's own.
#[derive(Clone, Copy)]
struct Schemas<'a> {
    session: Option<&'a SearchPath>,
    text: Option<&'a SearchPath>,
}

impl Schemas<'_> {
    /// Whether an unqualified table may be in a schema `pattern` matches: one of the default
    /// path's (`pg_catalog`, searched first; the user's own; `public`), or one the session or
    /// the text itself has put on its search_path.
    fn may_hold(self, pattern: &str, user: &str) -> bool {
        let matches = |schema: &str| glob::matches(pattern, schema);
        ["pg_catalog", "public", user].into_iter().any(matches)
            || [self.session, self.text]
                .into_iter()
                .flatten()
                .any(|path| path.may_list(user, matches))
    }
}

/// 3 for an exact match, 2 for a glob match. An unqualified table resolves through the
/// search_path, which pgstepup knows only as the union of the schemas the session listed:
/// for rules that restrict it is taken to be in any of them, so it cannot escape a step-up;
/// rules that allow need the schema written, so a changed search_path cannot widen them.
fn table_match(
    pattern: &str,
    table: &TableName,
    action: Action,
    user: &str,
    search_path: Schemas,
) -> Option<u8> {
    let rank = if glob::is_glob(pattern) { 2 } else { 3 };
    if table.is_every_table() {
        // Every table of a schema: it holds whatever table a restricting pattern names there,
        // and only a pattern that takes in the whole schema allows it.
        let (schema, name) = pattern.rsplit_once('.').unwrap_or(("*", pattern));
        let schema_matches = table
            .schema
            .as_deref()
            .is_some_and(|table_schema| glob::matches(schema, table_schema));
        let matched = schema_matches && (action != Action::Allow || name.chars().all(|c| c == '*'));
        return matched.then_some(rank);
    }
    let matched = match (pattern.rsplit_once('.'), &table.schema) {
        (Some((schema, name)), Some(table_schema)) => {
            glob::matches(schema, table_schema) && glob::matches(name, &table.name)
        }
        (Some((schema, name)), None) => {
            action != Action::Allow
                && glob::matches(name, &table.name)
                && search_path.may_hold(schema, user)
        }
        (None, _) => glob::matches(pattern, &table.name),
    };
    matched.then_some(rank)
}

fn describe(facet: &Facet, rule: &Rule, classification: &Classification) -> String {
    let what = match &facet.table {
        Some(table) => format!("{} on {table}", facet.kind),
        None => facet.kind.to_string(),
    };
    let verdict = match rule.action {
        Action::Allow => "allowed",
        Action::StepUp => "needs step-up",
        Action::Deny => "denied",
    };
    let mut reason = format!("{what} {verdict} by rule {}", rule.name);
    if let Some(line) = rule.line {
        reason.push_str(&format!(" (line {line})"));
    }
    if facet.kind != Kind::Read {
        if let Some(detail) = classification.reasons.first() {
            reason.push_str(&format!(": {detail}"));
        }
    }
    reason
}

fn builtin_rules() -> Vec<Rule> {
    let minutes = |m: u64| Duration::from_secs(m * 60);
    [
        (Kind::Read, Action::Allow, Duration::ZERO),
        (Kind::Transaction, Action::Allow, Duration::ZERO),
        (Kind::Utility, Action::Allow, Duration::ZERO),
        (Kind::Write, Action::StepUp, minutes(15)),
        (Kind::Ddl, Action::StepUp, minutes(15)),
        (Kind::Dcl, Action::StepUp, Duration::ZERO),
        (Kind::SessionPrivilege, Action::StepUp, Duration::ZERO),
        (Kind::Admin, Action::StepUp, Duration::ZERO),
        (Kind::Unknown, Action::StepUp, Duration::ZERO),
    ]
    .into_iter()
    .map(|(kind, action, lifetime)| Rule {
        name: format!("default-{}", kind.name()),
        tables: Vec::new(),
        kinds: [kind].into_iter().collect(),
        roles: Vec::new(),
        action,
        lifetime,
        scope: Scope::Connection,
        hold_timeout: DEFAULT_HOLD_TIMEOUT,
        builtin: true,
        line: None,
    })
    .collect()
}

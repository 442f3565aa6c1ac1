//! The policy's TOML form, in a file of its own or as the `[policy]` table of the main
//! configuration, and its validation. Errors name the file, the line and the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use pgstepup_classify::Kind;

use crate::model::{Action, Mode, Policy, RoleDef, Rule, Scope, DEFAULT_HOLD_TIMEOUT};

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: line {line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Where a policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// No policy configured: the built-in default.
    Builtin,
    /// A policy file (top-level keys), or the `[policy]` table of a configuration file.
    File { path: PathBuf, embedded: bool },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    #[serde(default)]
    mode: Option<ModeSpec>,
    #[serde(default)]
    read_only_functions: Vec<String>,
    #[serde(default)]
    roles: BTreeMap<String, Spanned<RoleSpec>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleSpec>>,
    #[serde(default)]
    applications: ApplicationsSpec,
    /// Only meaningful in the main configuration: where the policy file is.
    #[serde(default)]
    file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeSpec {
    Enforce,
    Observe,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleSpec {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    upstream_roles: Vec<String>,
    #[serde(default = "yes")]
    can_elevate: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    kinds: Vec<KindSpec>,
    #[serde(default)]
    roles: Vec<String>,
    action: ActionSpec,
    #[serde(default)]
    lifetime: Option<LifetimeSpec>,
    #[serde(default)]
    scope: Option<ScopeSpec>,
    /// How long a statement is held waiting for approval.
    #[serde(default)]
    timeout: Option<LifetimeSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApplicationsSpec {
    #[serde(default)]
    refuse_at_once: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ActionSpec {
    Allow,
    StepUp,
    Deny,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ScopeSpec {
    Connection,
    User,
}

/// A kind name, checked while parsing so the error carries the line.
struct KindSpec(Kind);

impl<'de> Deserialize<'de> for KindSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Kind::from_name(&name).map(KindSpec).ok_or_else(|| {
            let all: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            serde::de::Error::custom(format!(
                "unknown kind {name:?}; kinds are {}",
                all.join(", ")
            ))
        })
    }
}

/// `"15m"`, `"300s"`, `"2h"`, `"0"`.
struct LifetimeSpec(Duration);

impl<'de> Deserialize<'de> for LifetimeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(LifetimeSpec).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid lifetime {text:?}: use seconds, minutes or hours like \"300s\", \"15m\", \"1h\", or \"0\""
            ))
        })
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

#[derive(Deserialize)]
struct Embedded {
    #[serde(default)]
    policy: Option<PolicySpec>,
    #[serde(flatten)]
    _rest: toml::Table,
}

impl PolicySource {
    /// Where the policy of a configuration file lives: `[policy] file = ...` (relative to the
    /// configuration), the `[policy]` table itself, or nowhere (built-in).
    pub fn for_config(config_path: Option<&Path>, policy_table: Option<&toml::Table>) -> Self {
        let (Some(config_path), Some(table)) = (config_path, policy_table) else {
            return PolicySource::Builtin;
        };
        match table.get("file").and_then(|v| v.as_str()) {
            Some(file) => PolicySource::File {
                path: config_path.parent().unwrap_or(Path::new(".")).join(file),
                embedded: false,
            },
            None if table.is_empty() => PolicySource::Builtin,
            None => PolicySource::File {
                path: config_path.to_owned(),
                embedded: true,
            },
        }
    }

    /// Reads and validates the policy.
    pub fn load(&self) -> Result<Policy, PolicyError> {
        let PolicySource::File { path, embedded } = self else {
            return Ok(Policy::builtin());
        };
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.clone(),
            source,
        })?;
        parse(&text, path, *embedded)
    }

    /// The file to watch for changes, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            PolicySource::Builtin => None,
            PolicySource::File { path, .. } => Some(path),
        }
    }
}

/// Parses policy text (`embedded`: the `[policy]` table of a configuration file).
pub fn parse(text: &str, path: &Path, embedded: bool) -> Result<Policy, PolicyError> {
    let syntax = |e: toml::de::Error| PolicyError::Syntax {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let spec = if embedded {
        match toml::from_str::<Embedded>(text).map_err(syntax)?.policy {
            Some(spec) => spec,
            None => return Ok(Policy::builtin()),
        }
    } else {
        // A file that says nothing is more likely caught mid-rewrite (or truncated) than meant
        // as the built-in default, which would silently drop every deny rule on a reload.
        if toml::from_str::<toml::Table>(text)
            .map_err(syntax)?
            .is_empty()
        {
            return Err(PolicyError::Invalid {
                path: path.to_owned(),
                line: 1,
                message: "the policy file is empty (to use the built-in default policy, \
                          configure no policy file)"
                    .into(),
            });
        }
        toml::from_str::<PolicySpec>(text).map_err(syntax)?
    };
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let invalid = |offset: usize, message: String| PolicyError::Invalid {
        path: path.to_owned(),
        line: line_of(offset),
        message,
    };
    if !embedded && spec.file.is_some() {
        return Err(invalid(
            0,
            "`file` belongs in the main configuration's [policy] table".into(),
        ));
    }

    let roles: Vec<RoleDef> = spec
        .roles
        .into_iter()
        .map(|(name, role)| {
            let role = role.into_inner();
            RoleDef {
                name,
                users: role.users,
                upstream_roles: role.upstream_roles,
                can_elevate: role.can_elevate,
            }
        })
        .collect();

    let mut rules = Vec::new();
    for spanned in spec.rule {
        let start = spanned.span().start;
        let rule = spanned.into_inner();
        if rule.name.trim().is_empty() {
            return Err(invalid(start, "a rule needs a name".into()));
        }
        if rules.iter().any(|r: &Rule| r.name == rule.name) || rule.name.starts_with("default-") {
            return Err(invalid(
                start,
                format!(
                    "rule name {:?} is already used (names starting default- are built-in)",
                    rule.name
                ),
            ));
        }
        for role in &rule.roles {
            if !roles.iter().any(|r| &r.name == role) {
                return Err(invalid(
                    start,
                    format!(
                        "rule {:?} names role {role:?}, which is not defined under [roles]",
                        rule.name
                    ),
                ));
            }
        }
        for pattern in &rule.tables {
            check_pattern(pattern)
                .map_err(|m| invalid(start, format!("rule {:?}: {m}", rule.name)))?;
        }
        let hold_timeout = match rule.timeout {
            Some(LifetimeSpec(t)) if t.is_zero() => {
                return Err(invalid(
                    start,
                    format!("rule {:?}: timeout must be more than 0", rule.name),
                ))
            }
            Some(LifetimeSpec(t)) => t,
            None => DEFAULT_HOLD_TIMEOUT,
        };
        rules.push(Rule {
            name: rule.name,
            tables: rule.tables,
            kinds: rule.kinds.into_iter().map(|k| k.0).collect(),
            roles: rule.roles,
            action: match rule.action {
                ActionSpec::Allow => Action::Allow,
                ActionSpec::StepUp => Action::StepUp,
                ActionSpec::Deny => Action::Deny,
            },
            lifetime: rule.lifetime.map_or(Duration::from_secs(15 * 60), |l| l.0),
            scope: match rule.scope {
                Some(ScopeSpec::User) => Scope::User,
                _ => Scope::Connection,
            },
            hold_timeout,
            builtin: false,
            line: Some(line_of(start)),
        });
    }
    let mut policy = Policy::builtin();
    rules.append(&mut policy.rules);
    policy.rules = rules;
    policy.roles = roles;
    policy.read_only_functions = spec.read_only_functions;
    policy.refuse_at_once_applications = spec.applications.refuse_at_once;
    policy.mode = match spec.mode {
        Some(ModeSpec::Observe) => Mode::Observe,
        _ => Mode::Enforce,
    };
    Ok(policy)
}

fn check_pattern(pattern: &str) -> Result<(), String> {
    let parts: Vec<&str> = pattern.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "table pattern {pattern:?} must be `table` or `schema.table`"
        ));
    }
    Ok(())
}

impl Policy {
    /// Problems worth a DBA's attention that do not stop the policy from loading.
    pub fn lint(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for rule in self.rules.iter().filter(|r| !r.builtin) {
            let at = rule.line.map(|l| format!("line {l}: ")).unwrap_or_default();
            for pattern in &rule.tables {
                if pattern.chars().any(|c| c.is_uppercase()) {
                    warnings.push(format!(
                        "{at}rule {:?}: pattern {pattern:?} has upper case; PostgreSQL folds unquoted names to lower case, so it only matches tables created with quotes",
                        rule.name
                    ));
                }
            }
            if rule.action == Action::Allow && rule.tables.is_empty() && rule.kinds.is_empty() {
                warnings.push(format!(
                    "{at}rule {:?} allows every kind of statement{}",
                    rule.name,
                    if rule.roles.is_empty() {
                        " for everyone"
                    } else {
                        ""
                    }
                ));
            }
            if rule.action != Action::StepUp
                && !rule.lifetime.is_zero()
                && rule.lifetime != Duration::from_secs(900)
            {
                warnings.push(format!(
                    "{at}rule {:?}: lifetime only matters for step_up rules",
                    rule.name
                ));
            }
        }
        for role in &self.roles {
            if role.users.is_empty() && role.upstream_roles.is_empty() {
                warnings.push(format!(
                    "role {:?} has no users and no upstream roles",
                    role.name
                ));
            }
            if !self.rules.iter().any(|r| r.roles.contains(&role.name)) && role.can_elevate {
                warnings.push(format!("role {:?} is not used by any rule", role.name));
            }
        }
        warnings
    }
}

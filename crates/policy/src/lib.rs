//! The policy a DBA writes: rules that map what a statement does (its kinds and tables, from
//! `pgstepup-classify`) and who sends it (user, policy roles) to `allow`, `step_up` or `deny`,
//! with the elevation lifetime and scope a step-up grants.
//!
//! Evaluation is per facet (one kind, optionally one table): for each facet the most specific
//! matching rule applies (see [`Policy::evaluate`]); the statement gets the strictest of its
//! facets' actions. Built-in defaults always exist beneath the DBA's rules.

mod glob;
mod model;
mod parse;

pub use model::{Action, Decision, Mode, Policy, Rule, Scope, Subject};
pub use parse::{PolicyError, PolicySource};

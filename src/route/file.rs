//! The file shape of routes: `preset` and `[[routes]]` as the operator
//! writes them (and as the preset's table is written). [`crate::config`]
//! validates them into runtime [`super::Route`]s.

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::graphql::OperationType;

/// Which built-in route table follows the operator's routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The LiteralAI data-layer API (see [`super::literalai`]).
    #[default]
    Literalai,
    /// No preset: the operator's routes and the catch-all only.
    None,
}

impl Preset {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Literalai => "literalai",
            Preset::None => "none",
        }
    }

    /// What this preset knows of its API's writes. `none` keeps
    /// LiteralAI's ordering words: writes spooled before an upgrade hold
    /// keys made by them (`step:<id>`), and a newer write must still queue
    /// behind them — changing the keys of a running queue could let an
    /// older version land last.
    pub fn vocabulary(self) -> &'static dyn super::Vocabulary {
        match self {
            Preset::Literalai | Preset::None => &super::literalai::LiteralAi,
        }
    }
}

/// How errors the sidecar generates are written for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorFormat {
    /// `{"errors":[{"message":...,"extensions":{"code":...}}]}`
    Graphql,
    /// RFC 9457 `application/problem+json`.
    Problem,
}

/// What happens when a request cannot be delivered for a transient reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Answer with a structured error.
    #[default]
    Error,
    /// Commit the write to the spool, answer success, deliver later.
    Spool,
}

/// When a spooling route uses the spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolMode {
    /// Try the upstream first; spool only when that fails transiently.
    #[default]
    OnFailure,
    /// Spool every write and acknowledge after the local commit; deliver in
    /// the background.
    WriteBehind,
}

/// `[routes.graphql]`: conditions on the parsed operation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphqlMatchFile {
    /// `query`, `mutation` or `subscription`.
    pub operation_type: Option<OperationType>,
    /// The operation's name must be exactly this.
    pub operation_name: Option<String>,
    /// Every root field of the operation must be one of these.
    pub root_fields: Option<Vec<String>>,
}

/// `[routes.timeouts]`: overrides of `[timeouts]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsOverride {
    /// Overrides `timeouts.per_try`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub per_try: Option<Duration>,
    /// Overrides `timeouts.deadline`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
}

/// `[routes.retry]`: overrides of `[retry]` (the budget is shared and cannot
/// be overridden).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryOverride {
    /// Overrides `retry.max_attempts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Overrides `retry.backoff_base`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub backoff_base: Option<Duration>,
    /// Overrides `retry.backoff_max`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub backoff_max: Option<Duration>,
    /// Overrides `retry.max_replay_body`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replay_body: Option<ByteSize>,
    /// Overrides `retry.retry_after_max`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub retry_after_max: Option<Duration>,
}

/// One `[[routes]]` entry as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Name used in logs, metrics and errors.
    pub name: String,
    /// Methods matched; empty matches any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Exact path matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix matched (segment-wise: `/api` matches `/api/x`, not `/apix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Conditions on the GraphQL operation; the request body is parsed only
    /// for requests whose method and path match a route that has these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphql: Option<GraphqlMatchFile>,
    /// Whether a request that may have reached the backend can be sent
    /// again. Unset: GraphQL queries and GET/HEAD/OPTIONS/PUT/DELETE are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// Format of the sidecar's own errors. Unset: `graphql` for GraphQL
    /// requests, `problem` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_format: Option<ErrorFormat>,
    /// `error` or `spool`.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// `on_failure` or `write_behind` (needs `on_failure = "spool"`).
    #[serde(default)]
    pub mode: SpoolMode,
    /// Whether the route goes through (and counts toward) the breaker.
    #[serde(default = "yes")]
    pub breaker: bool,
    /// Timeout overrides.
    #[serde(default)]
    pub timeouts: TimeoutsOverride,
    /// Retry overrides.
    #[serde(default)]
    pub retry: RetryOverride,
}

fn yes() -> bool {
    true
}

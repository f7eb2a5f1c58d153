//! Routes: `[[routes]]` from the config, then the preset's routes, matched
//! in order on method, path and — for GraphQL — the parsed operation's type,
//! name and root fields. Each route carries its own policy (idempotency,
//! timeouts, retry, breaker, error format, spooling), with unset keys
//! inherited from the global sections.
//!
//! The operator's routes come first, so one operation can be handled
//! differently without restating the preset; an operator route with the
//! name of a preset route replaces it. A catch-all `default` route ends the
//! table.

pub mod explain;
pub mod literalai;

use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use http::Method;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, FileConfig, RetryFile, validate_retry, validate_timeouts};
use crate::graphql::{Operation, OperationType};

/// Which built-in route table follows the operator's routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The LiteralAI data-layer API (see [`literalai`]).
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
}

/// Where a route comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `[[routes]]` in the config.
    Operator,
    /// The preset.
    Preset(Preset),
    /// The catch-all added at the end.
    Default,
}

impl Origin {
    /// Label for printing.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Operator => "config",
            Origin::Preset(p) => p.as_str(),
            Origin::Default => "catch-all",
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

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (p.ends_with('/')
                        || path.len() == p.len()
                        || path.as_bytes().get(p.len()) == Some(&b'/'))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct GraphqlMatch {
    operation_type: Option<OperationType>,
    operation_name: Option<String>,
    root_fields: Option<Vec<String>>,
}

impl GraphqlMatch {
    fn matches(&self, op: &Operation) -> bool {
        if self.operation_type.is_some_and(|t| t != op.kind) {
            return false;
        }
        if let Some(name) = &self.operation_name
            && op.name.as_deref() != Some(name.as_str())
        {
            return false;
        }
        if let Some(allowed) = &self.root_fields
            && (op.root_fields.is_empty()
                || !op
                    .root_fields
                    .iter()
                    .all(|f| allowed.iter().any(|a| a.as_str() == &*f.name)))
        {
            return false;
        }
        true
    }
}

/// A validated route with its full policy.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name used in logs, metrics and errors.
    pub name: Arc<str>,
    /// Position in the table (also the metrics slot).
    pub index: usize,
    /// Where the route comes from.
    pub origin: Origin,
    methods: Box<[Method]>,
    path: PathMatch,
    graphql: Option<GraphqlMatch>,
    /// Explicit idempotency, if configured.
    pub idempotent: Option<bool>,
    /// Explicit error format, if configured.
    pub error_format: Option<ErrorFormat>,
    /// What to do when delivery fails transiently.
    pub on_failure: OnFailure,
    /// When the spool is used.
    pub mode: SpoolMode,
    /// Whether the route goes through the breaker.
    pub breaker: bool,
    /// Per-attempt timeout.
    pub per_try: Duration,
    /// Overall deadline.
    pub deadline: Duration,
    /// Retry policy (global settings with this route's overrides).
    pub retry: RetryFile,
}

impl Route {
    /// Whether the route applies to this method and path, before the body
    /// is known.
    fn matches_head(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method)) && self.path.matches(path)
    }

    /// Whether the route needs the parsed GraphQL operation.
    pub fn is_graphql(&self) -> bool {
        self.graphql.is_some()
    }

    /// Whether the route spools on failure.
    pub fn spools(&self) -> bool {
        self.on_failure == OnFailure::Spool
    }

    /// Whether a request on this route may be sent twice.
    pub fn is_idempotent(&self, method: &Method, op: Option<&Operation>) -> bool {
        if let Some(i) = self.idempotent {
            return i;
        }
        match op {
            Some(op) => op.kind == OperationType::Query,
            None => matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
            ),
        }
    }

    /// The ordering keys of a write on this route: `entity:id` for each
    /// root field (see [`literalai::order_key`]), and `*` — ordered against
    /// every other write — when a root field is a barrier or names no id.
    pub fn order_keys(&self, op: &Operation, root_ids: &[Option<String>]) -> Box<[String]> {
        let mut keys = Vec::with_capacity(op.root_fields.len());
        let mut barrier = false;
        for (i, f) in op.root_fields.iter().enumerate() {
            match root_ids.get(i).and_then(Option::as_deref) {
                Some(id) => keys.push(literalai::order_key(&f.name, id)),
                None => barrier = true,
            }
            barrier |= literalai::is_barrier(&f.name);
        }
        if barrier {
            keys.push(BARRIER_KEY.to_string());
        }
        keys.into_boxed_slice()
    }

    /// Whether the route matches every request.
    fn is_catch_all(&self) -> bool {
        self.methods.is_empty() && matches!(self.path, PathMatch::Any) && self.graphql.is_none()
    }

    /// One line describing the route's match and policy.
    pub fn describe(&self) -> String {
        let methods = if self.methods.is_empty() {
            "*".to_string()
        } else {
            self.methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        let path = match &self.path {
            PathMatch::Any => "*".to_string(),
            PathMatch::Exact(p) => p.clone(),
            PathMatch::Prefix(p) => format!("{p}/*"),
        };
        let mut out = format!("{methods} {path}");
        if let Some(g) = &self.graphql {
            out.push_str(&format!(
                " graphql {}",
                g.operation_type.map_or("any", OperationType::as_str)
            ));
            if let Some(n) = &g.operation_name {
                out.push_str(&format!(" name={n}"));
            }
            if let Some(f) = &g.root_fields {
                out.push_str(&format!(" root_fields=[{}]", f.join(",")));
            }
        }
        let idempotent = match self.idempotent {
            Some(true) => "idempotent",
            Some(false) => "not idempotent",
            None => "idempotent if a query or GET/HEAD/OPTIONS/PUT/DELETE",
        };
        out.push_str(&format!(
            "; {idempotent}; on_failure={}{}; per_try={} deadline={} max_attempts={}{}",
            match self.on_failure {
                OnFailure::Error => "error",
                OnFailure::Spool => "spool",
            },
            if self.mode == SpoolMode::WriteBehind {
                " (write_behind)"
            } else {
                ""
            },
            short(self.per_try),
            short(self.deadline),
            self.retry.max_attempts,
            if self.breaker { "" } else { "; breaker off" },
        ));
        out
    }

    /// The error format for a request on this route.
    pub fn error_format_for(&self, op: Option<&Operation>) -> ErrorFormat {
        self.error_format.unwrap_or(if op.is_some() {
            ErrorFormat::Graphql
        } else {
            ErrorFormat::Problem
        })
    }

    /// Validate every `[[routes]]` entry, in order, then add the preset's
    /// routes (those the operator did not replace by name) and a catch-all
    /// `default` route unless one matches everything already. Returns the
    /// table and warnings for the operator.
    pub fn build_all(file: &FileConfig) -> Result<(Vec<Route>, Vec<String>), ConfigError> {
        let preset = match file.preset {
            Preset::Literalai => literalai::routes(&file.timeouts, &file.retry),
            Preset::None => Vec::new(),
        };
        let mut routes: Vec<Route> = Vec::with_capacity(file.routes.len() + preset.len() + 1);
        let mut warnings = Vec::new();
        for (i, r) in file.routes.iter().enumerate() {
            let route = Self::build(
                file,
                r,
                &format!("routes[{i}]"),
                routes.len(),
                Origin::Operator,
            )?;
            if routes.iter().any(|x| x.name == route.name) {
                return Err(ConfigError::key(
                    format!("routes[{i}].name"),
                    format!("`{}` is used by an earlier route", route.name),
                ));
            }
            routes.push(route);
        }
        let shadowing = routes.iter().position(Route::is_catch_all);
        for r in &preset {
            if routes.iter().any(|x| *x.name == *r.name) {
                continue;
            }
            let key = format!("preset {} route `{}`", file.preset.as_str(), r.name);
            let route = Self::build(file, r, &key, routes.len(), Origin::Preset(file.preset))?;
            if let Some(at) = shadowing {
                warnings.push(format!(
                    "routes[{at}] `{}` matches every request, so the {} preset's route `{}` after it is never used",
                    routes[at].name,
                    file.preset.as_str(),
                    route.name
                ));
            }
            routes.push(route);
        }
        if !routes.iter().any(Route::is_catch_all) {
            let fallback = RouteFile {
                name: if routes.iter().any(|r| &*r.name == "default") {
                    "default_fallback".into()
                } else {
                    "default".into()
                },
                methods: Vec::new(),
                path: None,
                path_prefix: None,
                graphql: None,
                idempotent: None,
                error_format: None,
                on_failure: OnFailure::Error,
                mode: SpoolMode::OnFailure,
                breaker: true,
                timeouts: TimeoutsOverride::default(),
                retry: RetryOverride::default(),
            };
            let n = routes.len();
            routes.push(Self::build(
                file,
                &fallback,
                "the catch-all route",
                n,
                Origin::Default,
            )?);
        }
        Ok((routes, warnings))
    }

    fn build(
        file: &FileConfig,
        r: &RouteFile,
        at: &str,
        i: usize,
        origin: Origin,
    ) -> Result<Route, ConfigError> {
        let key = |k: &str| format!("{at}.{k}");
        if r.name.trim().is_empty() || r.name.len() > 64 {
            return Err(ConfigError::key(key("name"), "must be 1..=64 characters"));
        }
        if !r
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::key(
                key("name"),
                "may contain only letters, digits, `_` and `-` (it becomes a metric label)",
            ));
        }
        let mut methods = Vec::with_capacity(r.methods.len());
        for m in &r.methods {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| ConfigError::key(key("methods"), format!("`{m}` is not a method")))?;
            methods.push(method);
        }
        let path = match (&r.path, &r.path_prefix) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::key(
                    key("path"),
                    "set either path or path_prefix, not both",
                ));
            }
            (Some(p), None) => PathMatch::Exact(check_path(p, &key("path"))?),
            (None, Some(p)) => {
                let p = check_path(p, &key("path_prefix"))?;
                if p == "/" {
                    PathMatch::Any
                } else {
                    PathMatch::Prefix(p)
                }
            }
            (None, None) => PathMatch::Any,
        };
        let graphql = match &r.graphql {
            None => None,
            Some(g) => {
                if let Some(fields) = &g.root_fields
                    && fields.is_empty()
                {
                    return Err(ConfigError::key(
                        key("graphql.root_fields"),
                        "must name at least one field (leave it out to match any)",
                    ));
                }
                Some(GraphqlMatch {
                    operation_type: g.operation_type,
                    operation_name: g.operation_name.clone(),
                    root_fields: g.root_fields.clone(),
                })
            }
        };
        let per_try = r.timeouts.per_try.unwrap_or(file.timeouts.per_try);
        let deadline = r.timeouts.deadline.unwrap_or(file.timeouts.deadline);
        validate_timeouts(&key("timeouts"), per_try, deadline)?;
        let mut retry = file.retry.clone();
        let o = &r.retry;
        if let Some(v) = o.max_attempts {
            retry.max_attempts = v;
        }
        if let Some(v) = o.backoff_base {
            retry.backoff_base = v;
        }
        if let Some(v) = o.backoff_max {
            retry.backoff_max = v;
        }
        if let Some(v) = o.max_replay_body {
            retry.max_replay_body = v;
        }
        if let Some(v) = o.retry_after_max {
            retry.retry_after_max = v;
        }
        validate_retry(&key("retry"), &retry)?;
        if r.on_failure == OnFailure::Spool {
            let mutation = r
                .graphql
                .as_ref()
                .is_some_and(|g| g.operation_type == Some(OperationType::Mutation));
            if !mutation {
                return Err(ConfigError::key(
                    key("on_failure"),
                    "`spool` needs `graphql = { operation_type = \"mutation\", ... }`: the sidecar answers a spooled write with the GraphQL success the client expects",
                ));
            }
            if !file.spool.store_credentials && file.spool.api_key.is_none() {
                return Err(ConfigError::key(
                    "spool.api_key",
                    "is required when spool.store_credentials = false (set it, or DATALAYER_SIDECAR_SPOOL_API_KEY): replays need a key",
                ));
            }
            if r.idempotent != Some(true) {
                return Err(ConfigError::key(
                    key("on_failure"),
                    "`spool` delivers at least once, so the route must set `idempotent = true`",
                ));
            }
            if deadline <= file.spool.commit_margin {
                return Err(ConfigError::key(
                    key("timeouts.deadline"),
                    "must be longer than spool.commit_margin on a spooling route",
                ));
            }
        }
        if r.mode == SpoolMode::WriteBehind && r.on_failure != OnFailure::Spool {
            return Err(ConfigError::key(
                key("mode"),
                "`write_behind` needs `on_failure = \"spool\"`",
            ));
        }
        Ok(Route {
            name: r.name.as_str().into(),
            index: i,
            origin,
            methods: methods.into_boxed_slice(),
            path,
            graphql,
            idempotent: r.idempotent,
            error_format: r.error_format,
            on_failure: r.on_failure,
            mode: r.mode,
            breaker: r.breaker,
            per_try,
            deadline,
            retry,
        })
    }
}

/// `2500ms`, `8500ms`, `3s`: as an operator would write it.
fn short(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The ordering key that orders a write against every other write.
pub const BARRIER_KEY: &str = "*";

fn check_path(p: &str, key: &str) -> Result<String, ConfigError> {
    if !p.starts_with('/') {
        return Err(ConfigError::key(key, format!("`{p}` must start with `/`")));
    }
    if p.contains('?') || p.contains('#') {
        return Err(ConfigError::key(key, "a path has no query or fragment"));
    }
    Ok(p.to_string())
}

/// The route table used at run time.
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Arc<[Arc<Route>]>,
}

impl Routes {
    /// Wrap validated routes (the last one matches everything).
    pub fn new(routes: Vec<Route>) -> Self {
        Routes {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// All routes, in match order.
    pub fn all(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Whether the body must be parsed as GraphQL to choose a route.
    pub fn needs_graphql(&self, method: &Method, path: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.graphql.is_some() && r.matches_head(method, path))
    }

    /// The first route matching the request.
    pub fn find(&self, method: &Method, path: &str, op: Option<&Operation>) -> &Arc<Route> {
        for r in self.routes.iter() {
            if !r.matches_head(method, path) {
                continue;
            }
            match (&r.graphql, op) {
                (None, _) => return r,
                (Some(g), Some(op)) if g.matches(op) => return r,
                _ => {}
            }
        }
        // `build_all` guarantees a catch-all at the end.
        &self.routes[self.routes.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use std::path::Path;

    /// Top-level keys (`preset = ...`) must come before the first table.
    fn config(extra: &str) -> Config {
        let (top, rest) = match extra.strip_prefix("preset") {
            Some(_) => extra.split_once('\n').unwrap_or((extra, "")),
            None => ("", extra),
        };
        let text = format!("{top}\n[upstream]\nurl = \"http://127.0.0.1:9\"\n{rest}");
        Config::from_toml_str(&text, Path::new("t"), &[], &Overrides::default()).unwrap()
    }

    fn routes(extra: &str) -> Routes {
        Routes::new(config(extra).routes)
    }

    fn op(q: &str) -> Arc<Operation> {
        crate::graphql::operation_of(serde_json::json!({ "query": q }).to_string().as_bytes())
            .unwrap()
    }

    fn name<'a>(r: &'a Routes, method: &Method, path: &str, op: Option<&Operation>) -> &'a str {
        &r.find(method, path, op).name
    }

    #[test]
    fn the_preset_protects_writes_with_no_routes_configured() {
        let r = routes("");
        let post = Method::POST;
        assert!(r.needs_graphql(&post, "/api/graphql"));
        assert!(!r.needs_graphql(&Method::GET, "/api/graphql"));
        let steps =
            op("mutation AddStep { a: ingestStep(id: 1) { ok } b: ingestStep(id: 2) { ok } }");
        let route = r.find(&post, "/api/graphql", Some(&steps));
        assert_eq!(&*route.name, "spooled_writes");
        assert!(route.spools() && route.is_idempotent(&post, Some(&steps)));
        let thread = op("mutation { upsertThread(id: \"t\", name: \"n\") { id } }");
        assert_eq!(
            name(&r, &post, "/api/graphql", Some(&thread)),
            "spooled_writes"
        );
        // Every root must be spoolable for the document to be spooled.
        let mixed = op("mutation M { a: ingestStep(id: 1) { ok } updateScore(id: 2) { id } }");
        let route = r.find(&post, "/api/graphql", Some(&mixed));
        assert_eq!(&*route.name, "idempotent_writes");
        assert!(!route.spools() && route.is_idempotent(&post, Some(&mixed)));
        let create =
            op("mutation M { a: ingestStep(id: 1) { ok } createScore(name: \"x\") { id } }");
        let route = r.find(&post, "/api/graphql", Some(&create));
        assert_eq!(&*route.name, "mutations");
        assert!(!route.is_idempotent(&post, Some(&create)));
        let q = op("query { steps { id } }");
        let route = r.find(&post, "/api/graphql", Some(&q));
        assert_eq!(&*route.name, "queries");
        assert!(route.is_idempotent(&post, Some(&q)));
        assert_eq!(name(&r, &post, "/api/upload/file", None), "upload");
        assert_eq!(name(&r, &post, "/api/my-project", None), "default");
        assert_eq!(name(&r, &Method::GET, "/", None), "default");
    }

    #[test]
    fn preset_none_is_the_catch_all_only() {
        let r = routes("preset = \"none\"\n");
        assert_eq!(r.all().len(), 1);
        assert_eq!(&*r.all()[0].name, "default");
        assert!(!r.all()[0].spools());
    }

    #[test]
    fn operator_routes_come_first_and_replace_preset_routes_by_name() {
        let c = config(
            "[[routes]]\nname = \"threads_fail_fast\"\nmethods = [\"POST\"]\npath = \"/api/graphql\"\ngraphql = { operation_type = \"mutation\", root_fields = [\"upsertThread\"] }\nidempotent = false\n\n[[routes]]\nname = \"queries\"\nmethods = [\"POST\"]\npath = \"/api/graphql\"\ngraphql = { operation_type = \"query\" }\nretry = { max_attempts = 1 }\n",
        );
        let r = Routes::new(c.routes.clone());
        let post = Method::POST;
        let thread = op("mutation { upsertThread(id: \"t\") { id } }");
        assert_eq!(
            name(&r, &post, "/api/graphql", Some(&thread)),
            "threads_fail_fast"
        );
        // The rest of the preset still applies.
        let steps = op("mutation { ingestStep(id: \"s\") { ok } }");
        assert_eq!(
            name(&r, &post, "/api/graphql", Some(&steps)),
            "spooled_writes"
        );
        // One `queries`, the operator's, where the operator put it.
        let queries: Vec<_> = r.all().iter().filter(|x| &*x.name == "queries").collect();
        assert_eq!(queries.len(), 1);
        assert_eq!(queries[0].index, 1);
        assert_eq!(queries[0].origin, Origin::Operator);
        assert_eq!(queries[0].retry.max_attempts, 1);
        assert!(c.warnings.is_empty());
        let printed = c.to_toml();
        assert!(printed.contains("threads_fail_fast [config]"), "{printed}");
        assert!(printed.contains("spooled_writes [literalai]"), "{printed}");
        assert!(printed.contains("default [catch-all]"), "{printed}");
    }

    #[test]
    fn a_catch_all_before_the_preset_is_warned_about() {
        let c = config("[[routes]]\nname = \"everything\"\npath_prefix = \"/\"\n");
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("everything") && w.contains("spooled_writes")),
            "{:?}",
            c.warnings
        );
        assert!(c.to_toml().contains("# warning:"));
    }

    #[test]
    fn order_keys_name_the_entity_and_mark_barriers() {
        let r = routes("");
        let route = r.find(
            &Method::POST,
            "/api/graphql",
            Some(&op("mutation { ingestStep(id: \"s\") { ok } }")),
        );
        let steps =
            op("mutation { a: ingestStep(id: \"s\") { ok } b: deleteStep(id: \"s\") { id } }");
        let ids = vec![Some("s".to_string()), Some("s".to_string())];
        assert_eq!(&*route.order_keys(&steps, &ids), ["step:s", "step:s"]);
        let del = op("mutation { deleteThread(id: \"t\") { id } }");
        assert_eq!(
            &*route.order_keys(&del, &[Some("t".to_string())]),
            ["thread:t", BARRIER_KEY]
        );
        // No usable id: ordered against everything.
        assert_eq!(&*route.order_keys(&steps, &[None, None]), [BARRIER_KEY]);
    }

    #[test]
    fn spool_route_must_be_idempotent() {
        let text = "[upstream]\nurl = \"http://127.0.0.1:9\"\n[[routes]]\nname = \"s\"\non_failure = \"spool\"\n";
        let err =
            Config::from_toml_str(text, Path::new("t"), &[], &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("routes[0].on_failure"), "{err}");
    }

    #[test]
    fn bad_route_keys_are_named() {
        for (extra, key) in [
            (
                "[[routes]]\nname = \"a\"\npath = \"api\"\n",
                "routes[0].path",
            ),
            (
                "[[routes]]\nname = \"a\"\nmethods = [\"GE T\"]\n",
                "routes[0].methods",
            ),
            (
                "[[routes]]\nname = \"a\"\n[[routes]]\nname = \"a\"\n",
                "routes[1].name",
            ),
            (
                "[[routes]]\nname = \"a\"\nretry = { max_attempts = 0 }\n",
                "routes[0].retry.max_attempts",
            ),
            ("preset = \"literal\"\n", "preset"),
        ] {
            let text = if extra.starts_with("preset") {
                format!("{extra}[upstream]\nurl = \"http://127.0.0.1:9\"\n")
            } else {
                format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n{extra}")
            };
            let err = Config::from_toml_str(&text, Path::new("t"), &[], &Overrides::default())
                .unwrap_err();
            assert!(err.to_string().contains(key), "{extra}: {err}");
        }
    }
}

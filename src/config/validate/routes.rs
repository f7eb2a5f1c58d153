//! The route table: every `[[routes]]` entry checked and built, in order,
//! then the preset's routes and a catch-all.
//!
//! Separate because it is built from the file shape in
//! [`crate::route::file`], which knows nothing of the config (that keeps the
//! two modules free of an import cycle), and because each route resolves
//! its own timeouts and retry policy against the global sections.

use std::time::Duration;

use http::Method;

use super::super::ConfigError;
use super::super::schema::{FileConfig, SpoolBackendKind};
use super::policy::{retry, timeouts};
use crate::graphql::OperationType;
use crate::retry::RetryParams;
use crate::route::file::{
    OnFailure, Preset, RetryOverride, RouteFile, SpoolMode, TimeoutsOverride,
};
use crate::route::{GraphqlMatch, Origin, PathMatch, Route, literalai};

/// Validate every `[[routes]]` entry, in order, then add the preset's
/// routes (those the operator did not replace by name) and a catch-all
/// `default` route unless one matches everything already. Returns the
/// table and warnings for the operator.
pub(super) fn routes(file: &FileConfig) -> Result<(Vec<Route>, Vec<String>), ConfigError> {
    let preset = match file.preset {
        Preset::Literalai => literalai::routes(file.timeouts.per_try, file.retry.max_attempts),
        Preset::None => Vec::new(),
    };
    let mut routes: Vec<Route> = Vec::with_capacity(file.routes.len() + preset.len() + 1);
    operator_routes(file, &mut routes)?;
    let warnings = preset_routes(file, &preset, &mut routes)?;
    if !routes.iter().any(Route::is_catch_all) {
        let fallback = catch_all(&routes);
        let n = routes.len();
        routes.push(route(
            file,
            &fallback,
            "the catch-all route",
            n,
            Origin::Default,
        )?);
    }
    Ok((routes, warnings))
}

/// The operator's `[[routes]]`, each name used once.
fn operator_routes(file: &FileConfig, routes: &mut Vec<Route>) -> Result<(), ConfigError> {
    for (i, r) in file.routes.iter().enumerate() {
        let route = route(
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
    Ok(())
}

/// The preset's routes the operator did not replace by name, after the
/// operator's; a warning for each one an operator catch-all hides.
fn preset_routes(
    file: &FileConfig,
    preset: &[RouteFile],
    routes: &mut Vec<Route>,
) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    let shadowing = routes.iter().position(Route::is_catch_all);
    for r in preset {
        if routes.iter().any(|x| *x.name == *r.name) {
            continue;
        }
        let key = format!("preset {} route `{}`", file.preset.as_str(), r.name);
        let built = route(file, r, &key, routes.len(), Origin::Preset(file.preset))?;
        if let Some(at) = shadowing {
            warnings.push(format!(
                "routes[{at}] `{}` matches every request, so the {} preset's route `{}` after it is never used",
                routes[at].name,
                file.preset.as_str(),
                built.name
            ));
        }
        routes.push(built);
    }
    Ok(warnings)
}

/// The route that matches what nothing else does: `default`, or
/// `default_fallback` when an operator's route already has that name.
fn catch_all(routes: &[Route]) -> RouteFile {
    RouteFile {
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
    }
}

/// One route, checked in the order its keys are reported (the first error
/// wins), where `at` is the key prefix errors name and `i` its position in
/// the table.
fn route(
    file: &FileConfig,
    r: &RouteFile,
    at: &str,
    i: usize,
    origin: Origin,
) -> Result<Route, ConfigError> {
    check_name(r, at)?;
    let methods = methods(r, at)?;
    let path = path(r, at)?;
    let graphql = graphql(r, at)?;
    let per_try = r.timeouts.per_try.unwrap_or(file.timeouts.per_try);
    let deadline = r.timeouts.deadline.unwrap_or(file.timeouts.deadline);
    timeouts(&format!("{at}.timeouts"), per_try, deadline)?;
    let retry = route_retry(file, r, at)?;
    if r.on_failure == OnFailure::Spool {
        check_spooling(file, r, deadline, at)?;
    }
    if r.mode == SpoolMode::WriteBehind && r.on_failure != OnFailure::Spool {
        return Err(ConfigError::key(
            format!("{at}.mode"),
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
        mode: effective_mode(file, r),
        breaker: r.breaker,
        per_try,
        deadline,
        retry,
        vocabulary: file.preset.vocabulary(),
    })
}

/// A route's name becomes a metric label: short, and of label characters.
fn check_name(r: &RouteFile, at: &str) -> Result<(), ConfigError> {
    if r.name.trim().is_empty() || r.name.len() > 64 {
        return Err(ConfigError::key(
            format!("{at}.name"),
            "must be 1..=64 characters",
        ));
    }
    if !r
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConfigError::key(
            format!("{at}.name"),
            "may contain only letters, digits, `_` and `-` (it becomes a metric label)",
        ));
    }
    Ok(())
}

/// The methods a route matches, case-insensitively as written.
fn methods(r: &RouteFile, at: &str) -> Result<Vec<Method>, ConfigError> {
    r.methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                ConfigError::key(format!("{at}.methods"), format!("`{m}` is not a method"))
            })
        })
        .collect()
}

/// The path a route matches: exact, a prefix, or any (a prefix of `/`).
fn path(r: &RouteFile, at: &str) -> Result<PathMatch, ConfigError> {
    Ok(match (&r.path, &r.path_prefix) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::key(
                format!("{at}.path"),
                "set either path or path_prefix, not both",
            ));
        }
        (Some(p), None) => PathMatch::Exact(check_path(p, &format!("{at}.path"))?),
        (None, Some(p)) => {
            let p = check_path(p, &format!("{at}.path_prefix"))?;
            if p == "/" {
                PathMatch::Any
            } else {
                PathMatch::Prefix(p)
            }
        }
        (None, None) => PathMatch::Any,
    })
}

fn check_path(p: &str, key: &str) -> Result<String, ConfigError> {
    if !p.starts_with('/') {
        return Err(ConfigError::key(key, format!("`{p}` must start with `/`")));
    }
    if p.contains('?') || p.contains('#') {
        return Err(ConfigError::key(key, "a path has no query or fragment"));
    }
    Ok(p.to_string())
}

/// The GraphQL operation a route matches, if it names one.
fn graphql(r: &RouteFile, at: &str) -> Result<Option<GraphqlMatch>, ConfigError> {
    let Some(g) = &r.graphql else {
        return Ok(None);
    };
    if let Some(fields) = &g.root_fields
        && fields.is_empty()
    {
        return Err(ConfigError::key(
            format!("{at}.graphql.root_fields"),
            "must name at least one field (leave it out to match any)",
        ));
    }
    Ok(Some(GraphqlMatch {
        operation_type: g.operation_type,
        operation_name: g.operation_name.clone(),
        root_fields: g.root_fields.clone(),
    }))
}

/// The global `[retry]` with the route's overrides on top, checked as one.
fn route_retry(file: &FileConfig, r: &RouteFile, at: &str) -> Result<RetryParams, ConfigError> {
    let mut retry_file = file.retry.clone();
    let o = &r.retry;
    if let Some(v) = o.max_attempts {
        retry_file.max_attempts = v;
    }
    if let Some(v) = o.backoff_base {
        retry_file.backoff_base = v;
    }
    if let Some(v) = o.backoff_max {
        retry_file.backoff_max = v;
    }
    if let Some(v) = o.max_replay_body {
        retry_file.max_replay_body = v;
    }
    if let Some(v) = o.retry_after_max {
        retry_file.retry_after_max = v;
    }
    retry(&format!("{at}.retry"), &retry_file)
}

/// What `on_failure = "spool"` needs: a mutation route (the sidecar answers
/// a spooled write with the success the client expects), a key replays can
/// send, idempotence (delivery is at least once), and a deadline that
/// leaves room for the commit.
fn check_spooling(
    file: &FileConfig,
    r: &RouteFile,
    deadline: Duration,
    at: &str,
) -> Result<(), ConfigError> {
    let mutation = r
        .graphql
        .as_ref()
        .is_some_and(|g| g.operation_type == Some(OperationType::Mutation));
    if !mutation {
        return Err(ConfigError::key(
            format!("{at}.on_failure"),
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
            format!("{at}.on_failure"),
            "`spool` delivers at least once, so the route must set `idempotent = true`",
        ));
    }
    if deadline <= file.spool.commit_margin {
        return Err(ConfigError::key(
            format!("{at}.timeouts.deadline"),
            "must be longer than spool.commit_margin on a spooling route",
        ));
    }
    Ok(())
}

/// With the shared store, the fleet's one order is the order of commits to
/// it: every spooled write goes through it, so a spooling route is
/// write-behind whatever it says.
fn effective_mode(file: &FileConfig, r: &RouteFile) -> SpoolMode {
    if r.on_failure == OnFailure::Spool && file.spool.backend == SpoolBackendKind::Postgres {
        SpoolMode::WriteBehind
    } else {
        r.mode
    }
}

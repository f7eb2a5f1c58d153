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
pub mod file;
pub mod literalai;
pub mod vocabulary;

pub use file::{ErrorFormat, OnFailure, Preset, SpoolMode};
pub use vocabulary::Vocabulary;

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::graphql::{Operation, OperationType};
use crate::pacing::RetryParams;

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

/// What a route requires of the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Any path.
    Any,
    /// Exactly this path.
    Exact(String),
    /// This prefix, segment-wise.
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

/// What a route requires of the parsed GraphQL operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphqlMatch {
    /// The operation's type, if required.
    pub operation_type: Option<OperationType>,
    /// The operation's name, if required.
    pub operation_name: Option<String>,
    /// Every root field must be one of these, if set.
    pub root_fields: Option<Vec<String>>,
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
    /// Methods matched; empty matches any.
    pub methods: Box<[Method]>,
    /// The path condition.
    pub path: PathMatch,
    /// Conditions on the GraphQL operation.
    pub graphql: Option<GraphqlMatch>,
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
    /// Retry policy (global settings with this route's overrides), built.
    pub retry: RetryParams,
    /// What the table's preset knows of the API's writes (ordering keys,
    /// barriers).
    pub vocabulary: &'static dyn Vocabulary,
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
    /// root field (see [`vocabulary::order_key`]), and `*` — ordered against
    /// every other write — when a root field is a barrier.
    ///
    /// None at all when a root field names no usable id: such a write is
    /// not spooled. Without a key it cannot be ordered against the other
    /// versions of what it writes, so acknowledging it from the spool could
    /// let it overwrite a newer version; ordering it against every write
    /// (a barrier) would make one such client serialize all traffic. It is
    /// delivered live, with the route's retries, and a failure reaches the
    /// app as a structured error.
    pub fn order_keys(&self, op: &Operation, root_ids: &[Option<String>]) -> Box<[String]> {
        let mut keys = Vec::with_capacity(op.root_fields.len());
        let mut barrier = false;
        for (i, f) in op.root_fields.iter().enumerate() {
            let Some(id) = root_ids.get(i).and_then(Option::as_deref) else {
                return Box::default();
            };
            let writes = self.vocabulary.writes(&f.name);
            keys.push(vocabulary::key_of(writes, &f.name, id));
            barrier |= writes.barrier;
        }
        if barrier {
            keys.push(BARRIER_KEY.to_string());
        }
        keys.into_boxed_slice()
    }

    /// The ordering keys of each root field on its own, in field order:
    /// what the field's write holds when it is spooled as an entry of its
    /// own (see [`Route::order_keys`]).
    pub fn field_keys(&self, op: &Operation, root_ids: &[Option<String>]) -> Vec<Vec<String>> {
        op.root_fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut keys = Vec::with_capacity(2);
                let id = root_ids.get(i).and_then(Option::as_deref);
                let writes = self.vocabulary.writes(&f.name);
                if let Some(id) = id {
                    keys.push(vocabulary::key_of(writes, &f.name, id));
                }
                if id.is_none() || writes.barrier {
                    keys.push(BARRIER_KEY.to_string());
                }
                keys
            })
            .collect()
    }

    /// Whether the route matches every request.
    pub fn is_catch_all(&self) -> bool {
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

/// Of a batch's fields in order (each with its ordering keys), mark open
/// every field that must follow an open earlier one: a later version of a
/// key still open, a barrier after an open field, anything after an open
/// barrier, and a field with no keys (which orders like a barrier). A field
/// so held stays with the open one — kept, sent again, stored after it —
/// whatever its own answer said, so the version the backend applies last
/// is the one written last. One pass, whatever the number of fields. The
/// retry policy, the spool layer and the replay worker all settle a batch
/// through this, so the rule lives here only.
pub fn hold_behind<K: AsRef<[String]>>(open: &mut [bool], keys: &[K]) {
    let mut open_keys: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut all_follow = false;
    for (i, keys) in keys.iter().enumerate().take(open.len()) {
        let keys = keys.as_ref();
        let barrier = keys.is_empty() || keys.iter().any(|k| k == BARRIER_KEY);
        if !open[i]
            && (all_follow
                || (barrier && !open_keys.is_empty())
                || keys.iter().any(|k| open_keys.contains(k.as_str())))
        {
            open[i] = true;
        }
        if open[i] {
            all_follow |= barrier;
            open_keys.extend(keys.iter().map(String::as_str));
        }
    }
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

    /// The table's vocabulary: every route of one table is built with its
    /// preset's.
    pub fn vocabulary(&self) -> &'static dyn Vocabulary {
        self.routes
            .last()
            .map_or(&vocabulary::Generic, |r| r.vocabulary)
    }

    /// The deadline of the route called `name`; the longest of any
    /// spooling route when none is (a stored entry of a route a reload
    /// removed) — the deadlines `spool.lease` is checked against.
    pub fn deadline_of(&self, name: &str) -> Duration {
        self.routes
            .iter()
            .find(|r| &*r.name == name)
            .map(|r| r.deadline)
            .or_else(|| {
                self.routes
                    .iter()
                    .filter(|r| r.spools())
                    .map(|r| r.deadline)
                    .max()
            })
            .unwrap_or(Duration::ZERO)
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
    fn writes_are_ordered_by_the_same_keys_whatever_the_preset() {
        let write =
            op("mutation { a: deleteStep(id: \"s\") { id } b: deleteThread(id: \"t\") { id } }");
        let ids = [Some("s".to_string()), Some("t".to_string())];
        // A queue spooled under one preset keeps its keys after a change
        // of preset: the same write must get the same keys.
        for table in [routes(""), routes("preset = \"none\"\n")] {
            let route = table.find(&Method::POST, "/api/graphql", Some(&write));
            assert_eq!(
                &*route.order_keys(&write, &ids),
                ["step:s", "thread:t", BARRIER_KEY]
            );
            assert_eq!(table.vocabulary().joinable_field(), Some("ingestStep"));
        }
        // The generic vocabulary, for a preset without a table of its own.
        assert_eq!(
            vocabulary::order_key(&vocabulary::Generic, "deleteStep", "s"),
            "deleteStep:s"
        );
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
        // No usable id: no keys, so not spooled (see `order_keys`).
        assert!(
            route
                .order_keys(&steps, &[None, Some("s".into())])
                .is_empty()
        );
    }

    #[test]
    fn a_later_version_of_an_open_step_is_held_with_it() {
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let keys = [
            k(&["step:s"]),
            k(&["step:t"]),
            k(&["step:s"]),
            k(&["thread:x", BARRIER_KEY]),
            k(&["step:u"]),
        ];
        let mut open = [true, false, false, false, false];
        hold_behind(&mut open, &keys);
        // s's later version, then the barrier after it, then all after that.
        assert_eq!(open, [true, false, true, true, true]);
        let mut open = [false, true, false, false, false];
        hold_behind(&mut open, &keys);
        assert_eq!(open, [false, true, false, true, true]);
        let mut open = [false; 5];
        hold_behind(&mut open, &keys);
        assert_eq!(open, [false; 5]);
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

//! Which GraphQL operation a request runs: its type, name and root fields
//! (with their response aliases).
//!
//! The request JSON is read with a borrowing deserializer that keeps only
//! `query` and `operationName` and skips `variables` without building them;
//! the query text is parsed with `graphql-parser` (never with regexes) and the
//! summary is remembered per query text, because a client such as the
//! LiteralAI SDK sends a handful of distinct documents over and over.

mod scan;
pub mod split;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use graphql_parser::query::{
    Definition, Document, OperationDefinition, Selection, SelectionSet, Value,
};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::InvalidGraphql;

/// Query texts remembered per thread; past this the cache starts over.
const CACHE_ENTRIES: usize = 512;
/// Bytes of query text (and summaries) remembered per thread; past this the
/// cache starts over. A document larger than an eighth of it is parsed
/// each time rather than remembered.
const CACHE_BYTES: usize = 1024 * 1024;
/// Fragment spreads followed at the root before a document is refused.
const MAX_FRAGMENT_DEPTH: usize = 16;
/// The most root fields an operation may have, whatever the config says
/// (`limits.max_root_fields` may only be lower): fragment spreads at the
/// root could otherwise expand a small document into millions of fields.
pub const MAX_ROOT_FIELDS: usize = 10_000;
/// Selections (fields and fragment spreads) walked at the root of one
/// operation before it is refused: a spread repeated at every level of
/// nesting multiplies the walk without adding fields.
const MAX_ROOT_SELECTIONS: usize = 4 * MAX_ROOT_FIELDS;

/// The three GraphQL operation types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationType {
    /// A read.
    Query,
    /// A write.
    Mutation,
    /// A stream of events.
    Subscription,
}

impl OperationType {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationType::Query => "query",
            OperationType::Mutation => "mutation",
            OperationType::Subscription => "subscription",
        }
    }
}

/// An argument's value as written in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// `id: $name`: from the request's variables.
    Variable(Box<str>),
    /// A literal (`id: "abc"`, `first: 10`, `tags: ["a"]`), as JSON.
    Literal(serde_json::Value),
}

/// A field selected at the root of the operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootField {
    /// The key it appears under in `data` (the alias, or the name).
    pub response_key: Box<str>,
    /// The schema field, e.g. `ingestStep`.
    pub name: Box<str>,
    /// Its arguments, in document order.
    pub args: Box<[(Box<str>, ArgValue)]>,
    /// The fields selected on its result, as (response key, field name);
    /// empty when the result is a scalar.
    pub selection: Box<[(Box<str>, Box<str>)]>,
}

impl RootField {
    /// The argument called `name`, if the field has one.
    pub fn arg(&self, name: &str) -> Option<&ArgValue> {
        self.args.iter().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }
}

/// What a GraphQL request does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Query, mutation or subscription.
    pub kind: OperationType,
    /// The operation's name, if it has one.
    pub name: Option<Box<str>>,
    /// Root fields, fragments resolved, in document order.
    pub root_fields: Box<[RootField]>,
}

impl Operation {
    /// The name for logs, `-` when anonymous.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or("-")
    }
}

/// The request fields the sidecar reads. `query` and `variables` are kept
/// as raw JSON borrowed from the body: the query text is looked up in the
/// cache by its raw (still escaped) form, so a repeated query is neither
/// unescaped nor copied; variables are read only when a route needs ids.
#[derive(Deserialize)]
struct RequestFields<'a> {
    #[serde(borrow, default)]
    query: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "operationName")]
    operation_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    variables: Option<&'a RawValue>,
}

/// A parsed document: every operation in it, or why it is invalid.
type Parsed = Result<Arc<[Arc<Operation>]>, String>;

type Cache = HashMap<Box<str>, Parsed, foldhash::fast::FixedState>;

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    /// What [`CACHE`] holds, by [`entry_bytes`].
    static CACHE_HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A GraphQL request: the operation it runs and its variables (borrowed).
#[derive(Debug)]
pub struct GraphqlRequest<'a> {
    /// The operation selected by the request.
    pub operation: Arc<Operation>,
    variables: Option<&'a str>,
}

impl GraphqlRequest<'_> {
    /// Each root field's `id` argument (looked up in `variables` when it is
    /// a variable), in field order; `None` where a field has none, or its
    /// value is not a string or an integer.
    pub fn root_ids(&self) -> Vec<Option<String>> {
        ids_in(self.variables, &self.operation)
    }

    /// Members of the request's `variables` (0 when absent or not an
    /// object). Skims the text without building the values.
    pub fn variable_count(&self) -> usize {
        let Some(vars) = self.variables else {
            return 0;
        };
        let mut n = 0;
        if scan::fields(vars, |_, _| n += 1).is_some() {
            return n;
        }
        // What the scanner does not read, serde does (the values skipped).
        serde_json::from_str::<HashMap<String, IgnoredAny>>(vars).map_or(0, |m| m.len())
    }
}

/// Each root field's arguments with variables resolved, in field order (for
/// answers built by the sidecar itself; off the hot path). Variables the
/// request does not define resolve to `null`, as GraphQL says.
pub fn resolved_args(body: &[u8], op: &Operation) -> Vec<Vec<(Box<str>, serde_json::Value)>> {
    let variables: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| match v {
                serde_json::Value::Object(mut m) => match m.remove("variables") {
                    Some(serde_json::Value::Object(vars)) => Some(vars),
                    _ => None,
                },
                _ => None,
            })
            .unwrap_or_default();
    op.root_fields
        .iter()
        .map(|f| {
            f.args
                .iter()
                .map(|(name, v)| {
                    let value = match v {
                        ArgValue::Variable(var) => variables
                            .get(&**var)
                            .cloned()
                            .unwrap_or(serde_json::Value::Null),
                        ArgValue::Literal(l) => l.clone(),
                    };
                    (name.clone(), value)
                })
                .collect()
        })
        .collect()
}

/// Bytes the calling thread's cache holds, counted afresh (tests).
#[cfg(test)]
fn cache_bytes() -> usize {
    CACHE.with(|c| c.borrow().iter().map(|(k, v)| entry_bytes(k, v)).sum())
}

/// What one cached document costs: its text and, roughly, its summary.
fn entry_bytes(key: &str, parsed: &Parsed) -> usize {
    let summary = match parsed {
        Ok(ops) => ops
            .iter()
            .map(|op| {
                std::mem::size_of::<Operation>()
                    + op.root_fields
                        .iter()
                        .map(|f| {
                            std::mem::size_of::<RootField>()
                                + f.name.len()
                                + f.response_key.len()
                                + f.args.iter().map(|(n, _)| n.len() + 64).sum::<usize>()
                                + f.selection
                                    .iter()
                                    .map(|(k, n)| k.len() + n.len() + 32)
                                    .sum::<usize>()
                        })
                        .sum::<usize>()
            })
            .sum(),
        Err(e) => e.len(),
    };
    key.len() + summary + 64
}

/// Parse a GraphQL-over-HTTP request body.
pub fn parse_request(body: &[u8]) -> Result<GraphqlRequest<'_>, InvalidGraphql> {
    if body.first().is_some_and(|b| *b == b'[') {
        return Err(InvalidGraphql(
            "batched requests (a JSON array) are not supported; send one operation per request"
                .into(),
        ));
    }
    let (query, operation_name, variables): (Option<&str>, Option<Cow<'_, str>>, Option<&str>) =
        match scan::scan(body) {
            Some(spans) => {
                let name = match spans.operation_name {
                    None => None,
                    Some(raw) => serde_json::from_str::<Option<String>>(raw)
                        .map_err(|_| InvalidGraphql("`operationName` is not a string".into()))?
                        .map(Cow::Owned),
                };
                (spans.query, name, spans.variables)
            }
            None => {
                let fields: RequestFields<'_> = serde_json::from_slice(body).map_err(|e| {
                    InvalidGraphql(format!("body is not a GraphQL request object: {e}"))
                })?;
                (
                    fields.query.map(RawValue::get),
                    fields.operation_name,
                    fields.variables.map(RawValue::get),
                )
            }
        };
    let raw = query.ok_or_else(|| InvalidGraphql("the `query` field is missing".into()))?;
    let ops = CACHE.with(|cache| {
        if let Some(hit) = cache.borrow().get(raw) {
            return hit.clone();
        }
        let parsed = match serde_json::from_str::<String>(raw) {
            Ok(query) => summarize(&query),
            Err(_) => Err("the `query` field is not a string".to_string()),
        };
        let cost = entry_bytes(raw, &parsed);
        if cost > CACHE_BYTES / 8 {
            return parsed;
        }
        let mut cache = cache.borrow_mut();
        CACHE_HELD.with(|held| {
            if cache.len() >= CACHE_ENTRIES || held.get() + cost > CACHE_BYTES {
                cache.clear();
                held.set(0);
            }
            held.set(held.get() + cost);
        });
        cache.insert(raw.into(), parsed.clone());
        parsed
    });
    let ops = ops.map_err(InvalidGraphql)?;
    Ok(GraphqlRequest {
        operation: select(&ops, operation_name.as_deref())?,
        variables: variables.filter(|v| *v != "null"),
    })
}

/// The operation a GraphQL-over-HTTP request body runs.
pub fn operation_of(body: &[u8]) -> Result<Arc<Operation>, InvalidGraphql> {
    parse_request(body).map(|r| r.operation)
}

fn select(ops: &[Arc<Operation>], name: Option<&str>) -> Result<Arc<Operation>, InvalidGraphql> {
    match name {
        Some(wanted) => ops
            .iter()
            .find(|op| op.name.as_deref() == Some(wanted))
            .cloned()
            .ok_or_else(|| {
                InvalidGraphql(format!("operationName `{wanted}` is not in the document"))
            }),
        None if ops.len() == 1 => Ok(ops[0].clone()),
        None => Err(InvalidGraphql(
            "the document has several operations and no operationName".into(),
        )),
    }
}

/// Each root field's `id` argument, given the request's raw `variables`.
/// Reads only the variables it needs and skips the rest without building
/// them.
fn ids_in(variables: Option<&str>, op: &Operation) -> Vec<Option<String>> {
    let wanted: Vec<&str> = op
        .root_fields
        .iter()
        .filter_map(|f| match f.arg("id") {
            Some(ArgValue::Variable(v)) => Some(&**v),
            _ => None,
        })
        .collect();
    // By name: linear in the variables, whatever the number of fields. A
    // variable named by several fields serves the first; the others look
    // it up below.
    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(wanted.len());
    for (i, w) in wanted.iter().enumerate() {
        by_name.entry(*w).or_insert(i);
    }
    let mut found: Vec<(usize, String)> = Vec::new();
    if let (false, Some(vars)) = (wanted.is_empty(), variables) {
        let scanned = scan::fields(vars, |key, raw| {
            if let Some(&i) = by_name.get(key) {
                let value = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                    Some(plain) if !plain.contains('\\') => Some(plain.to_string()),
                    Some(_) => serde_json::from_str::<String>(raw).ok(),
                    None if raw.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
                        Some(raw.to_string())
                    }
                    None => None,
                };
                if let Some(v) = value {
                    found.push((i, v));
                }
            }
        });
        if scanned.is_none() {
            found.clear();
            let mut de = serde_json::Deserializer::from_str(vars);
            let _ = VarsSeed {
                wanted: &by_name,
                found: &mut found,
            }
            .deserialize(&mut de);
        }
    }
    // The value of each wanted variable, by its first position.
    let mut value: Vec<Option<String>> = vec![None; wanted.len()];
    for (i, v) in found {
        if let Some(slot) = value.get_mut(i) {
            slot.get_or_insert(v);
        }
    }
    let mut ids = Vec::with_capacity(op.root_fields.len());
    for f in op.root_fields.iter() {
        match f.arg("id") {
            Some(ArgValue::Literal(serde_json::Value::String(s))) => ids.push(Some(s.clone())),
            Some(ArgValue::Literal(serde_json::Value::Number(n))) if n.is_i64() || n.is_u64() => {
                ids.push(Some(n.to_string()))
            }
            Some(ArgValue::Variable(v)) => {
                ids.push(by_name.get(&**v).and_then(|&i| value[i].clone()));
            }
            _ => ids.push(None),
        }
    }
    ids
}

struct VarsSeed<'w, 'f> {
    wanted: &'w HashMap<&'w str, usize>,
    found: &'f mut Vec<(usize, String)>,
}

impl<'de> DeserializeSeed<'de> for VarsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for VarsSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GraphQL variables")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.wanted.get(&*key).copied() {
                Some(i) => match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(s) => self.found.push((i, s)),
                    serde_json::Value::Number(n) => self.found.push((i, n.to_string())),
                    _ => {}
                },
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Parse a query document and summarize every operation in it.
fn summarize(query: &str) -> Parsed {
    let doc: Document<'_, &str> = graphql_parser::parse_query(query).map_err(|e| {
        // The parser's message spans lines; one line reads better in a log.
        e.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    })?;
    // By name, once per document: a spread looks its fragment up in
    // constant time.
    let fragments: HashMap<&str, &SelectionSet<'_, &str>> = doc
        .definitions
        .iter()
        .filter_map(|d| match d {
            Definition::Fragment(f) => Some((f.name, &f.selection_set)),
            _ => None,
        })
        .collect();
    let mut ops = Vec::new();
    for def in &doc.definitions {
        let Definition::Operation(op) = def else {
            continue;
        };
        let (kind, name, set) = match op {
            OperationDefinition::SelectionSet(s) => (OperationType::Query, None, s),
            OperationDefinition::Query(q) => (OperationType::Query, q.name, &q.selection_set),
            OperationDefinition::Mutation(m) => (OperationType::Mutation, m.name, &m.selection_set),
            OperationDefinition::Subscription(s) => {
                (OperationType::Subscription, s.name, &s.selection_set)
            }
        };
        let mut root_fields = Vec::new();
        let mut walk = Walk {
            fragments: &fragments,
            selections: 0,
        };
        walk.collect(set, 0, &mut root_fields)?;
        if root_fields.len() > MAX_ROOT_FIELDS {
            return Err(format!(
                "the operation has {} root fields, more than {MAX_ROOT_FIELDS}",
                root_fields.len()
            ));
        }
        ops.push(Arc::new(Operation {
            kind,
            name: name.map(Into::into),
            root_fields: root_fields.into_boxed_slice(),
        }));
    }
    if ops.is_empty() {
        return Err("the document has no operation".into());
    }
    Ok(ops.into())
}

/// The walk over an operation's root selections, fragments resolved.
struct Walk<'d, 'a> {
    fragments: &'d HashMap<&'a str, &'d SelectionSet<'a, &'a str>>,
    selections: usize,
}

impl<'a> Walk<'_, 'a> {
    fn collect(
        &mut self,
        set: &SelectionSet<'a, &'a str>,
        depth: usize,
        out: &mut Vec<RootField>,
    ) -> Result<(), String> {
        if depth > MAX_FRAGMENT_DEPTH {
            return Err("fragments nest too deeply at the root (a cycle?)".into());
        }
        self.selections += set.items.len();
        if self.selections > MAX_ROOT_SELECTIONS || out.len() > MAX_ROOT_FIELDS {
            return Err(format!(
                "the operation has more than {MAX_ROOT_FIELDS} root fields (fragments expanded)"
            ));
        }
        collect_root_fields(self, set, depth, out)
    }
}

fn collect_root_fields<'a>(
    walk: &mut Walk<'_, 'a>,
    set: &SelectionSet<'a, &'a str>,
    depth: usize,
    out: &mut Vec<RootField>,
) -> Result<(), String> {
    for item in &set.items {
        match item {
            Selection::Field(f) => out.push(RootField {
                response_key: f.alias.unwrap_or(f.name).into(),
                name: f.name.into(),
                args: f
                    .arguments
                    .iter()
                    .map(|(n, v)| ((*n).into(), arg_value(v)))
                    .collect(),
                selection: f
                    .selection_set
                    .items
                    .iter()
                    .filter_map(|s| match s {
                        Selection::Field(sub) => {
                            Some((sub.alias.unwrap_or(sub.name).into(), sub.name.into()))
                        }
                        _ => None,
                    })
                    .collect(),
            }),
            Selection::InlineFragment(inline) => {
                walk.collect(&inline.selection_set, depth + 1, out)?
            }
            Selection::FragmentSpread(spread) => {
                let frag = walk
                    .fragments
                    .get(spread.fragment_name)
                    .copied()
                    .ok_or_else(|| format!("fragment `{}` is not defined", spread.fragment_name))?;
                walk.collect(frag, depth + 1, out)?;
            }
        }
    }
    Ok(())
}

/// An argument as written: a variable by name, anything else as JSON.
fn arg_value<'a>(v: &Value<'a, &'a str>) -> ArgValue {
    match v {
        Value::Variable(name) => ArgValue::Variable((*name).into()),
        other => ArgValue::Literal(literal(other)),
    }
}

fn literal<'a>(v: &Value<'a, &'a str>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        // A variable nested in a literal list or object: unknown here.
        Value::Variable(_) | Value::Null => J::Null,
        Value::Int(n) => n.as_i64().map_or(J::Null, J::from),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::String(s) => J::String(s.clone()),
        Value::Boolean(b) => J::Bool(*b),
        Value::Enum(e) => J::String((*e).to_string()),
        Value::List(items) => J::Array(items.iter().map(literal).collect()),
        Value::Object(map) => J::Object(
            map.iter()
                .map(|(k, v)| ((*k).to_string(), literal(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(body: &str) -> Result<Arc<Operation>, InvalidGraphql> {
        operation_of(body.as_bytes())
    }

    const ADD_STEP: &str = r#"{"query":"mutation AddStep($id_0: String!, $id_1: String!) {\n  step0: ingestStep(id: $id_0) { ok message }\n  step1: ingestStep(id: $id_1) { ok message }\n}","variables":{"id_0":"a","id_1":"b","nested":{"deep":[1,2,{"x":"y"}]}}}"#;

    #[test]
    fn add_step_batch() {
        let o = op(ADD_STEP).unwrap();
        assert_eq!(o.kind, OperationType::Mutation);
        assert_eq!(o.name.as_deref(), Some("AddStep"));
        let keys: Vec<_> = o.root_fields.iter().map(|f| &*f.response_key).collect();
        assert_eq!(keys, ["step0", "step1"]);
        assert!(o.root_fields.iter().all(|f| &*f.name == "ingestStep"));
        // Second time comes from the cache and is the same.
        assert_eq!(op(ADD_STEP).unwrap(), o);
    }

    #[test]
    fn shorthand_query_and_fragments() {
        let o = op(r#"{"query":"{ a b: c }"}"#).unwrap();
        assert_eq!(o.kind, OperationType::Query);
        assert_eq!(o.root_fields.len(), 2);
        let o = op(r#"{"query":"mutation M { ...F ... on Mutation { z } } fragment F on Mutation { x y: w }"}"#)
            .unwrap();
        let names: Vec<_> = o.root_fields.iter().map(|f| &*f.name).collect();
        assert_eq!(names, ["x", "w", "z"]);
    }

    #[test]
    fn operation_name_selects() {
        let body = r#"{"query":"query A { a } mutation B { b }","operationName":"B"}"#;
        assert_eq!(op(body).unwrap().kind, OperationType::Mutation);
        assert!(op(r#"{"query":"query A { a } mutation B { b }"}"#).is_err());
        assert!(op(r#"{"query":"query A { a }","operationName":"Z"}"#).is_err());
    }

    #[test]
    fn ids_come_from_variables_and_literals() {
        let ids = |b: &str| parse_request(b.as_bytes()).unwrap().root_ids();
        let some = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        assert_eq!(ids(ADD_STEP), some(&["a", "b"]));
        let body = r#"{"query":"mutation { x: ingestStep(id: \"lit\") { ok } y: other { ok } }"}"#;
        assert_eq!(ids(body), vec![Some("lit".to_string()), None]);
        let body = r#"{"variables":{"b":"second","a":"first"},"query":"mutation M($a: String!, $b: String!) { p: ingestStep(id: $a) { ok } q: ingestStep(id: $b) { ok } }"}"#;
        assert_eq!(ids(body), some(&["first", "second"]));
        // The SDK's DeleteThread names its variable `thread_id`.
        let body = r#"{"query":"mutation DeleteThread($thread_id: String!) { deleteThread(id: $thread_id) { id } }","variables":{"thread_id":"t-1"}}"#;
        assert_eq!(ids(body), some(&["t-1"]));
    }

    #[test]
    fn arguments_and_selections_are_kept() {
        let body = r#"{"query":"mutation U($id: String!, $name: String) { upsertThread(id: $id, name: $name, tags: [\"a\"], first: 3) { id name participant { id } } }","variables":{"id":"t","name":"Hello"}}"#;
        let op = op(body).unwrap();
        let f = &op.root_fields[0];
        assert_eq!(f.arg("id"), Some(&ArgValue::Variable("id".into())));
        assert_eq!(
            f.arg("tags"),
            Some(&ArgValue::Literal(serde_json::json!(["a"])))
        );
        let sel: Vec<_> = f.selection.iter().map(|(k, _)| &**k).collect();
        assert_eq!(sel, ["id", "name", "participant"]);
        let args = resolved_args(body.as_bytes(), &op);
        assert_eq!(
            args[0],
            vec![
                ("id".into(), serde_json::json!("t")),
                ("name".into(), serde_json::json!("Hello")),
                ("tags".into(), serde_json::json!(["a"])),
                ("first".into(), serde_json::json!(3)),
            ]
        );
    }

    /// The per-thread cache of parsed documents is bounded by bytes, not
    /// only by entries: one document may be megabytes. (Found on review.)
    #[test]
    fn the_parse_cache_is_bounded_by_bytes() {
        let filler = "x".repeat(60_000);
        for i in 0..200 {
            let body = serde_json::json!({
                "query": format!("query Q{i} {{ a(note: \"{filler}\") }}")
            })
            .to_string();
            op(&body).unwrap();
        }
        let held = cache_bytes();
        assert!(
            held <= CACHE_BYTES,
            "the cache holds {held} bytes, more than {CACHE_BYTES}"
        );
    }

    #[test]
    fn invalid_inputs_have_clear_errors() {
        for bad in [
            "not json",
            r#"{"variables":{}}"#,
            r#"{"query":"mutation { "}"#,
            r#"[{"query":"{a}"}]"#,
            r#"{"query":"fragment F on Q { a }"}"#,
            r#"{"query":"{ ...Missing }"}"#,
            r#"{"query":"{ ...A } fragment A on Q { ...A }"}"#,
        ] {
            let e = op(bad).unwrap_err();
            assert!(!e.0.is_empty(), "{bad}");
        }
    }
}

//! Which GraphQL operation a request runs: its type, name and root fields
//! (with their response aliases).
//!
//! The request JSON is read with a borrowing deserializer that keeps only
//! `query` and `operationName` and skips `variables` without building them;
//! the query text is parsed with `graphql-parser` (never with regexes) and the
//! summary is remembered per query text, because a client such as the
//! LiteralAI SDK sends a handful of distinct documents over and over.

mod scan;

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
/// Fragment spreads followed at the root before a document is refused.
const MAX_FRAGMENT_DEPTH: usize = 16;

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

/// Where a root field's `id` argument comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdArg {
    /// `id: $name`: from the request's variables.
    Variable(Box<str>),
    /// `id: "literal"`.
    Literal(Box<str>),
}

/// A field selected at the root of the operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootField {
    /// The key it appears under in `data` (the alias, or the name).
    pub response_key: Box<str>,
    /// The schema field, e.g. `ingestStep`.
    pub name: Box<str>,
    /// Its `id` argument, if it has one (the key of an upsert).
    pub id: Option<IdArg>,
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
}

/// A GraphQL request: the operation it runs and its variables (borrowed).
#[derive(Debug)]
pub struct GraphqlRequest<'a> {
    /// The operation selected by the request.
    pub operation: Arc<Operation>,
    variables: Option<&'a str>,
}

impl GraphqlRequest<'_> {
    /// The ids the operation's root fields write (their `id` arguments,
    /// looked up in `variables`), in field order.
    pub fn ids(&self) -> Vec<String> {
        ids_in(self.variables, &self.operation)
    }
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
        let mut cache = cache.borrow_mut();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
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

/// The ids `op`'s root fields write, given the request's raw `variables`.
/// Reads only the variables it needs and skips the rest without building
/// them.
fn ids_in(variables: Option<&str>, op: &Operation) -> Vec<String> {
    let wanted: Vec<&str> = op
        .root_fields
        .iter()
        .filter_map(|f| match &f.id {
            Some(IdArg::Variable(v)) => Some(&**v),
            _ => None,
        })
        .collect();
    let mut found: Vec<(usize, String)> = Vec::new();
    if let (false, Some(vars)) = (wanted.is_empty(), variables) {
        let scanned = scan::fields(vars, |key, raw| {
            if let Some(i) = wanted.iter().position(|w| *w == key) {
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
                wanted: &wanted,
                found: &mut found,
            }
            .deserialize(&mut de);
        }
    }
    let mut ids = Vec::with_capacity(op.root_fields.len());
    let mut next_var = 0;
    for f in op.root_fields.iter() {
        match &f.id {
            Some(IdArg::Literal(s)) => ids.push(s.to_string()),
            Some(IdArg::Variable(_)) => {
                if let Some((_, v)) = found.iter().find(|(i, _)| *i == next_var) {
                    ids.push(v.clone());
                }
                next_var += 1;
            }
            None => {}
        }
    }
    ids
}

struct VarsSeed<'w, 'f> {
    wanted: &'w [&'w str],
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
            match self.wanted.iter().position(|w| *w == key) {
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
        collect_root_fields(&doc, set, 0, &mut root_fields)?;
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

fn collect_root_fields<'a>(
    doc: &Document<'a, &'a str>,
    set: &SelectionSet<'a, &'a str>,
    depth: usize,
    out: &mut Vec<RootField>,
) -> Result<(), String> {
    if depth > MAX_FRAGMENT_DEPTH {
        return Err("fragments nest too deeply at the root (a cycle?)".into());
    }
    for item in &set.items {
        match item {
            Selection::Field(f) => out.push(RootField {
                response_key: f.alias.unwrap_or(f.name).into(),
                name: f.name.into(),
                id: f
                    .arguments
                    .iter()
                    .find(|(n, _)| *n == "id")
                    .and_then(|(_, v)| match v {
                        Value::Variable(name) => Some(IdArg::Variable((*name).into())),
                        Value::String(s) => Some(IdArg::Literal(s.as_str().into())),
                        _ => None,
                    }),
            }),
            Selection::InlineFragment(inline) => {
                collect_root_fields(doc, &inline.selection_set, depth + 1, out)?
            }
            Selection::FragmentSpread(spread) => {
                let frag = doc
                    .definitions
                    .iter()
                    .find_map(|d| match d {
                        Definition::Fragment(f) if f.name == spread.fragment_name => Some(f),
                        _ => None,
                    })
                    .ok_or_else(|| format!("fragment `{}` is not defined", spread.fragment_name))?;
                collect_root_fields(doc, &frag.selection_set, depth + 1, out)?;
            }
        }
    }
    Ok(())
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
        let ids = |b: &str| parse_request(b.as_bytes()).unwrap().ids();
        assert_eq!(ids(ADD_STEP), ["a", "b"]);
        let body = r#"{"query":"mutation { x: ingestStep(id: \"lit\") { ok } y: other { ok } }"}"#;
        assert_eq!(ids(body), ["lit"]);
        let body = r#"{"variables":{"b":"second","a":"first"},"query":"mutation M($a: String!, $b: String!) { p: ingestStep(id: $a) { ok } q: ingestStep(id: $b) { ok } }"}"#;
        assert_eq!(ids(body), ["first", "second"]);
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

//! `datalayer-sidecar explain`: which route a request takes and what the
//! sidecar will do with it, without sending anything. It runs the same
//! GraphQL parser and route table as the proxy.

use http::Method;
use serde_json::{Value, json};

use super::Routes;
use crate::graphql;

/// Explain a request with this method, path and body under `routes`.
pub fn explain(routes: &Routes, method: &Method, path: &str, body: &[u8]) -> Value {
    let path_only = path.split('?').next().unwrap_or("/");
    let request = if routes.needs_graphql(method, path_only) {
        Some(graphql::parse_request(body))
    } else {
        None
    };
    let (op, root_ids, error) = match &request {
        Some(Ok(r)) => (Some(r.operation.clone()), r.root_ids(), None),
        Some(Err(e)) => (None, Vec::new(), Some(e.to_string())),
        None => (None, Vec::new(), None),
    };
    let route = routes.find(method, path_only, op.as_deref());
    let operation = op.as_deref().map(|op| {
        json!({
            "type": op.kind.as_str(),
            "name": op.name.as_deref(),
            "root_fields": op.root_fields.iter().map(|f| {
                let mut field = json!({
                    "alias": &*f.response_key,
                    "field": &*f.name,
                });
                // The preset's own word on the field, under the preset's name.
                let vocabulary = route.vocabulary;
                if vocabulary.has_table() {
                    field[vocabulary.name()] = vocabulary.handling(&f.name).into();
                }
                field
            }).collect::<Vec<_>>(),
        })
    });
    let keys = match &op {
        Some(op) if route.spools() => route
            .order_keys(op, &symbolic_ids(body, op, root_ids))
            .into_vec(),
        _ => Vec::new(),
    };
    json!({
        "route": &*route.name,
        "origin": route.origin.as_str(),
        "policy": route.describe(),
        "idempotent": route.is_idempotent(method, op.as_deref()),
        // A write naming no usable id is not spooled (Route::order_keys).
        // An id the body's variables do not define shows as `$name`: what
        // the write holds depends on the value sent with it.
        "spooled_on_failure": route.spools() && op.is_some() && !keys.is_empty(),
        "order_keys": keys,
        "operation": operation,
        "invalid_graphql": error,
    })
}

/// The root fields' ids, with an id taken from a variable the body does not
/// define shown as `$name`: explaining a document on its own (no variables)
/// says what a write of it holds once the client sends the value, while a
/// variable defined as `null` or a non-scalar still names no usable id.
fn symbolic_ids(
    body: &[u8],
    op: &graphql::Operation,
    mut ids: Vec<Option<String>>,
) -> Vec<Option<String>> {
    let defined: serde_json::Map<String, Value> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|mut v| match v.get_mut("variables").map(Value::take) {
            Some(Value::Object(vars)) => Some(vars),
            _ => None,
        })
        .unwrap_or_default();
    ids.resize(op.root_fields.len(), None);
    for (id, f) in ids.iter_mut().zip(op.root_fields.iter()) {
        if let (None, Some(graphql::ArgValue::Variable(name))) = (&id, f.arg("id"))
            && !defined.contains_key(&**name)
        {
            *id = Some(format!("${name}"));
        }
    }
    ids
}

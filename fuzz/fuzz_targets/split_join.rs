//! Cutting a batched mutation into its root fields and joining fields of
//! several requests: whatever the body, a document that splits gives
//! subsets that parse with exactly their field and variables, and the
//! joined document's aliases and variables are exactly the parts'.
#![no_main]

use datalayer_sidecar::graphql::{self, split};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn variables(body: &[u8]) -> serde_json::Map<String, Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("variables").and_then(Value::as_object).cloned())
        .unwrap_or_default()
}

fuzz_target!(|body: &[u8]| {
    // The sidecar cuts only requests its parser accepted (a subset of a
    // document that is not valid GraphQL need not be valid either).
    if graphql::parse_request(body).is_err() {
        return;
    }
    let Some(batch) = split::Batch::parse(body) else {
        return;
    };
    let keys: Vec<String> = batch.response_keys().map(str::to_string).collect();
    let all = variables(body);
    let mut parts = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let sub = batch.subset(&[i]);
        let op = graphql::operation_of(&sub).expect("a subset of a valid document parses");
        assert_eq!(op.root_fields.len(), 1);
        assert_eq!(&*op.root_fields[0].response_key, key.as_str());
        // The subset's variables are the original's, as sent.
        for (name, value) in variables(&sub) {
            assert_eq!(all.get(&name), Some(&value), "{name}");
        }
        parts.push(split::Batch::parse(&sub).expect("a subset splits again"));
    }
    let refs: Vec<&split::Batch> = parts.iter().collect();
    let joined = split::join(batch.name(), &refs);
    let op = graphql::operation_of(&joined).expect("a join parses");
    let joined_keys: Vec<String> = op.root_fields.iter().map(|f| f.response_key.to_string()).collect();
    let want: Vec<String> = (0..parts.len()).map(split::joined_key).collect();
    assert_eq!(joined_keys, want);
    let mut expected = 0;
    for (k, part) in parts.iter().enumerate() {
        let sub = variables(&part.subset(&[0]));
        expected += sub.len();
        let joined_vars = variables(&joined);
        for (name, value) in sub {
            assert_eq!(joined_vars.get(&format!("e{k}_{name}")), Some(&value));
        }
    }
    assert_eq!(variables(&joined).len(), expected);
});

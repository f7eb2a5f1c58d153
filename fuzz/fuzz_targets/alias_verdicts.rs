//! A backend's answer judged as a whole and alias by alias. The first byte
//! says how many aliases the request had (`step0`..); the rest is the
//! answer. Whatever it is: no panic, the per-alias reading has one result
//! per alias, and the whole's class is the merge of the aliases' when
//! there are per-alias results.
#![no_main]

use datalayer_sidecar::classify::{Classifier, ClassifyParams};
use datalayer_sidecar::graphql;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, answer)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 12) + 1;
    let classifier = Classifier::new(&ClassifyParams::default());
    let _ = classifier.graphql_body(answer);
    let keys: Vec<String> = (0..n).map(|i| format!("step{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    if let Some(results) = classifier.aliases(answer, &refs) {
        assert_eq!(results.len(), n);
    }
    let fields: Vec<String> = (0..n)
        .map(|i| format!("step{i}: ingestStep(id: \"s{i}\") {{ ok message }}"))
        .collect();
    let doc = serde_json::json!({"query": format!("mutation M {{ {} }}", fields.join(" "))});
    let op = graphql::operation_of(doc.to_string().as_bytes()).expect("a valid document");
    let (class, per_alias) = classifier.graphql_answer(answer, &op);
    if let Some(a) = per_alias {
        assert_eq!(a.0.len(), n);
        assert_eq!(a.class().verdict, class.verdict);
    }
    let subset: Vec<Box<str>> = keys.iter().take(n.div_ceil(2)).map(|k| k.as_str().into()).collect();
    let _ = classifier.graphql_attempt(answer, &subset);
});

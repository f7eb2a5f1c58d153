//! Property tests (proptest): the batched-mutation splitter and joiner, the
//! ordering keys and the rule that holds later versions behind open ones,
//! and the config's validation. They run with every `cargo test`; set
//! `PROPTEST_CASES` for more cases.

use std::collections::BTreeMap;

use datalayer_sidecar::config::{Config, Overrides};
use datalayer_sidecar::graphql::{self, split::Batch};
use datalayer_sidecar::route::{BARRIER_KEY, Routes, hold_behind, literalai};
use proptest::prelude::*;
use serde_json::{Value, json};

// === the splitter and the joiner ===

/// A JSON value as an app might send it: strings with quotes, escapes,
/// braces, `$`, non-ASCII; numbers; nested objects and lists.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(|f| json!(f)),
        "[ -~é€😀\\n\\t\"\\\\{}$]{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One root field: its alias, whether it also uses the shared `$thread`
/// variable, and an inline literal with characters that confuse a naive
/// scanner.
#[derive(Debug, Clone)]
struct Field {
    alias: String,
    shared: bool,
    note: String,
}

fn fields() -> impl Strategy<Value = Vec<Field>> {
    prop::collection::vec((any::<bool>(), "[ a-z}{$#:]{0,12}"), 1..8).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (shared, note))| Field {
                alias: format!("step{i}"),
                shared,
                note,
            })
            .collect()
    })
}

/// `v` as the parser reads it back (serde_json's default number parsing is
/// not exact to the last bit; the sidecar keeps the bytes, so compare what
/// both sides parse to).
fn reparsed(v: &Value) -> Value {
    serde_json::from_str(&v.to_string()).unwrap()
}

/// The request body, and each field's variables (name → value).
fn batched(
    fields: &[Field],
    values: &[(Value, Value)],
    thread: &Value,
) -> (Vec<u8>, Vec<BTreeMap<String, Value>>) {
    let mut defs = Vec::new();
    let mut body = Vec::new();
    let mut variables = serde_json::Map::new();
    let mut used = Vec::new();
    for (i, (f, (id, out))) in fields.iter().zip(values).enumerate() {
        defs.push(format!("$id_{i}: String!, $out_{i}: Json"));
        let thread_arg = if f.shared { ", threadId: $thread" } else { "" };
        let note = serde_json::to_string(&f.note).unwrap();
        body.push(format!(
            "{}: ingestStep(id: $id_{i}, output: $out_{i}, note: {note}{thread_arg}) {{ ok message }}",
            f.alias
        ));
        variables.insert(format!("id_{i}"), id.clone());
        variables.insert(format!("out_{i}"), out.clone());
        let mut mine = BTreeMap::new();
        mine.insert(format!("id_{i}"), reparsed(id));
        mine.insert(format!("out_{i}"), reparsed(out));
        if f.shared {
            mine.insert("thread".to_string(), reparsed(thread));
        }
        used.push(mine);
    }
    defs.push("$thread: String".into());
    variables.insert("thread".into(), thread.clone());
    // A variable no field uses.
    variables.insert("unused".into(), json!({"x": 1}));
    defs.push("$unused: Json".into());
    let query = format!(
        "# a comment with {{ and $x\nmutation AddStep({}) {{\n  {}\n}}",
        defs.join(", "),
        body.join("\n  ")
    );
    let req = json!({"query": query, "variables": variables, "operationName": "AddStep"});
    (req.to_string().into_bytes(), used)
}

fn variables_of(body: &[u8]) -> BTreeMap<String, Value> {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["variables"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

proptest! {
    /// Each field cut out on its own is a valid request with that field
    /// under its own alias and exactly the variables it uses, as sent.
    #[test]
    fn a_subset_is_its_fields_and_exactly_their_variables(
        fields in fields(),
        values in prop::collection::vec((json_value(), json_value()), 8),
        thread in json_value(),
    ) {
        let (body, used) = batched(&fields, &values, &thread);
        let batch = Batch::parse(&body).expect("a plain batched mutation splits");
        prop_assert_eq!(batch.len(), fields.len());
        let keys: Vec<&str> = batch.response_keys().collect();
        let want: Vec<&str> = fields.iter().map(|f| f.alias.as_str()).collect();
        prop_assert_eq!(keys, want);
        for (i, f) in fields.iter().enumerate() {
            let sub = batch.subset(&[i]);
            let op = graphql::operation_of(&sub).expect("a subset parses");
            prop_assert_eq!(op.root_fields.len(), 1);
            prop_assert_eq!(&*op.root_fields[0].response_key, f.alias.as_str());
            prop_assert_eq!(&variables_of(&sub), &used[i]);
        }
    }

    /// Joined, the parts' fields answer under `a0`, `a1`, ... and the
    /// joined document's variables are exactly the parts', renamed apart,
    /// with their values as sent.
    #[test]
    fn a_join_is_exactly_its_parts(
        fields in fields(),
        values in prop::collection::vec((json_value(), json_value()), 8),
        thread in json_value(),
    ) {
        let (body, used) = batched(&fields, &values, &thread);
        let batch = Batch::parse(&body).unwrap();
        let parts: Vec<Batch> = (0..batch.len())
            .map(|i| Batch::parse(&batch.subset(&[i])).expect("a subset splits again"))
            .collect();
        let refs: Vec<&Batch> = parts.iter().collect();
        let joined = graphql::split::join(Some("AddStep"), &refs);
        let op = graphql::operation_of(&joined).expect("a join parses");
        let keys: Vec<String> = op.root_fields.iter().map(|f| f.response_key.to_string()).collect();
        let want: Vec<String> = (0..parts.len()).map(graphql::split::joined_key).collect();
        prop_assert_eq!(keys, want);
        let mut expected = BTreeMap::new();
        for (k, mine) in used.iter().enumerate() {
            for (name, v) in mine {
                expected.insert(format!("e{k}_{name}"), v.clone());
            }
        }
        prop_assert_eq!(variables_of(&joined), expected);
    }
}

// === ordering keys and holding later versions ===

fn key_lists() -> impl Strategy<Value = Vec<Vec<String>>> {
    let key = prop_oneof![
        4 => (0u8..4).prop_map(|k| format!("step:k{k}")),
        1 => Just(BARRIER_KEY.to_string()),
    ];
    prop::collection::vec(prop::collection::vec(key, 0..3), 0..10)
}

proptest! {
    /// `hold_behind` only adds fields, is stable once applied, and leaves
    /// no later field of an open one's key (or after an open barrier, or
    /// with no key) closed.
    #[test]
    fn holding_behind_closes_over_every_later_version(
        keys in key_lists(),
        open in prop::collection::vec(any::<bool>(), 10),
    ) {
        let n = keys.len();
        let before: Vec<bool> = open[..n].to_vec();
        let mut after = before.clone();
        hold_behind(&mut after, &keys);
        for i in 0..n {
            prop_assert!(!before[i] || after[i], "field {} was open", i);
        }
        let mut again = after.clone();
        hold_behind(&mut again, &keys);
        prop_assert_eq!(&again, &after);
        let barrier = |k: &[String]| k.is_empty() || k.iter().any(|x| x == BARRIER_KEY);
        for i in 0..n {
            for j in i + 1..n {
                let follows = keys[i].iter().any(|k| keys[j].contains(k))
                    || (after[i] && (barrier(&keys[i]) || barrier(&keys[j])));
                if after[i] && follows {
                    prop_assert!(after[j], "{} follows open {}: {:?}", j, i, keys);
                }
            }
        }
    }

    /// A spoolable write's keys name what each root field writes (`entity:id`
    /// from the preset's table, a barrier where the table says so), and a
    /// write with any root field lacking an id has none (it is not spooled).
    #[test]
    fn order_keys_follow_the_preset_table(
        fields in prop::collection::vec(
            (0usize..7, prop::option::of("[a-z0-9-]{1,8}")), 1..6),
    ) {
        let spooled: Vec<&literalai::Op> = literalai::OPERATIONS
            .iter()
            .filter(|o| o.handling == literalai::Handling::Spooled)
            .collect();
        let mut doc = String::from("mutation M {");
        let mut ids = Vec::new();
        for (i, (which, id)) in fields.iter().enumerate() {
            let op = spooled[*which % spooled.len()];
            match id {
                Some(id) => doc.push_str(&format!(" f{i}: {}(id: \"{id}\") {{ ok }}", op.field)),
                None => doc.push_str(&format!(" f{i}: {}(other: 1) {{ ok }}", op.field)),
            }
            ids.push(id.clone());
        }
        doc.push_str(" }");
        let body = json!({"query": doc}).to_string();
        let request = graphql::parse_request(body.as_bytes()).unwrap();
        let cfg = Config::from_toml_str(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n",
            std::path::Path::new("t"),
            &[],
            &Overrides::default(),
        )
        .unwrap();
        let routes = Routes::new(cfg.routes);
        let route = routes.find(&http::Method::POST, "/api/graphql", Some(&request.operation));
        prop_assert!(route.spools(), "{}", route.name);
        let keys = route.order_keys(&request.operation, &request.root_ids());
        if ids.iter().any(Option::is_none) {
            prop_assert!(keys.is_empty(), "{:?}", keys);
        } else {
            let mut want = Vec::new();
            let mut barrier = false;
            for ((which, id), field) in fields.iter().zip(request.operation.root_fields.iter()) {
                let op = spooled[*which % spooled.len()];
                prop_assert_eq!(&*field.name, op.field);
                want.push(datalayer_sidecar::route::vocabulary::order_key(
                    &literalai::LiteralAi,
                    op.field,
                    id.as_deref().unwrap(),
                ));
                barrier |= op.barrier;
            }
            if barrier {
                want.push(BARRIER_KEY.to_string());
            }
            prop_assert_eq!(keys.to_vec(), want);
        }
    }
}

// === the config's validation ===

/// A duration as an operator might write it, valid or not.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..120_000).prop_map(|ms| format!("{ms}ms")),
        (0u64..120).prop_map(|s| format!("{s}s")),
        Just("0s".to_string()),
        Just("soon".to_string()),
        Just("-1s".to_string()),
        Just("99999999999999999999s".to_string()),
    ]
}

proptest! {
    /// Whatever values the keys get, loading either succeeds or fails with
    /// a message that names one of the keys set; a config that loads prints
    /// as TOML that loads again to the same config.
    #[test]
    fn validation_names_the_key_at_fault_and_valid_configs_round_trip(
        per_try in duration_text(),
        deadline in duration_text(),
        backoff_base in duration_text(),
        max_attempts in 0u32..20,
        jitter in -0.5f64..1.5,
        replay_batch in 0usize..2000,
        max_root_fields in 0usize..20_000,
        lease in duration_text(),
        breaker_probes in 0u32..10,
    ) {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [limits]\nmax_root_fields = {max_root_fields}\n\
             [timeouts]\nper_try = \"{per_try}\"\ndeadline = \"{deadline}\"\n\
             [retry]\nmax_attempts = {max_attempts}\nbackoff_base = \"{backoff_base}\"\njitter = {jitter}\n\
             [breaker]\nprobes = {breaker_probes}\n\
             [spool]\nreplay_batch = {replay_batch}\nlease = \"{lease}\"\n"
        );
        let keys = [
            "limits.max_root_fields", "timeouts.per_try", "timeouts.deadline",
            "retry.max_attempts", "retry.backoff_base", "retry.backoff_max", "retry.jitter",
            "breaker.probes", "spool.replay_batch", "spool.lease",
            // A route inherits the global timeouts and retry settings.
            "routes[",
        ];
        match Config::from_toml_str(&text, std::path::Path::new("t.toml"), &[], &Overrides::default()) {
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(keys.iter().any(|k| msg.contains(k)), "{}\n{}", msg, text);
            }
            Ok(cfg) => {
                let printed = cfg.to_toml();
                let again = Config::from_toml_str(&printed, std::path::Path::new("t.toml"), &[], &Overrides::default());
                prop_assert!(again.is_ok(), "{:?}\n{}", again.err().map(|e| e.to_string()), printed);
                prop_assert_eq!(again.unwrap().to_toml(), printed);
            }
        }
    }
}

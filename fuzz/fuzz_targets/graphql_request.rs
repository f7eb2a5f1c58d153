//! A GraphQL-over-HTTP request body as the sidecar reads it: the span
//! scanner and the parser (`parse_request`), the route it matches in the
//! shipped table, its root fields' ids, its variable count, the ordering
//! keys of a spooling route, and the answer the spool would give. None may
//! panic or loop; a parsed operation's ids come one per root field.
#![no_main]

use std::sync::OnceLock;

use datalayer_sidecar::config::{Config, Overrides};
use datalayer_sidecar::graphql;
use datalayer_sidecar::route::Routes;
use libfuzzer_sys::fuzz_target;

fn routes() -> &'static Routes {
    static R: OnceLock<Routes> = OnceLock::new();
    R.get_or_init(|| {
        let cfg = Config::from_toml_str(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n",
            std::path::Path::new("fuzz"),
            &[],
            &Overrides::default(),
        )
        .expect("the shipped defaults load");
        Routes::new(cfg.routes)
    })
}

fuzz_target!(|body: &[u8]| {
    let Ok(request) = graphql::parse_request(body) else {
        return;
    };
    let op = &request.operation;
    let ids = request.root_ids();
    assert_eq!(ids.len(), op.root_fields.len());
    let _ = request.variable_count();
    let route = routes().find(&http::Method::POST, "/api/graphql", Some(op));
    if route.spools() {
        let keys = route.order_keys(op, &ids);
        let fields = route.field_keys(op, &ids);
        assert_eq!(fields.len(), op.root_fields.len());
        if ids.iter().all(Option::is_some) {
            assert!(!keys.is_empty());
        }
        let answer = datalayer_sidecar::spool::record::spooled_response(op, body);
        let bytes = answer.body().bytes().expect("a spooled answer is held whole");
        serde_json::from_slice::<serde_json::Value>(bytes).expect("a spooled answer is JSON");
    }
});

//! One test per upstream fault: what the client receives (status, body code,
//! headers) and how many attempts the upstream saw.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::client::{self, add_step, other_mutation, post_json_to, query, sample, steps_ok};
use support::proxy::spooled_route;
use support::{Answer, FakeUpstream, Reply, Sidecar};

/// Short timeouts and backoff so faults resolve quickly; breaker off so each
/// test sees the retry policy alone (the breaker has its own tests).
fn settings(timeouts: &str, retry: &str, breaker: &str) -> String {
    format!(
        "[timeouts]\n{}\n[retry]\n{}\n[breaker]\n{}\n{}",
        if timeouts.is_empty() {
            "per_try = \"300ms\"\ndeadline = \"2s\""
        } else {
            timeouts
        },
        if retry.is_empty() {
            "backoff_base = \"10ms\"\nbackoff_max = \"40ms\"\nmin_attempt_time = \"50ms\""
        } else {
            retry
        },
        if breaker.is_empty() {
            "enabled = false"
        } else {
            breaker
        },
        // The reliability stack alone, with the global policy: failures are
        // answered, not spooled, and the step route's own overrides are off.
        spooled_route("idempotent = true")
    )
}

async fn start(up: &FakeUpstream) -> Sidecar {
    Sidecar::start(&up.url(), &settings("", "", "")).await
}

async fn write_step(sc: &Sidecar) -> Answer {
    client::post_json(sc.addr, "/api/graphql", &add_step(&["s1"])).await
}

fn attempts(a: &Answer) -> u32 {
    a.header("x-sidecar-attempts").unwrap().parse().unwrap()
}

fn gql_code(a: &Answer) -> String {
    a.json()["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn metrics(sc: &Sidecar) -> String {
    client::get(sc.admin, "/metrics").await.text()
}

/// Fail the first `n` attempts with `fault`, then answer success.
fn first_n(n: usize, fault: Reply) -> impl Fn(&support::Recorded, usize) -> Reply {
    move |_, hit| {
        if hit < n {
            fault.clone()
        } else {
            Reply::json(200, steps_ok(1))
        }
    }
}

#[tokio::test]
async fn connection_refused_is_retried_then_answered_503() {
    let gone = FakeUpstream::start(|_, _| Reply::status(200)).await.stop();
    let sc = Sidecar::start(&format!("http://{gone}"), &settings("", "", "")).await;
    let a = write_step(&sc).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(gql_code(&a), "upstream_connect_failed");
    let ext = &a.json()["errors"][0]["extensions"];
    assert_eq!(ext["class"], "transient");
    assert_eq!(ext["retryable"], true);
    assert_eq!(ext["attempts"], 4);
    assert_eq!(attempts(&a), 4);
    // A non-idempotent mutation is retried too: it certainly never left.
    let a = client::post_json(sc.addr, "/api/graphql", &other_mutation()).await;
    assert_eq!((a.status.as_u16(), attempts(&a)), (503, 4));
    // Problem details on non-GraphQL routes.
    let a = client::get(sc.addr, "/api/whatever").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    assert_eq!(a.json()["code"], "upstream_connect_failed");
}

#[tokio::test]
async fn reset_before_response_is_retried_for_idempotent_writes() {
    let up = FakeUpstream::start(first_n(2, Reply::Close)).await;
    let sc = start(&up).await;
    let a = write_step(&sc).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), steps_ok(1));
    assert_eq!(attempts(&a), 3);
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn non_idempotent_mutation_is_not_retried_after_it_was_sent() {
    let up = FakeUpstream::start(|_, _| Reply::Close).await;
    let sc = start(&up).await;
    let a = client::post_json(sc.addr, "/api/graphql", &other_mutation()).await;
    assert_eq!(a.status, 502);
    assert_eq!(gql_code(&a), "upstream_reset");
    assert_eq!(up.hits(), 1, "sent once: it may have been applied");
    let m = metrics(&sc).await;
    assert_eq!(
        sample(
            &m,
            "datalayer_sidecar_not_retried_total{route=\"mutations\",reason=\"not_idempotent\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn reset_mid_body_is_retried() {
    let fault = Reply::AbortMidBody {
        status: 200,
        first: Bytes::from_static(b"{\"data\":{\"step0\":"),
    };
    let up = FakeUpstream::start(first_n(1, fault.clone())).await;
    let sc = start(&up).await;
    let a = write_step(&sc).await;
    assert_eq!((a.status.as_u16(), attempts(&a)), (200, 2));

    let up = FakeUpstream::start(move |_, _| fault.clone()).await;
    let sc = start(&up).await;
    let a = write_step(&sc).await;
    assert_eq!(a.status, 502);
    assert_eq!(gql_code(&a), "upstream_reset");
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn hang_hits_the_per_try_timeout_and_is_retried() {
    let up = FakeUpstream::start(first_n(1, Reply::Hang)).await;
    let sc = start(&up).await;
    let started = tokio::time::Instant::now();
    let a = write_step(&sc).await;
    assert_eq!((a.status.as_u16(), attempts(&a)), (200, 2));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1200),
        "{took:?}"
    );
}

#[tokio::test]
async fn slow_headers_past_per_try_then_504_within_the_deadline() {
    let up =
        FakeUpstream::start(|_, _| Reply::json(200, steps_ok(1)).delayed(Duration::from_secs(5)))
            .await;
    let sc = start(&up).await;
    let started = tokio::time::Instant::now();
    let a = write_step(&sc).await;
    let took = started.elapsed();
    assert_eq!(a.status, 504);
    assert_eq!(gql_code(&a), "upstream_timeout");
    assert!(
        took < Duration::from_millis(2100),
        "deadline 2s, took {took:?}"
    );
    assert_eq!(attempts(&a), up.hits() as u32);
}

#[tokio::test]
async fn gateway_statuses_are_retried_then_passed_through() {
    for status in [502u16, 503, 504] {
        let up = FakeUpstream::start(first_n(1, Reply::text(status, "busy"))).await;
        let sc = start(&up).await;
        let a = write_step(&sc).await;
        assert_eq!((a.status.as_u16(), attempts(&a)), (200, 2), "{status}");
    }
    // Never recovers: the backend's own answer comes back unchanged.
    let up = FakeUpstream::start(|_, _| {
        Reply::text(503, "backend maintenance").with_header("x-backend", "1")
    })
    .await;
    let sc = start(&up).await;
    let a = write_step(&sc).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.text(), "backend maintenance");
    assert_eq!(a.header("x-backend"), Some("1"));
    assert_eq!((attempts(&a), up.hits()), (4, 4));
}

#[tokio::test]
async fn retry_after_in_seconds_is_honoured_never_early() {
    let up = FakeUpstream::start(first_n(
        1,
        Reply::text(429, "slow down").with_header("retry-after", "1"),
    ))
    .await;
    let sc = Sidecar::start(
        &up.url(),
        &settings("per_try = \"500ms\"\ndeadline = \"3s\"", "", ""),
    )
    .await;
    let a = write_step(&sc).await;
    assert_eq!((a.status.as_u16(), attempts(&a)), (200, 2));
    let seen = up.requests();
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, asked 1s"
    );
}

#[tokio::test]
async fn retry_after_as_http_date_is_honoured_never_early() {
    let up = FakeUpstream::start(move |_, hit| {
        if hit == 0 {
            let at = std::time::SystemTime::now() + Duration::from_secs(2);
            Reply::text(503, "later").with_header("retry-after", &httpdate::fmt_http_date(at))
        } else {
            Reply::json(200, steps_ok(1))
        }
    })
    .await;
    let sc = Sidecar::start(
        &up.url(),
        &settings("per_try = \"500ms\"\ndeadline = \"4s\"", "", ""),
    )
    .await;
    let a = write_step(&sc).await;
    assert_eq!((a.status.as_u16(), attempts(&a)), (200, 2));
    let seen = up.requests();
    let asked = seen[0].wall + Duration::from_secs(2);
    // HTTP-dates have one-second resolution: the retry must not come before
    // the second the upstream named.
    let asked_secs = asked
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let got = seen[1].wall.duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!(
        got.as_secs() >= asked_secs,
        "retried at {got:?}, asked {asked_secs}s"
    );
}

#[tokio::test]
async fn retry_after_longer_than_the_cap_is_not_waited_for() {
    let up = FakeUpstream::start(|_, _| {
        Reply::text(429, "come back in an hour").with_header("retry-after", "3600")
    })
    .await;
    let sc = start(&up).await;
    let a = write_step(&sc).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("3600"));
    assert_eq!(up.hits(), 1);
    let m = metrics(&sc).await;
    assert_eq!(
        sample(
            &m,
            "datalayer_sidecar_not_retried_total{route=\"spooled_writes\",reason=\"retry_after_too_long\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn graphql_errors_transient_retried_permanent_passed_through() {
    let transient = Reply::json(
        200,
        serde_json::json!({"errors": [{"message": "db", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}], "data": null}),
    );
    let up = FakeUpstream::start(first_n(2, transient)).await;
    let sc = start(&up).await;
    let a = write_step(&sc).await;
    assert_eq!((a.status.as_u16(), attempts(&a)), (200, 3));
    assert_eq!(a.json(), steps_ok(1));

    let invalid = serde_json::json!({"errors": [{"message": "Unknown argument", "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]});
    let body = invalid.clone();
    let up = FakeUpstream::start(move |_, _| Reply::json(200, body.clone())).await;
    let sc = start(&up).await;
    let a = write_step(&sc).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), invalid, "the backend's answer, unchanged");
    assert_eq!(up.hits(), 1);
}

/// One alias of a batched write fails transiently, the other succeeds:
/// only the failed alias is sent again (its field and the variables it
/// uses, as sent), and the app gets each alias's true final answer.
#[tokio::test]
async fn item_not_ok_retries_only_the_alias_that_failed() {
    let partial = Reply::json(
        200,
        serde_json::json!({"data": {"step0": {"ok": true, "message": "ok"}, "step1": {"ok": false, "message": "write conflict"}}}),
    );
    let up = FakeUpstream::start(move |r, hit| {
        if hit == 0 {
            partial.clone()
        } else {
            // Answer whatever aliases were sent.
            let body = r.json();
            let mut data = serde_json::Map::new();
            for key in ["step0", "step1"] {
                if body["query"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&format!("{key}:"))
                {
                    data.insert(
                        key.into(),
                        serde_json::json!({"ok": true, "message": "retried"}),
                    );
                }
            }
            Reply::json(200, serde_json::json!({ "data": data }))
        }
    })
    .await;
    let sc = start(&up).await;
    let a = client::post_json(sc.addr, "/api/graphql", &add_step(&["a", "b"])).await;
    assert_eq!((a.status.as_u16(), attempts(&a)), (200, 2));
    assert_eq!(
        a.json(),
        serde_json::json!({"data": {"step0": {"ok": true, "message": "ok"}, "step1": {"ok": true, "message": "retried"}}})
    );
    let second = up.requests()[1].json();
    let query = second["query"].as_str().unwrap();
    assert!(
        query.contains("step1: ingestStep(id: $id_1, output: $output_1)"),
        "{query}"
    );
    assert!(
        !query.contains("step0"),
        "the settled alias is not sent again: {query}"
    );
    assert_eq!(
        second["variables"],
        serde_json::json!({"id_1": "b", "output_1": {"content": "hello"}}),
        "only the variables the open alias uses"
    );
}

/// Mixed answers: one alias succeeds, one is refused for good, one fails
/// transiently twice and then succeeds. The refused one is not sent again
/// and comes back to the app as the backend said; the transient one is
/// sent alone until it succeeds.
#[tokio::test]
async fn mixed_alias_answers_settle_each_alias_on_its_own() {
    let up = FakeUpstream::start(move |r, hit| {
        let q = r.json()["query"].as_str().unwrap_or_default().to_string();
        let mut data = serde_json::Map::new();
        let mut errors = Vec::new();
        if q.contains("step0:") {
            data.insert("step0".into(), serde_json::json!({"ok": true, "message": "stored"}));
        }
        if q.contains("step1:") {
            data.insert("step1".into(), serde_json::json!({"ok": false, "message": "Invalid step type"}));
        }
        if q.contains("step2:") {
            if hit < 2 {
                data.insert("step2".into(), serde_json::Value::Null);
                errors.push(serde_json::json!({"message": "db busy", "path": ["step2"], "extensions": {"code": "INTERNAL_SERVER_ERROR"}}));
            } else {
                data.insert("step2".into(), serde_json::json!({"ok": true, "message": "stored late"}));
            }
        }
        let mut body = serde_json::json!({ "data": data });
        if !errors.is_empty() {
            body["errors"] = serde_json::Value::Array(errors);
        }
        Reply::json(200, body)
    })
    .await;
    let sc = start(&up).await;
    let a = client::post_json(sc.addr, "/api/graphql", &add_step(&["a", "b", "c"])).await;
    assert_eq!((a.status.as_u16(), attempts(&a)), (200, 3));
    assert_eq!(
        a.json(),
        serde_json::json!({"data": {
            "step0": {"ok": true, "message": "stored"},
            "step1": {"ok": false, "message": "Invalid step type"},
            "step2": {"ok": true, "message": "stored late"}
        }}),
        "each alias carries its true final result"
    );
    let sent: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.json()["query"].as_str().unwrap().to_string())
        .collect();
    assert!(sent[0].contains("step0:") && sent[0].contains("step1:"));
    for later in &sent[1..] {
        assert!(
            later.contains("step2:") && !later.contains("step0:") && !later.contains("step1:"),
            "only the open alias is sent again: {later}"
        );
    }
}

/// A batch that names the same step twice keeps their order: when the
/// first of them fails and the second succeeds, both are sent again, in
/// order, so the step ends on the second version.
#[tokio::test]
async fn a_step_named_twice_in_a_batch_keeps_its_order() {
    let up = FakeUpstream::start(move |r, hit| {
        let q = r.json()["query"].as_str().unwrap_or_default().to_string();
        let mut data = serde_json::Map::new();
        for key in ["step0", "step1", "step2"] {
            if q.contains(&format!("{key}:")) {
                let ok = !(hit == 0 && key == "step0");
                data.insert(
                    key.into(),
                    serde_json::json!({"ok": ok, "message": if ok { "stored" } else { "busy" }}),
                );
            }
        }
        Reply::json(200, serde_json::json!({ "data": data }))
    })
    .await;
    let sc = start(&up).await;
    let body = client::add_step_with(vec![
        ("s".to_string(), "v1".to_string()),
        ("t".to_string(), "t1".to_string()),
        ("s".to_string(), "v2".to_string()),
    ]);
    let a = client::post_json(sc.addr, "/api/graphql", &body).await;
    assert_eq!(a.status, 200);
    let second = up.requests()[1].json();
    let query = second["query"].as_str().unwrap();
    assert!(
        query.contains("step0:") && query.contains("step2:") && !query.contains("step1:"),
        "the failed version and the later version of the same step go again, the other step does not: {query}"
    );
    assert!(
        query.find("step0:") < query.find("step2:"),
        "in their order: {query}"
    );
    assert_eq!(a.json()["data"]["step2"]["ok"], true);
}

/// Documents that cannot be cut safely (fragments, directives on the
/// operation) are forwarded untouched and retried whole.
#[tokio::test]
async fn documents_with_fragments_are_retried_whole() {
    let partial = Reply::json(
        200,
        serde_json::json!({"data": {"a": {"ok": true}, "b": {"ok": false, "message": "busy"}}}),
    );
    // Each document: a partial answer, then a full one.
    let up = FakeUpstream::start(move |_, hit| {
        if hit % 2 == 0 {
            partial.clone()
        } else {
            Reply::json(
                200,
                serde_json::json!({"data": {"a": {"ok": true}, "b": {"ok": true}}}),
            )
        }
    })
    .await;
    let sc = start(&up).await;
    for query in [
        "mutation M { ...W } fragment W on Mutation { a: ingestStep(id: \"1\") { ok } b: ingestStep(id: \"2\") { ok } }",
        "mutation M @atomic { a: ingestStep(id: \"1\") { ok } b: ingestStep(id: \"2\") { ok } }",
    ] {
        let body = serde_json::json!({ "query": query });
        let before = up.hits();
        let a = client::post_json(sc.addr, "/api/graphql", &body).await;
        assert_eq!(a.status, 200);
        let reqs = up.requests();
        assert_eq!(reqs.len() - before, 2, "sent, then sent again");
        assert_eq!(reqs[before + 1].json()["query"], query, "untouched");
    }
}

#[tokio::test]
async fn non_json_200_is_retried_then_502() {
    let up = FakeUpstream::start(first_n(1, Reply::text(200, "<html>proxy error</html>"))).await;
    let sc = start(&up).await;
    let a = write_step(&sc).await;
    assert_eq!((a.status.as_u16(), attempts(&a)), (200, 2));

    let up = FakeUpstream::start(|_, _| Reply::text(200, "<html>proxy error</html>")).await;
    let sc = start(&up).await;
    let a = write_step(&sc).await;
    assert_eq!(a.status, 502);
    assert_eq!(gql_code(&a), "bad_upstream_response");
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn queries_are_retried_like_other_idempotent_requests() {
    let up = FakeUpstream::start(first_n(1, Reply::Close)).await;
    let sc = start(&up).await;
    let a = client::post_json(sc.addr, "/api/graphql", &query()).await;
    assert_eq!((a.status.as_u16(), attempts(&a)), (200, 2));
}

#[tokio::test]
async fn the_deadline_is_never_exceeded() {
    // Each attempt hangs; per-try is longer than what is left near the end,
    // so the last attempt is clamped to the deadline.
    let up = FakeUpstream::start(|_, _| Reply::Hang).await;
    let sc = Sidecar::start(
        &up.url(),
        &settings(
            "per_try = \"700ms\"\ndeadline = \"1500ms\"",
            "backoff_base = \"10ms\"\nbackoff_max = \"10ms\"\nmin_attempt_time = \"10ms\"",
            "",
        ),
    )
    .await;
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let a = write_step(&sc).await;
        let took = started.elapsed();
        assert_eq!(a.status, 504);
        assert!(
            took < Duration::from_millis(1600),
            "took {took:?} with a 1.5s deadline"
        );
        assert!(
            took >= Duration::from_millis(1400),
            "gave up early: {took:?}"
        );
    }
}

#[tokio::test]
async fn budget_stops_a_retry_storm() {
    let up = FakeUpstream::start(|_, _| Reply::text(503, "down")).await;
    let sc = Sidecar::start(
        &up.url(),
        &settings(
            "",
            "max_attempts = 4\nbackoff_base = \"1ms\"\nbackoff_max = \"1ms\"\nmin_attempt_time = \"1ms\"\nbudget_ratio = 0.2\nbudget_min_per_sec = 1\nbudget_window = \"10s\"",
            "",
        ),
    )
    .await;
    let requests = 100;
    for _ in 0..requests {
        let a = write_step(&sc).await;
        assert_eq!(a.status, 503);
    }
    let attempts = up.hits();
    // requests × (1 + ratio) + reserve (1/s × 10 s).
    let bound = requests + requests / 5 + 10;
    assert!(
        attempts <= bound,
        "{attempts} upstream attempts for {requests} requests (bound {bound})"
    );
    assert!(attempts > requests, "some retries were allowed");
    let m = metrics(&sc).await;
    let exhausted = sample(
        &m,
        "datalayer_sidecar_not_retried_total{route=\"spooled_writes\",reason=\"budget_exhausted\"}",
    )
    .unwrap();
    assert!(exhausted > 50.0, "{m}");
}

#[tokio::test]
async fn budget_exhaustion_on_an_error_is_reported_as_such() {
    let gone = FakeUpstream::start(|_, _| Reply::status(200)).await.stop();
    let sc = Sidecar::start(
        &format!("http://{gone}"),
        &settings(
            "",
            "backoff_base = \"1ms\"\nbackoff_max = \"1ms\"\nmin_attempt_time = \"1ms\"\nbudget_ratio = 0.0\nbudget_min_per_sec = 0",
            "",
        ),
    )
    .await;
    let a = write_step(&sc).await;
    assert_eq!(a.status, 503);
    assert_eq!(gql_code(&a), "retry_budget_exhausted");
    assert_eq!(attempts(&a), 1);
}

#[tokio::test]
async fn over_cap_body_is_forwarded_once_and_the_reason_counted() {
    let up = FakeUpstream::start(|_, _| Reply::text(503, "down")).await;
    let sc = Sidecar::start(
        &up.url(),
        &settings(
            "",
            "backoff_base = \"1ms\"\nbackoff_max = \"1ms\"\nmin_attempt_time = \"1ms\"\nmax_replay_body = \"1KiB\"",
            "",
        ),
    )
    .await;
    let big = serde_json::json!({"blob": "x".repeat(4096)});
    let a = post_json_to(sc.addr, "/api/things", &big, "PUT").await;
    assert_eq!(a.status, 503);
    assert_eq!(up.hits(), 1);
    assert_eq!(up.requests()[0].body.len(), big.to_string().len());
    let m = metrics(&sc).await;
    assert_eq!(
        sample(
            &m,
            "datalayer_sidecar_not_retried_total{route=\"default\",reason=\"body_over_cap\"}"
        ),
        Some(1.0),
        "{m}"
    );
    // Under the cap, the same request is retried.
    let small = serde_json::json!({"blob": "x"});
    let a = post_json_to(sc.addr, "/api/things", &small, "PUT").await;
    assert_eq!(attempts(&a), 4);
}

#[tokio::test]
async fn breaker_opens_fails_fast_and_closes_after_probes() {
    let up = FakeUpstream::start(|_, _| Reply::text(503, "down")).await;
    let url = up.url();
    let sc = Sidecar::start(
        &url,
        &settings(
            "",
            "max_attempts = 1",
            "enabled = true\nconsecutive_failures = 3\nopen_for = \"1s\"\nprobes = 1",
        ),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(write_step(&sc).await.status, 503);
    }
    assert_eq!(up.hits(), 3);
    let a = write_step(&sc).await;
    assert_eq!(a.status, 503);
    assert_eq!(gql_code(&a), "circuit_open");
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(up.hits(), 3, "fail fast: not sent");
    let b = client::get(sc.admin, "/breaker").await.json();
    assert_eq!(b["state"], "open");
    let m = metrics(&sc).await;
    assert_eq!(
        sample(&m, "datalayer_sidecar_breaker_state "),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "datalayer_sidecar_breaker_transitions_total{to=\"open\"}"
        ),
        Some(1.0)
    );
    drop(up);
    // The upstream recovers on the same port; after open_for a probe closes it.
    let listener = support::upstream::rebind(sc_upstream_addr(&url)).await;
    let up = FakeUpstream::start_on(listener, |_, _| Reply::json(200, steps_ok(1)), None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = write_step(&sc).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        client::get(sc.admin, "/breaker").await.json()["state"],
        "closed"
    );
    assert_eq!(up.hits(), 1);
}

fn sc_upstream_addr(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

#[tokio::test]
async fn client_errors_do_not_open_the_breaker() {
    let up = FakeUpstream::start(|_, _| Reply::text(400, "bad input")).await;
    let sc = Sidecar::start(
        &up.url(),
        &settings(
            "",
            "",
            "enabled = true\nconsecutive_failures = 2\nmin_calls = 2",
        ),
    )
    .await;
    for _ in 0..10 {
        let a = write_step(&sc).await;
        assert_eq!(a.status, 400);
    }
    assert_eq!(up.hits(), 10);
    assert_eq!(
        client::get(sc.admin, "/breaker").await.json()["state"],
        "closed"
    );
}

#[tokio::test]
async fn oversized_graphql_answer_passes_unclassified() {
    let mut errors = Vec::new();
    for i in 0..100 {
        errors.push(serde_json::json!({"message": format!("error {i} with some padding text"), "extensions": {"code": "INTERNAL_SERVER_ERROR"}}));
    }
    let big = serde_json::json!({ "errors": errors });
    let body = big.clone();
    let up = FakeUpstream::start(move |_, _| Reply::json(200, body.clone())).await;
    let sc = Sidecar::start(
        &up.url(),
        &format!(
            "[classify]\nmax_graphql_response = \"1KiB\"\n{}",
            settings("", "", "")
        ),
    )
    .await;
    let a = write_step(&sc).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), big, "streamed through whole");
    assert_eq!(up.hits(), 1, "unjudged, so not retried");
    let m = metrics(&sc).await;
    assert_eq!(
        sample(
            &m,
            "datalayer_sidecar_upstream_attempts_total{route=\"spooled_writes\",class=\"success\",kind=\"unclassified\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn route_overrides_beat_global_settings() {
    let gone = FakeUpstream::start(|_, _| Reply::status(200)).await.stop();
    let routes = r#"
[[routes]]
name = "no_retry"
path_prefix = "/once"
retry = { max_attempts = 1 }
timeouts = { per_try = "100ms", deadline = "300ms" }
error_format = "graphql"
"#;
    let sc = Sidecar::start(
        &format!("http://{gone}"),
        &format!("[breaker]\nenabled = false\n{routes}"),
    )
    .await;
    let a = client::get(sc.addr, "/once/x").await;
    assert_eq!((a.status.as_u16(), attempts(&a)), (503, 1));
    assert_eq!(
        gql_code(&a),
        "upstream_connect_failed",
        "route's error format"
    );
    let a = client::get(sc.addr, "/elsewhere").await;
    assert_eq!(attempts(&a), 4, "global max_attempts on the default route");
}

//! Header values a client or a backend controls: `Retry-After` (seconds or
//! an HTTP date, any value) and `x-request-id` (kept, logged, stored with a
//! spooled write, written into structured error bodies). No panic; the
//! error body stays JSON whatever the id; a stored id rebuilds a header.
#![no_main]

use std::time::{Duration, SystemTime};

use datalayer_sidecar::classify::retry_after;
use datalayer_sidecar::exchange::Exchange;
use datalayer_sidecar::respond::{Failure, failure_response};
use http::{HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, value.clone());
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let wait = retry_after(&headers, now);
    let ex = Exchange::new(value.clone());
    let failure = Failure {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "circuit_open",
        message: String::from_utf8_lossy(data).into_owned(),
        class: datalayer_sidecar::classify::Verdict::Transient,
        retryable: true,
        retry_after: wait,
    };
    let resp = failure_response(&failure, &ex);
    let body = resp.body().bytes().expect("an error body is held whole");
    serde_json::from_slice::<serde_json::Value>(body).expect("an error body is JSON");
    if let Some(ra) = resp.headers().get(http::header::RETRY_AFTER) {
        assert!(ra.to_str().unwrap().parse::<u64>().unwrap() >= 1);
    }
    // As the spool stores the id and the worker rebuilds it.
    let stored = value.to_str().unwrap_or("-").to_string();
    let _ = HeaderValue::from_str(&stored).expect("a stored id is a header value again");
});

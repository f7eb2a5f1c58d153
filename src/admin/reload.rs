//! `POST /reload`, the one admin endpoint that acts.
//!
//! It does not reload anything itself: it queues a request to the task that
//! builds generations (the same queue `SIGHUP` uses, so two reloads never
//! race) and answers that task's [`ReloadReport`](crate::generation::ReloadReport)
//! once the new generation is in force or refused.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::{AdminState, json};
use crate::generation::{ReloadRequest, Trigger};

/// Queue a reload and wait for its report: 200 applied, 422 invalid, 503
/// when there is no config source or the sidecar is shutting down.
pub(super) async fn reload(state: &AdminState) -> Response<Full<Bytes>> {
    let Some(tx) = &state.reload else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"result": "unavailable", "error": "this sidecar was started without a config source to reload"}),
        );
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let queued = tx.send(ReloadRequest {
        trigger: Trigger::Http,
        reply: Some(reply),
    });
    let report = match queued {
        Ok(()) => answer.await.ok(),
        Err(_) => None,
    };
    match report {
        Some(r) => {
            let status = if r.result == "applied" {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            json(status, &serde_json::to_value(&r).unwrap_or_default())
        }
        None => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"result": "unavailable", "error": "the sidecar is shutting down"}),
        ),
    }
}

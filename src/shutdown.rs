//! The shutdown signal every long-running task watches: a `watch` channel
//! that turns `true` once. A leaf, so the servers, the replay worker and
//! the admin port wait on it without depending on each other.

use tokio::sync::watch;

/// Wait until `shutdown` turns true (or its sender is gone).
pub async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

//! The one decision about a refusal (a permanent class): is it the write's
//! fault, or the system's?
//!
//! A refusal of the write's content (a GraphQL error or an `ok: false` for
//! it, a status in `spool.dead_letter_statuses`, a body too large) is
//! final: on replay the entry is dead-lettered, live the app gets the
//! backend's answer. Any other refusal (401, 403, 404, a certificate the
//! roots reject, anything unclassified) says nothing against the write —
//! the key was rotated, the certificate expired — so the write is kept and
//! the queue pauses until a probe goes through. Live and replay take it
//! from here alike: a live spoolable write that meets such a refusal is
//! stored and acknowledged, and the queue pauses, exactly as if the worker
//! had met it.

use crate::classify::{Class, Kind};

/// Why a refusal is the system's: the pause reason (`status_401`, `tls`,
/// ...); `None` when it is the write's own content's fault.
pub fn system_refusal(class: &Class, dead_letter_statuses: &[u16]) -> Option<String> {
    match class.kind {
        Kind::GraphqlError | Kind::ItemNotOk | Kind::BodyTooLarge => None,
        Kind::Status(s) if dead_letter_statuses.contains(&s) => None,
        Kind::Status(s) => Some(format!("status_{s}")),
        k => Some(k.as_str().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Verdict;

    fn permanent(kind: Kind) -> Class {
        Class {
            verdict: Verdict::Permanent,
            kind,
            ..Class::OK
        }
    }

    #[test]
    fn content_refusals_are_final_and_everything_else_pauses() {
        let dls = [400, 409, 410, 413, 422];
        for k in [Kind::GraphqlError, Kind::ItemNotOk, Kind::Status(422)] {
            assert_eq!(system_refusal(&permanent(k), &dls), None, "{k:?}");
        }
        assert_eq!(
            system_refusal(&permanent(Kind::Status(401)), &dls).as_deref(),
            Some("status_401")
        );
        assert_eq!(
            system_refusal(&permanent(Kind::TlsCertificate), &dls).as_deref(),
            Some("tls")
        );
    }
}

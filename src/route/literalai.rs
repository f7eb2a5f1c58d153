//! The LiteralAI preset: every GraphQL operation the LiteralAI Python SDK
//! can send (0.1.201, the version chainlit 2.12.0 pins, through 0.1.300,
//! the last release; their documents are identical), what the sidecar may do
//! with it and why, and the routes built from that table.
//!
//! The table is the single source: the preset's routes list their root
//! fields from it, spooled writes take their ordering keys from it, and
//! `docs/literalai-preset.md` is checked against it by a test. A test in the
//! end-to-end suite reads the SDK's own documents and fails if one of their
//! root fields is missing here.

use std::time::Duration;

use crate::graphql::OperationType;
use crate::route::file::{GraphqlMatchFile, OnFailure, RetryOverride, RouteFile, TimeoutsOverride};
use crate::route::vocabulary::{Vocabulary, Writes};

/// What the sidecar may do with an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// An upsert, update or delete keyed by an id the client chose: sending
    /// it twice leaves the same state, so it is retried even after it may
    /// have reached the backend and, when it cannot be delivered now, it is
    /// spooled and answered with a success.
    Spooled,
    /// Sending it twice leaves the same state (retried after it may have
    /// reached the backend), but the app awaits it and uses the answer, so
    /// it is never answered from the spool.
    Idempotent,
    /// A create that mints a server-side id: a second send would create a
    /// second object, so it is retried only when it certainly did not reach
    /// the backend, and never spooled.
    Once,
    /// A read: always safe to retry.
    Read,
}

impl Handling {
    /// Stable label (docs, `explain`).
    pub fn as_str(self) -> &'static str {
        match self {
            Handling::Spooled => "spooled",
            Handling::Idempotent => "idempotent",
            Handling::Once => "once",
            Handling::Read => "read",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    /// The root field, e.g. `ingestStep`.
    pub field: &'static str,
    /// Query or mutation.
    pub kind: OperationType,
    /// What the sidecar may do with it.
    pub handling: Handling,
    /// What its `id` argument names, for per-key order of spooled writes
    /// (`step`, `thread`, ...).
    pub entity: Option<&'static str>,
    /// A delete of something other writes refer to without naming it in
    /// their `id` (a thread's steps, a step's attachments): delivered only
    /// after every write spooled before it, and before any spooled after.
    pub barrier: bool,
    /// The SDK method that sends it.
    pub sdk: &'static str,
    /// Why it is handled so.
    pub reason: &'static str,
}

const fn op(
    field: &'static str,
    kind: OperationType,
    handling: Handling,
    entity: Option<&'static str>,
    barrier: bool,
    sdk: &'static str,
    reason: &'static str,
) -> Op {
    Op {
        field,
        kind,
        handling,
        entity,
        barrier,
        sdk,
        reason,
    }
}

use Handling::{Idempotent, Once, Read, Spooled};
use OperationType::{Mutation as M, Query as Q};

/// Every operation the SDK sends, mutations first.
pub static OPERATIONS: &[Op] = &[
    op(
        "ingestStep",
        M,
        Spooled,
        Some("step"),
        false,
        "send_steps (Chainlit create_step, update_step, create_element)",
        "upsert keyed by the client's step id; the batched `AddStep` mutation has one alias per step",
    ),
    op(
        "upsertThread",
        M,
        Spooled,
        Some("thread"),
        false,
        "upsert_thread (Chainlit update_thread)",
        "upsert keyed by the client's thread id; the SDK leaves out fields it does not set",
    ),
    op(
        "updateThread",
        M,
        Spooled,
        Some("thread"),
        false,
        "update_thread",
        "sets the given fields of the thread with the client's id",
    ),
    op(
        "updateStep",
        M,
        Spooled,
        Some("step"),
        false,
        "update_step",
        "sets the given fields of the step with the client's id",
    ),
    op(
        "deleteStep",
        M,
        Spooled,
        Some("step"),
        false,
        "delete_step (Chainlit delete_step)",
        "delete by the client's step id; ordered with that step's writes",
    ),
    op(
        "deleteThread",
        M,
        Spooled,
        Some("thread"),
        true,
        "delete_thread (Chainlit delete_thread)",
        "delete by the client's thread id; steps name their thread outside `id`, so it is a barrier",
    ),
    op(
        "deleteAttachment",
        M,
        Spooled,
        Some("attachment"),
        true,
        "delete_attachment (Chainlit delete_element)",
        "delete by the element id Chainlit chose; attachments are created inside `ingestStep`, so it is a barrier",
    ),
    op(
        "updateParticipant",
        M,
        Idempotent,
        Some("participant"),
        false,
        "update_user (Chainlit create_user at login)",
        "sets fields of an existing user; awaited at login, which needs the real user record",
    ),
    op(
        "deleteParticipant",
        M,
        Idempotent,
        Some("participant"),
        false,
        "delete_user",
        "delete by id; awaited by the caller",
    ),
    op(
        "updateScore",
        M,
        Idempotent,
        Some("score"),
        false,
        "update_score (Chainlit upsert_feedback)",
        "sets the value and comment of an existing score; the user awaits the feedback",
    ),
    op(
        "deleteScore",
        M,
        Idempotent,
        Some("score"),
        false,
        "delete_score (Chainlit delete_feedback)",
        "delete by id; the user awaits it",
    ),
    op(
        "updateAttachment",
        M,
        Idempotent,
        Some("attachment"),
        false,
        "update_attachment",
        "sets fields of an existing attachment; the caller uses the answer",
    ),
    op(
        "updateDataset",
        M,
        Idempotent,
        Some("dataset"),
        false,
        "update_dataset",
        "sets fields of an existing dataset; the caller uses the answer",
    ),
    op(
        "deleteDataset",
        M,
        Idempotent,
        Some("dataset"),
        false,
        "delete_dataset",
        "delete by id; the caller uses the answer",
    ),
    op(
        "deleteDatasetItem",
        M,
        Idempotent,
        Some("dataset_item"),
        false,
        "delete_dataset_item",
        "delete by id; the caller uses the answer",
    ),
    op(
        "updatePromptLineageRollout",
        M,
        Idempotent,
        None,
        false,
        "update_prompt_ab_testing",
        "replaces the whole rollout of a prompt lineage",
    ),
    op(
        "createParticipant",
        M,
        Once,
        None,
        false,
        "create_user (Chainlit create_user)",
        "the backend mints the user id",
    ),
    op(
        "createThread",
        M,
        Once,
        None,
        false,
        "create_thread",
        "the backend mints the thread id",
    ),
    op(
        "createStep",
        M,
        Once,
        None,
        false,
        "create_step",
        "the backend mints the step id",
    ),
    op(
        "createScore",
        M,
        Once,
        None,
        false,
        "create_score, create_scores (Chainlit upsert_feedback)",
        "the backend mints the score id; `CreateScores` batches one alias per score",
    ),
    op(
        "createAttachment",
        M,
        Once,
        None,
        false,
        "create_attachment",
        "the backend mints the attachment id",
    ),
    op(
        "createGeneration",
        M,
        Once,
        None,
        false,
        "create_generation",
        "the backend mints the generation id",
    ),
    op(
        "createDataset",
        M,
        Once,
        None,
        false,
        "create_dataset",
        "the backend mints the dataset id",
    ),
    op(
        "createDatasetItem",
        M,
        Once,
        None,
        false,
        "create_dataset_item",
        "the backend mints the item id",
    ),
    op(
        "createDatasetExperiment",
        M,
        Once,
        None,
        false,
        "create_experiment",
        "the backend mints the experiment id",
    ),
    op(
        "createDatasetExperimentItem",
        M,
        Once,
        None,
        false,
        "create_experiment_item",
        "the backend mints the item id",
    ),
    op(
        "addStepToDataset",
        M,
        Once,
        None,
        false,
        "add_step_to_dataset",
        "creates a dataset item with a new id",
    ),
    op(
        "addGenerationToDataset",
        M,
        Once,
        None,
        false,
        "add_generation_to_dataset",
        "creates a dataset item with a new id",
    ),
    op(
        "createPromptLineage",
        M,
        Once,
        None,
        false,
        "create_prompt_lineage",
        "the backend mints the lineage id",
    ),
    op(
        "createPromptVersion",
        M,
        Once,
        None,
        false,
        "get_or_create_prompt",
        "the backend numbers the version",
    ),
    op(
        "createPromptExperiment",
        M,
        Once,
        None,
        false,
        "create_prompt_variant",
        "the backend mints the experiment id",
    ),
    op(
        "participant",
        Q,
        Read,
        None,
        false,
        "get_user (Chainlit get_user, create_user)",
        "read",
    ),
    op("participants", Q, Read, None, false, "get_users", "read"),
    op(
        "threads",
        Q,
        Read,
        None,
        false,
        "get_threads, list_threads (Chainlit list_threads)",
        "read",
    ),
    op(
        "threadDetail",
        Q,
        Read,
        None,
        false,
        "get_thread (Chainlit get_thread)",
        "read",
    ),
    op("step", Q, Read, None, false, "get_step", "read"),
    op("steps", Q, Read, None, false, "get_steps", "read"),
    op("scores", Q, Read, None, false, "get_scores", "read"),
    op(
        "attachment",
        Q,
        Read,
        None,
        false,
        "get_attachment (Chainlit get_element)",
        "read",
    ),
    op(
        "generations",
        Q,
        Read,
        None,
        false,
        "get_generations",
        "read",
    ),
    op(
        "datasetItem",
        Q,
        Read,
        None,
        false,
        "get_dataset_item",
        "read",
    ),
    op(
        "promptLineage",
        Q,
        Read,
        None,
        false,
        "create_prompt_variant",
        "read",
    ),
    op("promptVersion", Q, Read, None, false, "get_prompt", "read"),
    op(
        "promptLineageRollout",
        Q,
        Read,
        None,
        false,
        "get_prompt_ab_testing",
        "read",
    ),
];

/// The table row for a root field.
pub fn lookup(field: &str) -> Option<&'static Op> {
    OPERATIONS.iter().find(|o| o.field == field)
}

/// The LiteralAI API's answers to the generic core's questions, from the
/// table: `ingestStep` and `deleteStep` both write a `step`, deleting a
/// thread is a barrier, and single step writes may be joined on replay.
#[derive(Debug)]
pub struct LiteralAi;

impl Vocabulary for LiteralAi {
    fn name(&self) -> &'static str {
        "literalai"
    }
    fn writes(&self, field: &str) -> Writes {
        lookup(field).map_or(Writes::default(), |o| Writes {
            entity: o.entity,
            barrier: o.barrier,
        })
    }
    fn joinable_field(&self) -> Option<&'static str> {
        Some("ingestStep")
    }
    fn handling(&self, field: &str) -> Option<&'static str> {
        lookup(field).map(|o| o.handling.as_str())
    }
}

fn fields(pred: impl Fn(&Op) -> bool) -> Vec<String> {
    OPERATIONS
        .iter()
        .filter(|o| pred(o))
        .map(|o| o.field.to_string())
        .collect()
}

fn graphql_route(name: &str, kind: OperationType, root_fields: Option<Vec<String>>) -> RouteFile {
    RouteFile {
        name: name.to_string(),
        methods: vec!["POST".to_string()],
        path: Some("/api/graphql".to_string()),
        path_prefix: None,
        graphql: Some(GraphqlMatchFile {
            operation_type: Some(kind),
            operation_name: None,
            root_fields,
        }),
        idempotent: None,
        error_format: None,
        on_failure: OnFailure::Error,
        mode: Default::default(),
        breaker: true,
        timeouts: TimeoutsOverride::default(),
        retry: RetryOverride::default(),
    }
}

/// The longest attempt on `spooled_writes`.
const SPOOLED_PER_TRY: Duration = Duration::from_millis(2500);

/// The preset's routes, in match order (the catch-all is added by the
/// table builder). `spooled_writes` tightens the global policy rather than
/// replacing it: attempts no longer than `min(timeouts.per_try, 2.5s)` and
/// twice `retry.max_attempts` (at most 16), so an operator's global
/// settings still bound it. `per_try` and `max_attempts` are the global
/// `timeouts.per_try` and `retry.max_attempts`.
pub fn routes(per_try: Duration, max_attempts: u32) -> Vec<RouteFile> {
    let spooled = fields(|o| o.handling == Spooled);
    let idempotent = fields(|o| matches!(o.handling, Spooled | Idempotent));
    vec![
        // Every root is a spoolable upsert or delete. Small writes a healthy
        // backend answers in well under a second: shorter attempts, so more
        // of them fit before the deadline.
        RouteFile {
            idempotent: Some(true),
            on_failure: OnFailure::Spool,
            timeouts: TimeoutsOverride {
                per_try: Some(per_try.min(SPOOLED_PER_TRY)),
                deadline: None,
            },
            retry: RetryOverride {
                max_attempts: Some((max_attempts * 2).min(16)),
                ..RetryOverride::default()
            },
            ..graphql_route("spooled_writes", M, Some(spooled))
        },
        // Every root is idempotent, at least one is not spoolable.
        RouteFile {
            idempotent: Some(true),
            ..graphql_route("idempotent_writes", M, Some(idempotent))
        },
        // Everything else that writes: creates.
        RouteFile {
            idempotent: Some(false),
            ..graphql_route("mutations", M, None)
        },
        RouteFile {
            idempotent: Some(true),
            ..graphql_route("queries", Q, None)
        },
        // Signs an upload URL for a file name the SDK chose: asking twice
        // is harmless. The SDK waits 20 s here.
        RouteFile {
            name: "upload".to_string(),
            methods: vec!["POST".to_string()],
            path: Some("/api/upload/file".to_string()),
            path_prefix: None,
            graphql: None,
            idempotent: Some(true),
            error_format: None,
            on_failure: OnFailure::Error,
            mode: Default::default(),
            breaker: true,
            timeouts: TimeoutsOverride {
                per_try: Some(Duration::from_secs(15)),
                deadline: Some(Duration::from_secs(18)),
            },
            retry: RetryOverride::default(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_unique_and_spooled_ones_have_an_entity() {
        let mut seen = std::collections::HashSet::new();
        for o in OPERATIONS {
            assert!(seen.insert(o.field), "{} twice", o.field);
            if o.handling == Spooled {
                assert!(o.entity.is_some(), "{} needs an entity", o.field);
                assert_eq!(o.kind, M);
            }
            assert_eq!(o.kind == Q, o.handling == Read, "{}", o.field);
        }
    }

    #[test]
    fn steps_and_threads_share_keys_across_operations() {
        let key = |f, id| crate::route::vocabulary::order_key(&LiteralAi, f, id);
        assert_eq!(key("ingestStep", "a"), "step:a");
        assert_eq!(key("deleteStep", "a"), "step:a");
        assert_eq!(key("upsertThread", "t"), "thread:t");
        assert_eq!(key("somethingElse", "x"), "somethingElse:x");
        assert!(LiteralAi.writes("deleteThread").barrier);
        assert!(!LiteralAi.writes("ingestStep").barrier);
        assert_eq!(LiteralAi.joinable_field(), Some("ingestStep"));
    }

    /// `docs/literalai-preset.md` lists every row with its handling.
    #[test]
    fn the_docs_table_matches() {
        let doc = include_str!("../../docs/literalai-preset.md");
        for o in OPERATIONS {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", o.field)))
                .unwrap_or_else(|| panic!("docs/literalai-preset.md has no row for `{}`", o.field));
            assert!(
                row.contains(&format!("| {} |", o.handling.as_str())),
                "docs row for `{}` does not say `{}`: {row}",
                o.field,
                o.handling.as_str()
            );
        }
    }
}

//! What the sidecar knows of an API's writes beyond GraphQL itself: which
//! record a root field writes, which writes must wait for every other, which
//! writes may share one replayed request, and how a preset handles a field.
//!
//! The generic core (ordering keys, the spool's hold-behind rule, the
//! worker's joining) asks these questions of the route's [`Vocabulary`]; a
//! preset answers them from its table. So the preset's module is the only
//! place that knows its API's names, and `preset = "none"` orders writes by
//! GraphQL alone: each root field its own entity, no barriers, no joining.

/// A preset's answers about its API's writes. Implementations are static
/// tables; every method is a lookup.
pub trait Vocabulary: std::fmt::Debug + Send + Sync {
    /// The preset's label (`explain` names its annotation after it).
    fn name(&self) -> &'static str;

    /// What a spooled write of this root field writes (see [`Writes`]).
    fn writes(&self, field: &str) -> Writes;

    /// The root field whose single-field writes the replay worker may join
    /// into one request, if any.
    fn joinable_field(&self) -> Option<&'static str>;

    /// How the preset handles this root field (`explain`), if it knows it.
    fn handling(&self, field: &str) -> Option<&'static str>;

    /// Whether there is a preset table to annotate fields from.
    fn has_table(&self) -> bool {
        true
    }
}

/// What a root field's write touches, for ordering it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Writes {
    /// The entity it writes, when several fields write one (a create and a
    /// delete of one record); `None` makes the field its own entity.
    pub entity: Option<&'static str>,
    /// Whether it must be ordered against every other write.
    pub barrier: bool,
}

/// No preset: GraphQL alone.
#[derive(Debug)]
pub struct Generic;

impl Vocabulary for Generic {
    fn name(&self) -> &'static str {
        "none"
    }
    fn writes(&self, _field: &str) -> Writes {
        Writes::default()
    }
    fn joinable_field(&self) -> Option<&'static str> {
        None
    }
    fn handling(&self, _field: &str) -> Option<&'static str> {
        None
    }
    fn has_table(&self) -> bool {
        false
    }
}

/// The ordering key of a spooled write's root field with this `id`:
/// `entity:id`, the entity being the field's own name unless the
/// vocabulary names one.
pub fn order_key(vocabulary: &dyn Vocabulary, field: &str, id: &str) -> String {
    key_of(vocabulary.writes(field), field, id)
}

/// [`order_key`] from what the field writes.
pub(crate) fn key_of(writes: Writes, field: &str, id: &str) -> String {
    let entity = writes.entity.unwrap_or(field);
    // Pushed, not `format!`: this runs for every spoolable write, and the
    // formatting machinery cost more than the rest of the key's work.
    let mut key = String::with_capacity(entity.len() + 1 + id.len());
    key.push_str(entity);
    key.push(':');
    key.push_str(id);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_preset_a_field_is_its_own_entity_and_nothing_is_a_barrier() {
        assert_eq!(order_key(&Generic, "deleteStep", "s"), "deleteStep:s");
        assert!(!Generic.writes("deleteThread").barrier);
        assert_eq!(Generic.joinable_field(), None);
    }
}

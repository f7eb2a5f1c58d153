//! One [`Class`] for every outcome of an upstream attempt.
//!
//! Retry, the breaker, the spool, metrics and the access log all read the same
//! value, so they can never disagree about what happened. A class says three
//! things: the verdict (success, transient, permanent), the kind (what exactly
//! happened, as a stable label), and whether the request may have reached the
//! backend — which decides whether a non-idempotent request may be retried.
//!
//! GraphQL responses are judged the way the LiteralAI SDK judges them: an HTTP
//! 200 with a non-empty `errors` or any `data.<alias>.ok == false` is a
//! failure. The body scan borrows from the buffered bytes and skips what it
//! does not need, so it allocates nothing for a well-formed success.

pub mod aliases;
pub mod layer;

use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::{self, Error};

pub use crate::failure::{Kind, Verdict};

pub use crate::failure::Class;

impl Class {
    /// Classify an error returned by an attempt.
    pub fn of_error(err: &Error) -> Class {
        let e: &(dyn std::error::Error + 'static) = err.as_ref();
        if let Some(c) = error::cause_ref::<Classified>(e) {
            return c.class;
        }
        let (kind, may_have_reached) = kind_of(e);
        let verdict = kind.answer().verdict.unwrap_or(Verdict::Permanent);
        Class::new(verdict, kind, may_have_reached)
    }
}

/// What kind of failure `e` is, found once in its chain, and whether the
/// request may have reached the backend. The class comes from the kind's
/// entry in [`crate::failure`], so nothing here decides a verdict.
fn kind_of(e: &(dyn std::error::Error + 'static)) -> (Kind, bool) {
    if error::is_caused_by::<error::CircuitOpen>(e) {
        return (Kind::CircuitOpen, false);
    }
    if error::is_caused_by::<error::BodyTooLarge>(e) {
        return (Kind::BodyTooLarge, true);
    }
    if error::is_caused_by::<error::MethodNotAllowed>(e) {
        return (Kind::MethodNotAllowed, false);
    }
    if error::is_caused_by::<error::InvalidGraphql>(e) {
        return (Kind::InvalidGraphql, false);
    }
    if let Some(over) = error::cause_ref::<error::LimitExceeded>(e) {
        return (over.kind, false);
    }
    if error::is_caused_by::<error::InvalidHost>(e) {
        return (Kind::InvalidHost, false);
    }
    if error::is_caused_by::<error::SpoolFull>(e) {
        return (Kind::SpoolFull, false);
    }
    if error::is_caused_by::<error::SpoolUnavailable>(e) {
        return (Kind::SpoolUnavailable, false);
    }
    if error::is_caused_by::<error::ClientBodyError>(e) {
        return (Kind::ClientBody, true);
    }
    if error::is_caused_by::<error::UpstreamTimeout>(e) {
        return (Kind::PerTryTimeout, true);
    }
    if error::is_caused_by::<error::DeadlineExceeded>(e) {
        return (Kind::Deadline, true);
    }
    if error::is_caused_by::<error::UpstreamBodyError>(e) {
        return (Kind::ResetMidBody, true);
    }
    if error::is_caused_by::<error::BadUpstreamResponse>(e) {
        return (Kind::BadResponse, true);
    }
    if error::is_caused_by::<error::ConnectError>(e) {
        return (connect_kind(e), false);
    }
    if let Some(tls) = error::cause_ref::<rustls::Error>(e) {
        // A certificate the roots do not accept will not start verifying
        // on the next try; anything else in the handshake might.
        let kind = match tls {
            rustls::Error::InvalidCertificate(_) => Kind::TlsCertificate,
            _ => Kind::Tls,
        };
        return (kind, false);
    }
    if let Some(h) = error::cause_ref::<hyper::Error>(e) {
        if h.is_canceled() {
            // hyper hands the request back unsent when the pooled
            // connection closed first.
            return (Kind::ResetBeforeResponse, false);
        }
        if h.is_incomplete_message() || h.is_closed() {
            return (Kind::ResetBeforeResponse, true);
        }
        if h.is_parse() || h.is_parse_status() {
            return (Kind::BadResponse, true);
        }
    }
    if let Some(io) = error::cause_ref::<std::io::Error>(e) {
        use std::io::ErrorKind::*;
        if matches!(
            io.kind(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        ) {
            return (Kind::ResetBeforeResponse, true);
        }
    }
    (Kind::Internal, true)
}

/// Tags a resolver failure so classification can tell DNS from TCP errors
/// (the connector reports both as "connect" errors).
#[derive(Debug, thiserror::Error)]
#[error("dns: {0}")]
pub struct DnsError(#[source] pub std::io::Error);

fn connect_kind(e: &(dyn std::error::Error + 'static)) -> Kind {
    if error::is_caused_by::<DnsError>(e) {
        return Kind::Dns;
    }
    if error::is_caused_by::<rustls::Error>(e) {
        return Kind::Tls;
    }
    if let Some(io) = error::cause_ref::<std::io::Error>(e) {
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => return Kind::ConnectRefused,
            std::io::ErrorKind::TimedOut => return Kind::ConnectTimeout,
            _ => {}
        }
    }
    // The connector's own timeout is not an io::Error in every version.
    let text = e.to_string();
    if text.contains("timed out") || text.contains("timeout") {
        return Kind::ConnectTimeout;
    }
    Kind::ConnectError
}

/// An error that already carries its classification (and how many attempts
/// were made), so outer layers need not classify it again.
#[derive(Debug)]
pub struct Classified {
    /// The class of the last attempt.
    pub class: Class,
    /// Attempts made for the request, the failing one included.
    pub attempts: u32,
    /// The error of the last attempt.
    pub source: Error,
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.source, self.class.kind.as_str())
    }
}

impl std::error::Error for Classified {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// What is transient, checked by the config (`[classify]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifyParams {
    /// HTTP statuses (100..=599) that are transient failures.
    pub transient_statuses: Vec<u16>,
    /// GraphQL `errors[].extensions.code` values that are transient.
    pub transient_graphql_codes: Vec<String>,
    /// Words that make an item's `ok: false` permanent (lowercase).
    pub permanent_item_messages: Vec<String>,
    /// Largest GraphQL response body read to classify it.
    pub max_graphql_response: u64,
}

impl Default for ClassifyParams {
    /// The shipped `[classify]` defaults.
    fn default() -> Self {
        ClassifyParams {
            transient_statuses: vec![429, 502, 503, 504],
            transient_graphql_codes: [
                "INTERNAL_SERVER_ERROR",
                "SERVICE_UNAVAILABLE",
                "TIMEOUT",
                "TOO_MANY_REQUESTS",
            ]
            .map(String::from)
            .to_vec(),
            permanent_item_messages: [
                "invalid",
                "validation",
                "unauthorized",
                "forbidden",
                "not allowed",
            ]
            .map(String::from)
            .to_vec(),
            max_graphql_response: 1024 * 1024,
        }
    }
}

/// Classifies responses by status and, for GraphQL exchanges, by body.
#[derive(Debug, Clone)]
pub struct Classifier {
    transient_status: Box<[bool; 600]>,
    transient_codes: Box<[String]>,
    permanent_item_patterns: Box<[String]>,
}

impl Classifier {
    /// Build from the `[classify]` settings.
    pub fn new(cfg: &ClassifyParams) -> Self {
        let mut transient_status = Box::new([false; 600]);
        for &s in &cfg.transient_statuses {
            if let Some(slot) = transient_status.get_mut(s as usize) {
                *slot = true;
            }
        }
        Classifier {
            transient_status,
            transient_codes: cfg.transient_graphql_codes.clone().into_boxed_slice(),
            permanent_item_patterns: cfg
                .permanent_item_messages
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Classify a response head. For a 2xx on a GraphQL exchange the caller
    /// follows up with [`Classifier::graphql_body`].
    pub fn status(&self, status: StatusCode, headers: &HeaderMap) -> Class {
        let code = status.as_u16();
        if status.is_success() || status.is_informational() || status.is_redirection() {
            return Class::OK;
        }
        let transient = self
            .transient_status
            .get(code as usize)
            .copied()
            .unwrap_or(false);
        let mut class = Class::new(
            if transient {
                Verdict::Transient
            } else {
                Verdict::Permanent
            },
            Kind::Status(code),
            true,
        );
        class.retry_after = retry_after(headers, SystemTime::now());
        class
    }

    /// Judge a buffered GraphQL answer to `op`: the class of the whole
    /// and, for a batched mutation, each alias's result. The per-alias
    /// reading runs only when the allocation-free scan finds a failure or
    /// fewer members in `data` than the request has root fields (an alias
    /// left unanswered was not written); then the whole's class is the
    /// merge of the aliases', so the two can never disagree.
    pub fn graphql_answer(
        &self,
        body: &[u8],
        op: &crate::graphql::Operation,
    ) -> (Class, Option<aliases::AliasAnswers>) {
        let (class, members) = self.scan(body);
        let fields = op.root_fields.len();
        let batched = op.kind == crate::graphql::OperationType::Mutation && fields >= 2;
        if !batched || class.kind == Kind::BadJson || (!class.is_failure() && members >= fields) {
            return (class, None);
        }
        let keys: Vec<&str> = op.root_fields.iter().map(|f| &*f.response_key).collect();
        match self.aliases(body, &keys) {
            Some(results) => {
                let answers = aliases::AliasAnswers(results.into());
                (answers.class(), Some(answers))
            }
            None => (class, None),
        }
    }

    /// Judge an answer to an attempt that carries only `aliases` (the
    /// retry policy's rewrite to the aliases still open): always alias by
    /// alias, so each alias's answer is kept as written.
    pub fn graphql_attempt(
        &self,
        body: &[u8],
        aliases: &[Box<str>],
    ) -> (Class, Option<aliases::AliasAnswers>) {
        let (class, _) = self.scan(body);
        if class.kind == Kind::BadJson {
            return (class, None);
        }
        let keys: Vec<&str> = aliases.iter().map(|a| &**a).collect();
        match self.aliases(body, &keys) {
            Some(results) => {
                let answers = aliases::AliasAnswers(results.into());
                (answers.class(), Some(answers))
            }
            None => (class, None),
        }
    }

    /// Judge a buffered GraphQL response body as the SDK would.
    pub fn graphql_body(&self, body: &[u8]) -> Class {
        self.scan(body).0
    }

    /// The class of a whole answer, and how many members its `data` has.
    fn scan(&self, body: &[u8]) -> (Class, usize) {
        let mut scan = ScanState::default();
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed = TopSeed {
            state: &mut scan,
            codes: &self.transient_codes,
            patterns: &self.permanent_item_patterns,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end());
        if parsed.is_err() {
            return (Class::new(Verdict::Transient, Kind::BadJson, true), 0);
        }
        let members = scan.data_members;
        if scan.errors > 0 {
            let verdict = errors_verdict(scan.transient_error);
            return (Class::new(verdict, Kind::GraphqlError, true), members);
        }
        if scan.item_not_ok {
            let verdict = item_verdict(scan.permanent_item);
            return (Class::new(verdict, Kind::ItemNotOk, true), members);
        }
        (Class::OK, members)
    }
}

// === the answer-verdict rules ===
//
// One set, read by the whole-answer scan below and by the per-alias reading
// (`aliases.rs`), for live attempts and replays alike, so an alias and the
// answer it is part of are judged by the same words.

/// GraphQL errors are transient when one carries a code of
/// `classify.transient_graphql_codes`, permanent otherwise.
pub(crate) fn errors_verdict(any_transient_code: bool) -> Verdict {
    if any_transient_code {
        Verdict::Transient
    } else {
        Verdict::Permanent
    }
}

/// Whether an error's `extensions.code` is one of the transient `codes`.
pub(crate) fn is_transient_code(codes: &[String], code: &str) -> bool {
    codes.iter().any(|c| c.as_str() == code)
}

/// An item answered `ok: false` is permanent when its message matches one
/// of `classify.permanent_item_messages`, transient otherwise (the backend
/// may accept it later).
pub(crate) fn item_verdict(permanent_message: bool) -> Verdict {
    if permanent_message {
        Verdict::Permanent
    } else {
        Verdict::Transient
    }
}

/// Whether `message` contains any of the (lower-case) `patterns`, ignoring
/// ASCII case. Runs only for `ok:false` items, never on the success path.
pub(crate) fn matches_any(message: &str, patterns: &[String]) -> bool {
    if patterns.is_empty() {
        return false;
    }
    let lower = message.to_ascii_lowercase();
    patterns.iter().any(|p| lower.contains(p.as_str()))
}

/// Parse `Retry-After` as delta-seconds or an HTTP-date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

// === the allocation-free body scan ===

#[derive(Default)]
struct ScanState {
    errors: usize,
    /// Members of `data`, when it is an object.
    data_members: usize,
    transient_error: bool,
    item_not_ok: bool,
    permanent_item: bool,
}

struct TopSeed<'s> {
    state: &'s mut ScanState,
    codes: &'s [String],
    patterns: &'s [String],
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a GraphQL response object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.0.as_ref() {
                "data" => map.next_value_seed(DataSeed {
                    state: self.state,
                    patterns: self.patterns,
                })?,
                "errors" => map.next_value_seed(ErrorsSeed {
                    state: self.state,
                    codes: self.codes,
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A map key that borrows when it can.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

struct DataSeed<'s> {
    state: &'s mut ScanState,
    patterns: &'s [String],
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GraphQL data")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            self.state.data_members += 1;
            map.next_value_seed(ItemSeed {
                state: self.state,
                patterns: self.patterns,
            })?;
        }
        Ok(())
    }
    // `data` of another shape is the backend's business, not a failure.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

struct ItemSeed<'s> {
    state: &'s mut ScanState,
    patterns: &'s [String],
}

impl<'de> DeserializeSeed<'de> for ItemSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a GraphQL field value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut ok = None;
        let mut message: Option<Key<'de>> = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.0.as_ref() {
                "ok" => ok = map.next_value::<Option<bool>>()?,
                "message" => message = map.next_value::<Option<Key<'de>>>()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if ok == Some(false) {
            self.state.item_not_ok = true;
            if let Some(m) = message
                && matches_any(&m.0, self.patterns)
            {
                self.state.permanent_item = true;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

struct ErrorsSeed<'s> {
    state: &'s mut ScanState,
    codes: &'s [String],
}

impl<'de> DeserializeSeed<'de> for ErrorsSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ErrorsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a GraphQL errors list")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(code) = seq.next_element::<ErrorCode<'de>>()? {
            self.state.errors += 1;
            if let Some(code) = code.0
                && is_transient_code(self.codes, &code)
            {
                self.state.transient_error = true;
            }
        }
        Ok(())
    }
}

/// `extensions.code` of one GraphQL error, if present.
struct ErrorCode<'de>(Option<std::borrow::Cow<'de, str>>);

impl<'de> de::Deserialize<'de> for ErrorCode<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ErrorCode<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a GraphQL error")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ErrorCode<'de>, A::Error> {
                let mut code = None;
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    if key.0 == "extensions" {
                        code = map.next_value::<Extensions<'de>>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(ErrorCode(code))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<ErrorCode<'de>, E> {
                Ok(ErrorCode(None))
            }
        }
        d.deserialize_any(V)
    }
}

struct Extensions<'de>(Option<std::borrow::Cow<'de, str>>);

impl<'de> de::Deserialize<'de> for Extensions<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Extensions<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("GraphQL error extensions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Extensions<'de>, A::Error> {
                let mut code = None;
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    if key.0 == "code" {
                        code = map.next_value::<Option<Key<'de>>>()?.map(|k| k.0);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Extensions(code))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Extensions<'de>, E> {
                Ok(Extensions(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Classifier {
        Classifier::new(&ClassifyParams::default())
    }

    #[test]
    fn graphql_success() {
        let c = classifier().graphql_body(
            br#"{"data":{"step0":{"ok":true,"message":"done"},"step1":{"ok":true}}}"#,
        );
        assert_eq!(c, Class::OK);
    }

    #[test]
    fn graphql_item_not_ok_is_a_failure() {
        let c = classifier().graphql_body(
            br#"{"data":{"step0":{"ok":true},"step1":{"ok":false,"message":"db down"}}}"#,
        );
        assert_eq!(c.kind, Kind::ItemNotOk);
        assert_eq!(c.verdict, Verdict::Transient);
    }

    #[test]
    fn item_not_ok_with_permanent_message() {
        let body = br#"{"data":{"step0":{"ok":false,"message":"Invalid input: bad id"}}}"#;
        let c = classifier().graphql_body(body);
        assert_eq!((c.kind, c.verdict), (Kind::ItemNotOk, Verdict::Permanent));
    }

    #[test]
    fn graphql_errors_by_code() {
        let cl = classifier();
        let t = cl.graphql_body(
            br#"{"errors":[{"message":"boom","extensions":{"code":"INTERNAL_SERVER_ERROR"}}],"data":null}"#,
        );
        assert_eq!(
            (t.kind, t.verdict),
            (Kind::GraphqlError, Verdict::Transient)
        );
        let p = cl.graphql_body(
            br#"{"errors":[{"message":"bad","extensions":{"code":"GRAPHQL_VALIDATION_FAILED"}}]}"#,
        );
        assert_eq!(
            (p.kind, p.verdict),
            (Kind::GraphqlError, Verdict::Permanent)
        );
        let none = cl.graphql_body(br#"{"errors":[],"data":{"x":1}}"#);
        assert_eq!(none, Class::OK);
    }

    #[test]
    fn non_json_is_bad_json() {
        let c = classifier().graphql_body(b"<html>bad gateway</html>");
        assert_eq!((c.kind, c.verdict), (Kind::BadJson, Verdict::Transient));
        let c = classifier().graphql_body(b"");
        assert_eq!(c.kind, Kind::BadJson);
    }

    #[test]
    fn statuses() {
        let cl = classifier();
        let h = HeaderMap::new();
        assert_eq!(cl.status(StatusCode::OK, &h), Class::OK);
        assert_eq!(
            cl.status(StatusCode::BAD_GATEWAY, &h).verdict,
            Verdict::Transient
        );
        assert_eq!(
            cl.status(StatusCode::BAD_REQUEST, &h).verdict,
            Verdict::Permanent
        );
        assert_eq!(
            cl.status(StatusCode::INTERNAL_SERVER_ERROR, &h).verdict,
            Verdict::Permanent
        );
    }

    #[test]
    fn retry_after_both_formats() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(http::header::RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }
}

//! Finds the spans of a GraphQL request's top-level `query`,
//! `operationName` and `variables` without building or unescaping values.
//!
//! Written by hand because the general tool pays per byte where this
//! request shape does not need it: to skip or borrow the ~1.2 KB query text
//! (an escape on every line), `serde_json` walks it byte by byte — about
//! 7,500 instructions per request in callgrind. This scanner jumps from quote
//! to quote with `memchr`. It checks the object's structure (strings,
//! nesting, separators, nothing after the closing brace) but not the
//! spelling of literals; anything it does not recognise returns `None` and
//! the caller falls back to `serde_json`, which also words the error.

use memchr::memchr;

/// Raw JSON spans (quotes and escapes included) of the fields read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Spans<'a> {
    pub(crate) query: Option<&'a str>,
    pub(crate) operation_name: Option<&'a str>,
    pub(crate) variables: Option<&'a str>,
}

/// Deepest nesting accepted inside a value (the fallback handles more).
const MAX_DEPTH: usize = 128;

/// Bytes that matter while skipping a nested value.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t
};

pub(crate) fn scan(body: &[u8]) -> Option<Spans<'_>> {
    let s = std::str::from_utf8(body).ok()?;
    let mut spans = Spans::default();
    fields(s, |key, raw| match key {
        "query" => spans.query = Some(raw),
        "operationName" => spans.operation_name = Some(raw),
        "variables" => spans.variables = Some(raw),
        _ => {}
    })?;
    Some(spans)
}

/// Calls `f(key, raw value)` for each member of the JSON object `s`;
/// `None` when `s` is not an object this scanner understands.
pub(crate) fn fields<'a>(s: &'a str, mut f: impl FnMut(&'a str, &'a str)) -> Option<()> {
    let b = s.as_bytes();
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut first = true;
    loop {
        i = ws(b, i);
        match b.get(i)? {
            b'}' if first => {
                i += 1;
                break;
            }
            b'"' => {}
            _ => return None,
        }
        first = false;
        let key_end = string_end(b, i)?;
        let key = &s[i + 1..key_end - 1];
        if key.contains('\\') {
            return None;
        }
        i = ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = ws(b, i + 1);
        let end = value_end(b, i)?;
        f(key, &s[i..end]);
        i = ws(b, end);
        match b.get(i)? {
            b',' => i += 1,
            b'}' => {
                i += 1;
                break;
            }
            _ => return None,
        }
    }
    (ws(b, i) == b.len()).then_some(())
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Index just past the string that starts at `start` (a quote).
///
/// Jumps from quote to quote: a query text has an escape on every line but
/// few quotes, so searching for the quote alone and then counting the
/// backslashes before it is the short path.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let j = i + memchr(b'"', b.get(i..)?)?;
        let escapes = b[start + 1..j]
            .iter()
            .rev()
            .take_while(|c| **c == b'\\')
            .count();
        if escapes % 2 == 0 {
            return Some(j + 1);
        }
        i = j + 1;
    }
}

/// Index just past the JSON value that starts at `i`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                // Skip the bytes that cannot change the nesting.
                j += b
                    .get(j..)?
                    .iter()
                    .position(|c| STRUCTURAL[usize::from(*c)])?;
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return None;
                        }
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let len = b[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-'))
                .count();
            (len > 0).then_some(i + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_in_any_order_and_spacing() {
        let body = br#" { "variables" : {"a": "x\"}{", "n": [1, {"b": null}]},
            "extensions": {"k": [true, false]}, "operationName": null,
            "query": "mutation M { a(x: \"}\") { ok } }\n" } "#;
        let s = scan(body).unwrap();
        assert_eq!(s.query, Some(r#""mutation M { a(x: \"}\") { ok } }\n""#));
        assert_eq!(s.operation_name, Some("null"));
        assert_eq!(
            s.variables,
            Some(r#"{"a": "x\"}{", "n": [1, {"b": null}]}"#)
        );
    }

    #[test]
    fn anything_odd_falls_back() {
        for bad in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"query\": \"unterminated}",
            b"{\"query\": \"x\"} trailing",
            b"{\"query\" \"x\"}",
            b"{\"qu\\u0065ry\": \"x\"}",
            b"{\"query\": \"x\",}",
            b"{\"v\": {\"a\": [1, 2}",
            b"{\"query\": \xff}",
            b"{\"query\": \"a\\\\\"b\"}",
        ] {
            assert_eq!(scan(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(scan(b"{}"), Some(Spans::default()));
        // An escaped backslash before the closing quote ends the string.
        let s = scan(b"{\"query\": \"a\\\\\", \"variables\": null}").unwrap();
        assert_eq!(s.query, Some("\"a\\\\\""));
    }

    #[test]
    fn agrees_with_serde_json_on_real_requests() {
        let q =
            "mutation AddStep($id_0: String!) {\n  step0: ingestStep(id: $id_0) { ok message }\n}";
        for body in [
            serde_json::json!({"query": q, "variables": {"id_0": "a", "output_0": {"content": "he said \"hi\"\n"}}}),
            serde_json::json!({"variables": null, "query": q, "operationName": "AddStep"}),
        ] {
            let text = body.to_string();
            let s = scan(text.as_bytes()).unwrap();
            let q_back: String = serde_json::from_str(s.query.unwrap()).unwrap();
            assert_eq!(q_back, body["query"].as_str().unwrap());
            let v: serde_json::Value = serde_json::from_str(s.variables.unwrap()).unwrap();
            assert_eq!(v, body["variables"]);
        }
    }
}

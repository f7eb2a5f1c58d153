//! Cutting a batched mutation into its root fields, and joining root
//! fields of several requests into one batched mutation — with each field's
//! text and each variable's value exactly as the app sent them.
//!
//! Written by hand over a small lexer rather than through `graphql-parser`'s
//! printer: re-printing a parsed document changes what the app sent (it
//! drops blank lines inside block strings and escapes some characters
//! wrongly), while slicing the original text at token boundaries keeps
//! every argument byte for byte. The request was already parsed and
//! validated by [`super::parse_request`]; this only finds spans.
//!
//! A request can be split when its body is `{"query", "variables",
//! "operationName"}` and nothing else, its document is one `mutation`
//! operation without directives, and each root selection is a plain field
//! (no fragment spread or inline fragment at the root) with a distinct
//! response key. Anything else — fragment definitions, several
//! operations, a query — is forwarded untouched, as one request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A batched mutation, cut at its root fields.
#[derive(Debug, Clone)]
pub struct Batch {
    name: Option<String>,
    /// Variable definitions: the variable's name and the definition's text
    /// (`$id_0: String!`, default value and directives included).
    defs: Vec<VarDef>,
    /// Variable name → its definition in `defs`: a subset finds the
    /// definitions its fields use without walking all of them.
    def_index: HashMap<String, usize>,
    fields: Vec<FieldText>,
    /// The request's variables, values as sent.
    variables: BTreeMap<String, Box<RawValue>>,
}

#[derive(Debug, Clone)]
struct VarDef {
    name: String,
    text: String,
}

/// One root field of the mutation.
#[derive(Debug, Clone)]
struct FieldText {
    /// The key its result has in `data`.
    response_key: String,
    /// The field's name (`ingestStep`).
    name: String,
    /// The field's text from its name on (arguments, directives,
    /// selection), without the alias.
    text: String,
    /// Byte offsets in `text` of each variable reference's name (after the
    /// `$`), with its length.
    var_refs: Vec<(usize, usize)>,
    /// The variables it uses, each once, in first-use order.
    vars: Vec<String>,
}

/// The parts of a request body a split request may have.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    query: String,
    #[serde(default)]
    variables: Option<BTreeMap<String, Box<RawValue>>>,
    #[serde(default, rename = "operationName")]
    operation_name: Option<String>,
}

impl Batch {
    /// Cut `body` at its root fields, if it can be (see the module doc).
    pub fn parse(body: &[u8]) -> Option<Batch> {
        let body: Body = serde_json::from_slice(body).ok()?;
        let (name, defs, fields) = parse_mutation(&body.query)?;
        if body
            .operation_name
            .as_deref()
            .is_some_and(|wanted| name.as_deref() != Some(wanted))
        {
            return None;
        }
        let mut keys: Vec<&str> = fields.iter().map(|f| f.response_key.as_str()).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        let def_index = defs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        Some(Batch {
            name,
            defs,
            def_index,
            fields,
            variables: body.variables.unwrap_or_default(),
        })
    }

    /// The operation's name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// How many root fields it has.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether it has no root field (never, for a parsed batch).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The response keys, in document order.
    pub fn response_keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.response_key.as_str())
    }

    /// The field names, in document order.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.name.as_str())
    }

    /// A request body with only the root fields at `indexes` (in document
    /// order, under their own response keys) and only the variable
    /// definitions and values they use.
    pub fn subset(&self, indexes: &[usize]) -> Bytes {
        let parts: Vec<(&FieldText, String)> = indexes
            .iter()
            .filter_map(|&i| self.fields.get(i))
            .map(|f| (f, f.response_key.clone()))
            .collect();
        // The variables the fields use, each once, in first-use order;
        // their definitions in document order. Linear in what the fields
        // use, whatever the document's size.
        let mut seen: HashSet<&str> = HashSet::new();
        let mut used: Vec<&str> = Vec::new();
        for (f, _) in &parts {
            for v in &f.vars {
                if seen.insert(v.as_str()) {
                    used.push(v);
                }
            }
        }
        let mut def_at: Vec<usize> = used
            .iter()
            .filter_map(|v| self.def_index.get(*v).copied())
            .collect();
        def_at.sort_unstable();
        let defs: Vec<String> = def_at.iter().map(|&i| self.defs[i].text.clone()).collect();
        let fields: Vec<String> = parts
            .iter()
            .map(|(f, key)| aliased(key, f, &f.text))
            .collect();
        let values: Vec<(String, &RawValue)> = used
            .iter()
            .filter_map(|v| self.variables.get(*v).map(|raw| (v.to_string(), &**raw)))
            .collect();
        render(self.name.as_deref(), &defs, &fields, &values)
    }

    /// The variables' values as sent, by name.
    pub fn variable(&self, name: &str) -> Option<&RawValue> {
        self.variables.get(name).map(|v| &**v)
    }
}

/// Join the first root field of each of `parts` into one mutation: part
/// `k` answers under the response key `a{k}`, and its variables are
/// renamed `e{k}_<name>` (a name cannot start with a digit, so these never
/// collide). Each field's text and each value are as the app sent them.
/// `name` names the joined operation.
pub fn join(name: Option<&str>, parts: &[&Batch]) -> Bytes {
    let mut defs = Vec::new();
    let mut fields = Vec::new();
    let mut values: Vec<(String, &RawValue)> = Vec::new();
    for (k, part) in parts.iter().enumerate() {
        let Some(f) = part.fields.first() else {
            continue;
        };
        let rename = |v: &str| format!("e{k}_{v}");
        let mut def_at: Vec<usize> = f
            .vars
            .iter()
            .filter_map(|v| part.def_index.get(v).copied())
            .collect();
        def_at.sort_unstable();
        for d in def_at.iter().map(|&i| &part.defs[i]) {
            // The definition starts with `$<name>`.
            let rest = d.text.get(1 + d.name.len()..).unwrap_or_default();
            defs.push(format!("${}{rest}", rename(&d.name)));
        }
        let mut text = String::with_capacity(f.text.len() + 16);
        let mut at = 0;
        for &(start, len) in &f.var_refs {
            text.push_str(&f.text[at..start]);
            text.push_str(&rename(&f.text[start..start + len]));
            at = start + len;
        }
        text.push_str(&f.text[at..]);
        fields.push(aliased(&format!("a{k}"), f, &text));
        for v in &f.vars {
            if let Some(raw) = part.variables.get(v) {
                values.push((rename(v), raw));
            }
        }
    }
    render(name, &defs, &fields, &values)
}

/// The response key of part `k` of a [`join`].
pub fn joined_key(k: usize) -> String {
    format!("a{k}")
}

fn aliased(key: &str, f: &FieldText, text: &str) -> String {
    if key == f.name {
        text.to_string()
    } else {
        format!("{key}: {text}")
    }
}

fn render(
    name: Option<&str>,
    defs: &[String],
    fields: &[String],
    values: &[(String, &RawValue)],
) -> Bytes {
    let mut query = String::from("mutation");
    if let Some(n) = name {
        query.push(' ');
        query.push_str(n);
    }
    if !defs.is_empty() {
        query.push('(');
        query.push_str(&defs.join(", "));
        query.push(')');
    }
    query.push_str(" {\n");
    for f in fields {
        query.push_str("  ");
        query.push_str(f);
        query.push('\n');
    }
    query.push('}');
    let mut out = String::with_capacity(query.len() + 64);
    out.push_str("{\"query\":");
    out.push_str(&serde_json::Value::String(query).to_string());
    if let Some(n) = name {
        let _ = write!(
            out,
            ",\"operationName\":{}",
            serde_json::Value::String(n.into())
        );
    }
    out.push_str(",\"variables\":{");
    for (i, (k, v)) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(k.clone()).to_string());
        out.push(':');
        out.push_str(v.get());
    }
    out.push_str("}}");
    Bytes::from(out)
}

// === the lexer ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Punct(u8),
    Spread,
    Name,
    Number,
    Str,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Tok,
    start: usize,
    end: usize,
}

/// The tokens of `src`, or `None` if it is not lexically GraphQL.
fn lex(src: &str) -> Option<Vec<Token>> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
            0xEF if b[i..].starts_with(&[0xEF, 0xBB, 0xBF]) => i += 3,
            b'#' => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
            }
            b'!' | b'$' | b'&' | b'(' | b')' | b':' | b'=' | b'@' | b'[' | b']' | b'{' | b'|'
            | b'}' => {
                out.push(Token {
                    kind: Tok::Punct(c),
                    start: i,
                    end: i + 1,
                });
                i += 1;
            }
            b'.' if b[i..].starts_with(b"...") => {
                out.push(Token {
                    kind: Tok::Spread,
                    start: i,
                    end: i + 3,
                });
                i += 3;
            }
            b'"' => {
                let start = i;
                if b[i..].starts_with(b"\"\"\"") {
                    i += 3;
                    loop {
                        if i >= b.len() {
                            return None;
                        }
                        if b[i..].starts_with(b"\\\"\"\"") {
                            i += 4;
                        } else if b[i..].starts_with(b"\"\"\"") {
                            i += 3;
                            break;
                        } else {
                            i += 1;
                        }
                    }
                } else {
                    i += 1;
                    loop {
                        match b.get(i)? {
                            b'\\' => i += 2,
                            b'"' => {
                                i += 1;
                                break;
                            }
                            b'\n' | b'\r' => return None,
                            _ => i += 1,
                        }
                    }
                }
                out.push(Token {
                    kind: Tok::Str,
                    start,
                    end: i,
                });
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                out.push(Token {
                    kind: Tok::Number,
                    start,
                    end: i,
                });
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'_' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9')
                {
                    i += 1;
                }
                out.push(Token {
                    kind: Tok::Name,
                    start,
                    end: i,
                });
            }
            _ => return None,
        }
    }
    Some(out)
}

// === the span finder ===

struct Cursor<'a> {
    src: &'a str,
    toks: Vec<Token>,
    at: usize,
}

type Parsed = (Option<String>, Vec<VarDef>, Vec<FieldText>);

/// The operation's name, variable definitions and root fields, if `query`
/// is one plain mutation (see the module doc).
fn parse_mutation(query: &str) -> Option<Parsed> {
    let mut c = Cursor {
        src: query,
        toks: lex(query)?,
        at: 0,
    };
    if c.name()? != "mutation" {
        return None;
    }
    let name = if c.peek_kind() == Some(Tok::Name) {
        Some(c.name()?.to_string())
    } else {
        None
    };
    let mut defs = Vec::new();
    if c.peek_punct(b'(') {
        c.bump();
        while !c.peek_punct(b')') {
            c.expect_punct(b'$')?;
            let var = c.name()?.to_string();
            // From the name on: GraphQL lets ignored tokens (spaces, commas,
            // comments) sit between `$` and the name, and a join renames
            // the variable by what follows the `$`.
            let after_name = c.prev_end();
            c.expect_punct(b':')?;
            c.skip_type()?;
            if c.peek_punct(b'=') {
                c.bump();
                c.skip_value(&mut Vec::new())?;
            }
            c.skip_directives(&mut Vec::new())?;
            let end = c.prev_end();
            let text = format!("${var}{}", query.get(after_name..end)?);
            defs.push(VarDef { name: var, text });
        }
        c.bump();
    }
    if c.peek_punct(b'@') {
        return None;
    }
    c.expect_punct(b'{')?;
    let mut fields = Vec::new();
    while !c.peek_punct(b'}') {
        if c.peek_kind() != Some(Tok::Name) {
            // A fragment at the root, or something unexpected.
            return None;
        }
        let first = c.name()?.to_string();
        let (key, name_start, name) = if c.peek_punct(b':') {
            c.bump();
            let start = c.peek()?.start;
            (first, start, c.name()?.to_string())
        } else {
            let start = c.prev_start();
            (first.clone(), start, first)
        };
        let mut refs = Vec::new();
        if c.peek_punct(b'(') {
            c.skip_group(b'(', b')', &mut refs)?;
        }
        c.skip_directives(&mut refs)?;
        if c.peek_punct(b'{') {
            c.skip_group(b'{', b'}', &mut refs)?;
        }
        let end = c.prev_end();
        let text = query.get(name_start..end)?.to_string();
        let var_refs: Vec<(usize, usize)> =
            refs.iter().map(|&(s, e)| (s - name_start, e - s)).collect();
        let mut vars: Vec<String> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for &(s, e) in &refs {
            let v = &query[s..e];
            if seen.insert(v) {
                vars.push(v.to_string());
            }
        }
        fields.push(FieldText {
            response_key: key,
            name,
            text,
            var_refs,
            vars,
        });
    }
    c.bump();
    // One operation and nothing else.
    if c.peek().is_some() || fields.is_empty() {
        return None;
    }
    Some((name, defs, fields))
}

impl Cursor<'_> {
    fn peek(&self) -> Option<Token> {
        self.toks.get(self.at).copied()
    }

    fn peek_kind(&self) -> Option<Tok> {
        self.peek().map(|t| t.kind)
    }

    fn peek_punct(&self, p: u8) -> bool {
        self.peek_kind() == Some(Tok::Punct(p))
    }

    fn bump(&mut self) -> Option<Token> {
        let t = self.peek()?;
        self.at += 1;
        Some(t)
    }

    fn prev_end(&self) -> usize {
        self.at
            .checked_sub(1)
            .and_then(|i| self.toks.get(i))
            .map_or(0, |t| t.end)
    }

    fn prev_start(&self) -> usize {
        self.at
            .checked_sub(1)
            .and_then(|i| self.toks.get(i))
            .map_or(0, |t| t.start)
    }

    fn expect_punct(&mut self, p: u8) -> Option<Token> {
        if self.peek_punct(p) {
            self.bump()
        } else {
            None
        }
    }

    fn name(&mut self) -> Option<&str> {
        let t = self.peek()?;
        if t.kind != Tok::Name {
            return None;
        }
        self.at += 1;
        self.src.get(t.start..t.end)
    }

    /// `Name`, `[Type]`, either followed by `!`.
    fn skip_type(&mut self) -> Option<()> {
        if self.peek_punct(b'[') {
            self.bump();
            self.skip_type()?;
            self.expect_punct(b']')?;
        } else {
            self.name()?;
        }
        if self.peek_punct(b'!') {
            self.bump();
        }
        Some(())
    }

    /// One value; variable references go into `refs` (spans of names).
    fn skip_value(&mut self, refs: &mut Vec<(usize, usize)>) -> Option<()> {
        match self.peek_kind()? {
            Tok::Punct(b'$') => {
                self.bump();
                let t = self.peek()?;
                self.name()?;
                refs.push((t.start, t.end));
            }
            Tok::Punct(b'[') => self.skip_group(b'[', b']', refs)?,
            Tok::Punct(b'{') => self.skip_group(b'{', b'}', refs)?,
            Tok::Name | Tok::Number | Tok::Str => {
                self.bump();
            }
            _ => return None,
        }
        Some(())
    }

    fn skip_directives(&mut self, refs: &mut Vec<(usize, usize)>) -> Option<()> {
        while self.peek_punct(b'@') {
            self.bump();
            self.name()?;
            if self.peek_punct(b'(') {
                self.skip_group(b'(', b')', refs)?;
            }
        }
        Some(())
    }

    /// A balanced group from `open` to its `close`, noting every variable
    /// reference inside.
    fn skip_group(&mut self, open: u8, close: u8, refs: &mut Vec<(usize, usize)>) -> Option<()> {
        self.expect_punct(open)?;
        let mut depth = 1usize;
        while depth > 0 {
            let t = self.bump()?;
            match t.kind {
                Tok::Punct(b'$') => {
                    let n = self.peek()?;
                    self.name()?;
                    refs.push((n.start, n.end));
                }
                Tok::Punct(p) if p == open => depth += 1,
                Tok::Punct(p) if p == close => depth -= 1,
                _ => {}
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(query: &str, vars: serde_json::Value) -> Vec<u8> {
        serde_json::json!({"query": query, "variables": vars})
            .to_string()
            .into_bytes()
    }

    fn parts(b: &Bytes) -> (String, serde_json::Value) {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        (
            v["query"].as_str().unwrap().to_string(),
            v["variables"].clone(),
        )
    }

    const ADD_STEP: &str = "mutation AddStep($id_0: String!, $input_0: Json, $id_1: String!, $input_1: Json, $thread: String) {\n  step0: ingestStep(id: $id_0, input: $input_0, threadId: $thread) { ok message }\n  step1: ingestStep(id: $id_1, input: $input_1, threadId: $thread) { ok message }\n}";

    /// Found by fuzzing (fuzz/targets split_join): ignored tokens between
    /// `$` and a variable's name made the join rename it into `$e0_,,x`.
    #[test]
    fn a_join_renames_variables_defined_with_ignored_tokens_after_the_dollar() {
        let q = "mutation AddStep($ ,, id_0: String!, $\n# c\n out_0: Json) {\n  step0: ingestStep(id: $ ,id_0, output: $out_0) { ok message }\n}";
        let raw = body(
            q,
            serde_json::json!({"id_0": "a", "out_0": {"content": "x"}}),
        );
        assert!(crate::graphql::parse_request(&raw).is_ok());
        let one = Batch::parse(&raw).unwrap();
        let other = Batch::parse(&raw).unwrap();
        let joined = join(one.name(), &[&one, &other]);
        let op = crate::graphql::operation_of(&joined).expect("the join is valid GraphQL");
        assert_eq!(op.root_fields.len(), 2);
        let (_, v) = parts(&joined);
        assert_eq!(v["e1_out_0"], serde_json::json!({"content": "x"}));
        assert_eq!(v["e0_id_0"], "a");
        assert!(crate::graphql::operation_of(&one.subset(&[0])).is_ok());
    }

    #[test]
    fn a_subset_keeps_the_fields_and_only_the_variables_they_use() {
        let vars = serde_json::json!({"id_0": "a", "input_0": {"x": [1, 2.50, "é\n"]}, "id_1": "b", "input_1": null, "thread": "t"});
        let b = Batch::parse(&body(ADD_STEP, vars)).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.response_keys().collect::<Vec<_>>(), ["step0", "step1"]);
        let (q, v) = parts(&b.subset(&[1]));
        assert_eq!(
            q,
            "mutation AddStep($id_1: String!, $input_1: Json, $thread: String) {\n  step1: ingestStep(id: $id_1, input: $input_1, threadId: $thread) { ok message }\n}"
        );
        assert_eq!(
            v,
            serde_json::json!({"id_1": "b", "input_1": null, "thread": "t"})
        );
        // The subset is valid GraphQL with the same root field.
        let op = crate::graphql::operation_of(&b.subset(&[1])).unwrap();
        assert_eq!(&*op.root_fields[0].response_key, "step1");
    }

    #[test]
    fn values_travel_byte_for_byte() {
        // Raw JSON as sent: number formatting and escapes untouched.
        let raw = br#"{"query":"mutation M($a: Json) { x: ingestStep(id: \"s\", meta: $a) { ok } }","variables":{"a":{"n":1.50e3,"s":"\u00e9\ud83d\ude00"}}}"#;
        let b = Batch::parse(raw).unwrap();
        let out = b.subset(&[0]);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.contains(r#""a":{"n":1.50e3,"s":"\u00e9\ud83d\ude00"}"#),
            "{text}"
        );
        // A block string in an inline argument keeps its blank lines.
        let q = "mutation { s: ingestStep(id: \"x\", note: \"\"\"line one\n\n  line three\"\"\") { ok } }";
        let b = Batch::parse(&body(q, serde_json::json!({}))).unwrap();
        let (q2, _) = parts(&b.subset(&[0]));
        assert!(q2.contains("\"\"\"line one\n\n  line three\"\"\""), "{q2}");
    }

    #[test]
    fn joining_renames_variables_and_keys_apart() {
        let one = |id: &str, note: &str| {
            body(
                "mutation AddStep($id_0: String!, $n: Json) { step0: ingestStep(id: $id_0, metadata: $n) @tag(v: $n) { ok message } }",
                serde_json::json!({"id_0": id, "n": {"note": note}}),
            )
        };
        let a = Batch::parse(&one("s1", "first")).unwrap();
        let b = Batch::parse(&one("s2", "second")).unwrap();
        let joined = join(Some("AddStep"), &[&a, &b]);
        let (q, v) = parts(&joined);
        assert_eq!(
            q,
            "mutation AddStep($e0_id_0: String!, $e0_n: Json, $e1_id_0: String!, $e1_n: Json) {\n  a0: ingestStep(id: $e0_id_0, metadata: $e0_n) @tag(v: $e0_n) { ok message }\n  a1: ingestStep(id: $e1_id_0, metadata: $e1_n) @tag(v: $e1_n) { ok message }\n}"
        );
        assert_eq!(
            v,
            serde_json::json!({"e0_id_0": "s1", "e0_n": {"note": "first"}, "e1_id_0": "s2", "e1_n": {"note": "second"}})
        );
        let op = crate::graphql::operation_of(&joined).unwrap();
        assert_eq!(op.root_fields.len(), 2);
        assert_eq!(joined_key(1), "a1");
    }

    #[test]
    fn inline_arguments_and_defaults_are_kept() {
        let q = "mutation M($t: String = \"default\") {\n  ingestStep(id: \"lit\", tags: [\"a\", \"b\"], threadId: $t) { ok }\n  other: ingestStep(id: \"x\") { ok }\n}";
        let b = Batch::parse(&body(q, serde_json::json!({}))).unwrap();
        let (q2, v) = parts(&b.subset(&[0]));
        assert_eq!(
            q2,
            "mutation M($t: String = \"default\") {\n  ingestStep(id: \"lit\", tags: [\"a\", \"b\"], threadId: $t) { ok }\n}"
        );
        assert_eq!(v, serde_json::json!({}));
        let (q3, _) = parts(&b.subset(&[1]));
        assert_eq!(q3, "mutation M {\n  other: ingestStep(id: \"x\") { ok }\n}");
    }

    #[test]
    fn what_cannot_be_split_safely_is_refused() {
        for q in [
            // A query, not a mutation.
            "query Q { a }",
            "{ a }",
            // Fragments: at the root, or defined beside the operation.
            "mutation M { ...F } fragment F on Mutation { ingestStep(id: \"a\") { ok } }",
            "mutation M { ... on Mutation { ingestStep(id: \"a\") { ok } } }",
            "mutation M { s: ingestStep(id: \"a\") { ...Ok } } fragment Ok on R { ok }",
            // Two operations.
            "mutation A { a: x } mutation B { b: y }",
            // A directive on the operation.
            "mutation M @atomic { a: x b: y }",
            // Two fields under one response key.
            "mutation M { a: x(id: 1) a: x(id: 1) }",
        ] {
            assert!(
                Batch::parse(&body(q, serde_json::json!({}))).is_none(),
                "{q}"
            );
        }
        // Other members of the request body.
        let extra = br#"{"query":"mutation { a: x }","extensions":{"persistedQuery":{}}}"#;
        assert!(Batch::parse(extra).is_none());
        // operationName that names another operation.
        let wrong = br#"{"query":"mutation A { a: x }","operationName":"B"}"#;
        assert!(Batch::parse(wrong).is_none());
    }

    #[test]
    fn comments_and_strings_do_not_confuse_the_spans() {
        let q = "# leading } comment\nmutation M($a: String) {\n  # a comment with $fake and }\n  s: ingestStep(id: \"}$not_a_var\\\"\", x: $a) { ok }\n}";
        let b = Batch::parse(&body(q, serde_json::json!({"a": "v"}))).unwrap();
        let (q2, v) = parts(&b.subset(&[0]));
        assert_eq!(
            q2,
            "mutation M($a: String) {\n  s: ingestStep(id: \"}$not_a_var\\\"\", x: $a) { ok }\n}"
        );
        assert_eq!(v, serde_json::json!({"a": "v"}));
    }
}

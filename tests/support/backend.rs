//! A LiteralAI-style backend that can be taken down and brought back on the
//! same port: stores `ingestStep` upserts by step id and `upsertThread`
//! upserts by thread id, applies `deleteStep` / `deleteThread`, and
//! remembers every version it received, in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::upstream::{FakeUpstream, Recorded, Reply};

/// What the backend holds.
#[derive(Debug, Default)]
pub struct State {
    /// Step id → content of the last write applied.
    pub steps: HashMap<String, String>,
    /// Every (step id, content) applied, in arrival order.
    pub applied: Vec<(String, String)>,
    /// For each of `applied`, the number of the request that applied it.
    pub applied_by: Vec<usize>,
    /// Requests received (any answer).
    pub requests: usize,
    /// Step id → attempts seen (for scripted faults).
    pub attempts: HashMap<String, usize>,
    /// `x-api-key` of every request.
    pub keys: Vec<String>,
    /// Thread id → (name, participant id), the fields the upserts set.
    pub threads: HashMap<String, (Option<String>, Option<String>)>,
    /// Every step write received (faulted or not), as (step id, content).
    pub received: Vec<(String, String)>,
    /// Every write applied, in order: `step:<id>=<content>`,
    /// `thread:<id>=<name>`, `delete step:<id>`, `delete thread:<id>`.
    pub log: Vec<String>,
    /// The step ids of each request that carried steps, in arrival order
    /// (one request may carry several: a batch, or a joined replay).
    pub batches: Vec<Vec<String>>,
    /// Step id → times an alias for it was answered with `alias_fault`.
    pub alias_attempts: HashMap<String, usize>,
}

/// What `alias_fault` answers for one alias instead of applying it.
#[derive(Debug, Clone)]
pub enum AliasReply {
    /// `{"ok": false, "message": ...}`.
    NotOk(String),
    /// `null` and a GraphQL error with this path and `extensions.code`.
    Error(String),
}

/// Decides a fault for one alias: (step id, times this step was seen by
/// the alias fault before), or `None` to apply it.
pub type AliasFault = Arc<dyn Fn(&str, usize) -> Option<AliasReply> + Send + Sync>;

/// Decides a fault for a whole request from the step ids it carries.
pub type RequestFault = Arc<dyn Fn(&[String]) -> Option<Reply> + Send + Sync>;

/// Step content the backend always refuses for its content (`ok: false`
/// with a permanent message).
pub const REFUSE: &str = "refuse!";

/// Decides a fault for (first step id, attempt number), or `None` to apply.
pub type Fault = Arc<dyn Fn(&str, usize) -> Option<Reply> + Send + Sync>;

pub struct Backend {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    fault: Fault,
    alias_fault: Option<AliasFault>,
    request_fault: Option<RequestFault>,
    /// Milliseconds to hold every answer to a step write, after applying
    /// it (a backend that stored the steps and is slow to say so).
    pub answer_delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// When set, every request whose `x-api-key` is not this one gets 401
    /// (a key rotated at the backend).
    pub api_key: Arc<Mutex<Option<String>>>,
    running: Option<FakeUpstream>,
    /// While down: the port bound but not listening, so connections are
    /// refused and no other test can take the port.
    parked: Option<tokio::net::TcpSocket>,
}

fn park(addr: SocketAddr) -> tokio::net::TcpSocket {
    for _ in 0..200 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.set_reuseaddr(true).unwrap();
        if s.bind(addr).is_ok() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("cannot hold {addr}");
}

/// One root field of a request, as the backend reads it.
pub struct Field {
    /// Its key in `data`.
    pub key: String,
    /// `ingestStep`, `upsertThread`, ...
    pub name: String,
    /// Its arguments, variables resolved.
    pub args: serde_json::Map<String, serde_json::Value>,
}

/// The root fields of a GraphQL request body, read like a GraphQL server
/// would (any aliases, any variable names, literals or variables).
pub fn fields_in(body: &[u8]) -> Vec<Field> {
    let Ok(op) = datalayer_sidecar::graphql::operation_of(body) else {
        return Vec::new();
    };
    let args = datalayer_sidecar::graphql::resolved_args(body, &op);
    op.root_fields
        .iter()
        .zip(args)
        .map(|(f, a)| Field {
            key: f.response_key.to_string(),
            name: f.name.to_string(),
            args: a.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        })
        .collect()
}

/// `(step id, content)` of an `ingestStep` field.
fn step_of(f: &Field) -> Option<(String, String)> {
    if f.name != "ingestStep" {
        return None;
    }
    let id = f.args.get("id")?.as_str()?.to_string();
    let content = f
        .args
        .get("output")
        .and_then(|o| o.get("content"))
        .and_then(|c| c.as_str())
        .unwrap_or_default()
        .to_string();
    Some((id, content))
}

/// `(step id, content)` pairs of an `AddStep` body.
pub fn steps_in(body: &serde_json::Value) -> Vec<(String, String)> {
    fields_in(body.to_string().as_bytes())
        .iter()
        .filter_map(step_of)
        .collect()
}

/// Threads and deletes: answered like the real service, after `fault`.
fn other_write(st: &mut State, fault: &Fault, f: &Field) -> Option<Reply> {
    let vars = &serde_json::Value::Object(f.args.clone());
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let field = match f.name.as_str() {
        "upsertThread" | "deleteThread" | "deleteStep" => f.name.as_str(),
        _ => return None,
    };
    let id = s(&vars["id"])?;
    let n = {
        let a = st.attempts.entry(format!("{field}:{id}")).or_insert(0);
        *a += 1;
        *a - 1
    };
    if let Some(reply) = fault(&id, n) {
        return Some(reply);
    }
    let data = match field {
        "upsertThread" => {
            let entry = st.threads.entry(id.clone()).or_default();
            // Like the SDK's backend: a field left out keeps its value.
            if let Some(name) = s(&vars["name"]) {
                entry.0 = Some(name);
            }
            if let Some(p) = s(&vars["participantId"]) {
                entry.1 = Some(p);
            }
            let (name, participant) = entry.clone();
            st.log
                .push(format!("thread:{id}={}", name.clone().unwrap_or_default()));
            serde_json::json!({"upsertThread": {"id": id, "name": name,
                "participant": participant.map(|p| serde_json::json!({"id": p}))}})
        }
        "deleteThread" => {
            st.threads.remove(&id);
            st.log.push(format!("delete thread:{id}"));
            serde_json::json!({"deleteThread": {"id": id}})
        }
        _ => {
            st.steps.remove(&id);
            st.log.push(format!("delete step:{id}"));
            serde_json::json!({"deleteStep": {"id": id}})
        }
    };
    Some(Reply::json(200, serde_json::json!({ "data": data })))
}

struct Faults {
    api_key: Arc<Mutex<Option<String>>>,
    fault: Fault,
    alias: Option<AliasFault>,
    request: Option<RequestFault>,
}

fn answer(state: &Arc<Mutex<State>>, faults: &Faults, delay_ms: u64, r: &Recorded) -> Reply {
    let (fault, alias_fault) = (&faults.fault, faults.alias.as_ref());
    let fields = fields_in(&r.body);
    let steps: Vec<(String, (String, String))> = fields
        .iter()
        .filter_map(|f| Some((f.key.clone(), step_of(f)?)))
        .collect();
    let mut st = state.lock().unwrap();
    st.requests += 1;
    let key = r.header("x-api-key").unwrap_or_default().to_string();
    st.keys.push(key.clone());
    if let Some(wanted) = faults.api_key.lock().unwrap().as_deref()
        && wanted != key
    {
        return Reply::json(
            401,
            serde_json::json!({"errors": [{"message": "invalid api key", "extensions": {"code": "UNAUTHENTICATED"}}]}),
        );
    }
    if steps.is_empty() {
        if let Some(reply) = fields.first().and_then(|f| other_write(&mut st, fault, f)) {
            return reply;
        }
        return Reply::json(200, serde_json::json!({"data": {}}));
    }
    st.received.extend(steps.iter().map(|(_, s)| s.clone()));
    st.batches
        .push(steps.iter().map(|(_, (id, _))| id.clone()).collect());
    if let Some(f) = &faults.request {
        let ids: Vec<String> = steps.iter().map(|(_, (id, _))| id.clone()).collect();
        if let Some(reply) = f(&ids) {
            return reply;
        }
    }
    let first = steps[0].1.0.clone();
    let n = {
        let a = st.attempts.entry(first.clone()).or_insert(0);
        *a += 1;
        *a - 1
    };
    if let Some(reply) = fault(&first, n) {
        return reply;
    }
    let mut data = serde_json::Map::new();
    let mut errors = Vec::new();
    for (key, (id, content)) in steps {
        // Content the backend refuses, whenever it sees it: a write the
        // sidecar must dead-letter, never deliver.
        if content.starts_with(REFUSE) {
            data.insert(
                key,
                serde_json::json!({"ok": false, "message": "invalid step: refused by the test backend"}),
            );
            continue;
        }
        if let Some(f) = alias_fault {
            let seen = {
                let a = st.alias_attempts.entry(id.clone()).or_insert(0);
                *a += 1;
                *a - 1
            };
            match f(&id, seen) {
                Some(AliasReply::NotOk(message)) => {
                    data.insert(key, serde_json::json!({"ok": false, "message": message}));
                    continue;
                }
                Some(AliasReply::Error(code)) => {
                    errors.push(serde_json::json!({"message": "could not ingest this step",
                        "path": [key], "extensions": {"code": code}}));
                    data.insert(key, serde_json::Value::Null);
                    continue;
                }
                None => {}
            }
        }
        st.steps.insert(id.clone(), content.clone());
        st.log.push(format!("step:{id}={content}"));
        st.applied.push((id, content));
        let request = st.requests;
        st.applied_by.push(request);
        data.insert(
            key,
            serde_json::json!({"ok": true, "message": "Step ingested"}),
        );
    }
    let reply = if errors.is_empty() {
        Reply::json(200, serde_json::json!({ "data": data }))
    } else {
        Reply::json(200, serde_json::json!({ "data": data, "errors": errors }))
    };
    if delay_ms > 0 {
        reply.delayed(Duration::from_millis(delay_ms))
    } else {
        reply
    }
}

impl Backend {
    /// A backend that starts down (its port refuses connections).
    pub fn down(fault: Option<Fault>) -> Backend {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.set_reuseaddr(true).unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = s.local_addr().unwrap();
        Backend {
            addr,
            state: Arc::new(Mutex::new(State::default())),
            fault: fault.unwrap_or_else(|| Arc::new(|_, _| None)),
            alias_fault: None,
            request_fault: None,
            answer_delay_ms: Arc::default(),
            api_key: Arc::default(),
            running: None,
            parked: Some(s),
        }
    }

    /// A backend that is up.
    pub async fn up_now(fault: Option<Fault>) -> Backend {
        let mut b = Backend::down(fault);
        b.up().await;
        b
    }

    /// Answer whole requests with `f` first (see [`RequestFault`]).
    pub fn with_request_fault(mut self, f: RequestFault) -> Backend {
        self.request_fault = Some(f);
        self
    }

    /// Answer single aliases with `f` (see [`AliasFault`]).
    pub fn with_alias_fault(mut self, f: AliasFault) -> Backend {
        self.alias_fault = Some(f);
        self
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }

    /// Start serving on the backend's port.
    pub async fn up(&mut self) {
        if self.running.is_some() {
            return;
        }
        let socket = self.parked.take().unwrap_or_else(|| park(self.addr));
        let listener = socket.listen(1024).expect("listen on the backend's port");
        let state = self.state.clone();
        let faults = Faults {
            api_key: self.api_key.clone(),
            fault: self.fault.clone(),
            alias: self.alias_fault.clone(),
            request: self.request_fault.clone(),
        };
        let delay = self.answer_delay_ms.clone();
        self.running = Some(FakeUpstream::start_on(
            listener,
            move |r, _| {
                let d = delay.load(std::sync::atomic::Ordering::SeqCst);
                answer(&state, &faults, d, r)
            },
            None,
        ));
    }

    /// Stop: the port refuses connections, open ones are dropped.
    pub fn take_down(&mut self) {
        self.running = None;
        self.parked = Some(park(self.addr));
    }

    pub fn steps(&self) -> HashMap<String, String> {
        self.state.lock().unwrap().steps.clone()
    }

    pub fn applied(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().applied.clone()
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn threads(&self) -> HashMap<String, (Option<String>, Option<String>)> {
        self.state.lock().unwrap().threads.clone()
    }

    /// Wait until `pred` holds for the state, or panic after `within`.
    pub async fn wait_for(&self, within: Duration, what: &str, pred: impl Fn(&State) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if pred(&self.state.lock().unwrap()) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let st = self.state.lock().unwrap();
                panic!(
                    "timed out waiting for {what}: {} steps, {} requests",
                    st.steps.len(),
                    st.requests
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

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
}

/// Step content the backend always refuses for its content (`ok: false`
/// with a permanent message).
pub const REFUSE: &str = "refuse!";

/// Decides a fault for (first step id, attempt number), or `None` to apply.
pub type Fault = Arc<dyn Fn(&str, usize) -> Option<Reply> + Send + Sync>;

pub struct Backend {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    fault: Fault,
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

/// `(step id, content)` pairs of an `AddStep` body.
pub fn steps_in(body: &serde_json::Value) -> Vec<(String, String)> {
    let vars = &body["variables"];
    let mut out = Vec::new();
    for i in 0.. {
        let Some(id) = vars[format!("id_{i}")].as_str() else {
            break;
        };
        let content = vars[format!("output_{i}")]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        out.push((id.to_string(), content));
    }
    out
}

/// Threads and deletes: answered like the real service, after `fault`.
fn other_write(st: &mut State, fault: &Fault, body: &serde_json::Value) -> Option<Reply> {
    let query = body["query"].as_str().unwrap_or_default();
    let vars = &body["variables"];
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let (field, id) = if query.contains("upsertThread") {
        ("upsertThread", s(&vars["id"])?)
    } else if query.contains("deleteThread") {
        ("deleteThread", s(&vars["thread_id"])?)
    } else if query.contains("deleteStep") {
        ("deleteStep", s(&vars["id"])?)
    } else {
        return None;
    };
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

fn answer(state: &Arc<Mutex<State>>, fault: &Fault, r: &Recorded) -> Reply {
    let body = r.json();
    let steps = steps_in(&body);
    let mut st = state.lock().unwrap();
    st.requests += 1;
    st.keys
        .push(r.header("x-api-key").unwrap_or_default().to_string());
    if steps.is_empty() {
        if let Some(reply) = other_write(&mut st, fault, &body) {
            return reply;
        }
        return Reply::json(200, serde_json::json!({"data": {}}));
    }
    st.received.extend(steps.iter().cloned());
    let first = steps[0].0.clone();
    let n = {
        let a = st.attempts.entry(first.clone()).or_insert(0);
        *a += 1;
        *a - 1
    };
    if let Some(reply) = fault(&first, n) {
        return reply;
    }
    // Content the backend refuses, whenever it sees it: a write the
    // sidecar must dead-letter, never deliver.
    if steps.iter().any(|(_, c)| c.starts_with(REFUSE)) {
        let mut data = serde_json::Map::new();
        for i in 0..steps.len() {
            data.insert(
                format!("step{i}"),
                serde_json::json!({"ok": false, "message": "invalid step: refused by the test backend"}),
            );
        }
        return Reply::json(200, serde_json::json!({ "data": data }));
    }
    let mut data = serde_json::Map::new();
    for (i, (id, content)) in steps.into_iter().enumerate() {
        st.steps.insert(id.clone(), content.clone());
        st.log.push(format!("step:{id}={content}"));
        st.applied.push((id, content));
        data.insert(
            format!("step{i}"),
            serde_json::json!({"ok": true, "message": "Step ingested"}),
        );
    }
    Reply::json(200, serde_json::json!({ "data": data }))
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
        let (state, fault) = (self.state.clone(), self.fault.clone());
        self.running = Some(FakeUpstream::start_on(
            listener,
            move |r, _| answer(&state, &fault, r),
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

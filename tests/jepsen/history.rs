//! The history of a run: every operation with its invocation and completion times (monotonic
//! nanoseconds since the run began) and its outcome.

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// What a client asked for, on one key (a versioned register).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Call {
    /// `GET /cookies/{key}`; `local` reads are not linearizable by contract.
    Read { local: bool },
    /// `POST /cookies` with a value.
    Create { value: i64 },
    /// `PUT /cookies/{key}` setting the value.
    Write { value: i64 },
    /// `PUT` with `If-Match: expected`.
    Cas { expected: u64, value: i64 },
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Read: what was seen (`None`: 404). Writes: the new version (value is the call's).
    Ok {
        version: Option<u64>,
        value: Option<i64>,
    },
    /// Certainly had no effect: 404 on a write, 409 on a create, 412 on a CAS.
    Fail { status: u16 },
    /// A read that got no answer: no information, dropped by the checker.
    ReadFailed,
    /// A write that may or may not have taken effect (timeout, reset, 5xx but 503).
    Unknown { why: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub process: u64,
    pub node: usize,
    pub key: String,
    pub call: Call,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub outcome: Outcome,
}

/// A shared, append-only history.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for History {
    fn default() -> Self {
        History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }
}

impl History {
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn push(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }
}

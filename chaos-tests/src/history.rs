//! The history of a run: every operation's invocation and completion, and every fault, as
//! JSON lines in the order they happened. A global sequence number orders them; the checkers
//! read operations back as [`Event`](crate::check::linear::Event)s.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::check::linear::{CatOp, CatRet};

/// An operation of the workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    /// A catalog command or read.
    Catalog {
        /// The operation.
        op: CatOp,
    },
    /// `mirage checkin IMAGE` (items only, no name): stores a generated image.
    Store {
        /// The image file.
        file: String,
        /// SHA-256 of its bytes.
        sha256: String,
    },
    /// `mirage checkout DIGEST` into an empty cache, compared with what was checked in.
    Checkout {
        /// Image digest.
        image: String,
    },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A catalog answer (or `unknown`).
    Catalog {
        /// The answer.
        ret: CatRet,
    },
    /// Stored: the image digest the store answered.
    Stored {
        /// Image digest.
        image: String,
    },
    /// Checked out; `sha256` of the disk image written.
    CheckedOut {
        /// SHA-256 of the output.
        sha256: String,
    },
    /// Failed without a definite answer (timeout, connection lost, error exit).
    Failed {
        /// Why.
        error: String,
    },
}

/// One line of the history file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// An operation starts.
    Invoke {
        /// Sequence number (orders every record of the run).
        seq: u64,
        /// Milliseconds since the run started.
        ms: u64,
        /// Client.
        client: usize,
        /// The operation.
        op: Op,
    },
    /// An operation ends.
    Complete {
        /// Sequence number.
        seq: u64,
        /// Milliseconds since the run started.
        ms: u64,
        /// Client.
        client: usize,
        /// The invocation's sequence number.
        invoke: u64,
        /// How it ended.
        outcome: Outcome,
    },
    /// A fault starts or ends.
    Nemesis {
        /// Sequence number.
        seq: u64,
        /// Milliseconds since the run started.
        ms: u64,
        /// What (e.g. `kill`, `partition`, `heal`).
        fault: String,
        /// On what.
        detail: String,
    },
}

/// The history being written.
#[derive(Debug)]
pub struct History {
    out: Mutex<BufWriter<std::fs::File>>,
    seq: AtomicU64,
    start: Instant,
}

impl History {
    /// A new history file at `path`.
    pub fn create(path: &Path) -> std::io::Result<History> {
        Ok(History {
            out: Mutex::new(BufWriter::new(std::fs::File::create(path)?)),
            seq: AtomicU64::new(0),
            start: Instant::now(),
        })
    }

    fn next(&self) -> (u64, u64) {
        (
            self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            self.start.elapsed().as_millis() as u64,
        )
    }

    fn put(&self, r: &Record) {
        if let Ok(mut out) = self.out.lock() {
            if let Ok(line) = serde_json::to_string(r) {
                // A history that cannot be written fails the run at `finish`.
                let _ = writeln!(out, "{line}");
            }
        }
    }

    /// Records an invocation; answers its sequence number.
    pub fn invoke(&self, client: usize, op: &Op) -> u64 {
        let (seq, ms) = self.next();
        self.put(&Record::Invoke {
            seq,
            ms,
            client,
            op: op.clone(),
        });
        seq
    }

    /// Records a completion.
    pub fn complete(&self, client: usize, invoke: u64, outcome: Outcome) {
        let (seq, ms) = self.next();
        self.put(&Record::Complete {
            seq,
            ms,
            client,
            invoke,
            outcome,
        });
    }

    /// Records a fault.
    pub fn nemesis(&self, fault: &str, detail: &str) {
        let (seq, ms) = self.next();
        self.put(&Record::Nemesis {
            seq,
            ms,
            fault: fault.to_string(),
            detail: detail.to_string(),
        });
    }

    /// Flushes and syncs the file.
    pub fn finish(&self) -> std::io::Result<()> {
        let mut out = self
            .out
            .lock()
            .map_err(|_| std::io::Error::other("history lock poisoned"))?;
        out.flush()?;
        out.get_ref().sync_all()
    }
}

/// An invocation with its completion (`None`: the run ended first).
#[derive(Clone, Debug)]
pub struct Pair {
    /// Client.
    pub client: usize,
    /// Operation.
    pub op: Op,
    /// Invocation sequence number.
    pub call: u64,
    /// Completion sequence number and outcome.
    pub done: Option<(u64, Outcome)>,
}

/// Reads a history file back: the operations paired, and the faults.
pub fn read(path: &Path) -> std::io::Result<(Vec<Pair>, Vec<Record>)> {
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut pairs: Vec<Pair> = Vec::new();
    let mut at = std::collections::HashMap::new();
    let mut faults = Vec::new();
    for (n, line) in f.lines().enumerate() {
        let line = line?;
        let r: Record = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} line {}: {e}", path.display(), n + 1),
            )
        })?;
        match r {
            Record::Invoke {
                seq, client, op, ..
            } => {
                at.insert(seq, pairs.len());
                pairs.push(Pair {
                    client,
                    op,
                    call: seq,
                    done: None,
                });
            }
            Record::Complete {
                seq,
                invoke,
                outcome,
                ..
            } => {
                if let Some(&i) = at.get(&invoke) {
                    pairs[i].done = Some((seq, outcome));
                }
            }
            f @ Record::Nemesis { .. } => faults.push(f),
        }
    }
    Ok((pairs, faults))
}

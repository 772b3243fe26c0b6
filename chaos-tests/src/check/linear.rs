//! Linearizability of a catalog history against the sequential [`model`](super::model): the
//! Wing & Gong search with Lowe's memoization (the algorithm behind Knossos and Porcupine).
//! Operations on different names commute, so the history is checked name by name (the
//! P-compositionality of Horn & Kroening), which keeps each search small.
//!
//! An operation may be placed at any point between its invocation and its completion, after
//! every operation that completed before it was invoked. An operation without an answer
//! ([`CatRet::Unknown`]) may have taken effect at any point after its invocation, or never:
//! it is a candidate until the end and constrains nothing. A search that exceeds its budget
//! is reported as inconclusive, never as a pass.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

pub use super::model::{step, CatOp, CatRet, NameView, State};

/// One completed (or abandoned) operation of a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Which client.
    pub client: usize,
    /// What it asked.
    pub op: CatOp,
    /// What it was answered.
    pub ret: CatRet,
    /// When it was invoked (any clock common to all clients: a sequence number or a time).
    pub call: u64,
    /// When it completed; `u64::MAX` when `ret` is [`CatRet::Unknown`].
    pub done: u64,
}

impl Event {
    /// An operation of `client`, invoked at `call` and completed at `done`.
    pub fn new(client: usize, op: CatOp, ret: CatRet, call: u64, done: u64) -> Event {
        Event {
            client,
            op,
            ret,
            call,
            done,
        }
    }
}

/// What a successful check covered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStats {
    /// Names checked.
    pub names: usize,
    /// Operations checked (reads without an answer are left out: they change nothing).
    pub ops: usize,
    /// Operations without an answer.
    pub unknown: usize,
    /// Search states visited, over all names.
    pub states: u64,
    /// Operations without an answer left out before the search ([`prune_unknown`]).
    #[serde(default)]
    pub pruned: usize,
}

/// Why a history is not (shown to be) linearizable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Violation {
    /// No order of the operations on `name` explains every answer.
    #[error(
        "the history of {name:?} is not linearizable: at most {placed} of its {ops} operations \
         can be ordered; none of the remaining ones explains {blocking}"
    )]
    NotLinearizable {
        /// The name.
        name: String,
        /// Its operations.
        ops: usize,
        /// The longest prefix of a valid order found.
        placed: usize,
        /// The operation that could not be placed after that prefix, with its answer.
        blocking: String,
    },
    /// The search for `name` visited more states than its budget allows.
    #[error("the history of {name:?} ({ops} operations) exceeded the search budget of {budget} states: inconclusive")]
    Inconclusive {
        /// The name.
        name: String,
        /// Its operations.
        ops: usize,
        /// States allowed.
        budget: u64,
    },
}

/// Search states allowed per name.
pub const BUDGET: u64 = 5_000_000;

/// Checks `history`; see the module documentation.
pub fn check(history: &[Event]) -> Result<CheckStats, Violation> {
    let mut by_name: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in history {
        if e.ret == CatRet::Unknown && !e.op.is_write() {
            continue;
        }
        by_name.entry(e.op.name()).or_default().push(e);
    }
    let mut stats = CheckStats {
        names: by_name.len(),
        ..CheckStats::default()
    };
    for (name, mut ops) in by_name {
        ops.sort_by_key(|e| (e.call, e.done));
        stats.ops += ops.len();
        stats.unknown += ops.iter().filter(|e| e.ret == CatRet::Unknown).count();
        stats.states += search(name, &ops, BUDGET)?;
    }
    Ok(stats)
}

/// Leaves out the writes without an answer that the final reads show never took effect, which
/// keeps the search small: a version once added stays (deleted or not), so an unanswered
/// checkin of image X did not happen if the final read of its name shows no more versions
/// of X than checkins of X were acknowledged; an unanswered delete did not happen if the
/// version is not marked deleted at the end; nothing on a name that does not exist at the
/// end happened. Sound only when no operation can take effect after the final reads (the
/// run stops its clients, and waits out the nodes' retries, before reading).
pub fn prune_unknown(events: &mut Vec<Event>, last: &BTreeMap<String, Option<NameView>>) {
    let mut acked: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for e in events.iter() {
        if let (CatOp::Checkin { name, image }, CatRet::Version(_)) = (&e.op, &e.ret) {
            *acked.entry((name, image)).or_insert(0) += 1;
        }
    }
    let mut drop = vec![false; events.len()];
    for (i, e) in events.iter().enumerate() {
        if e.ret != CatRet::Unknown {
            continue;
        }
        let Some(end) = last.get(e.op.name()) else {
            continue;
        };
        let Some(end) = end else {
            drop[i] = true;
            continue;
        };
        drop[i] = match &e.op {
            CatOp::Checkin { name, image } => {
                let shown = end.versions.iter().filter(|(x, _)| x == image).count();
                shown
                    <= acked
                        .get(&(name.as_str(), image.as_str()))
                        .copied()
                        .unwrap_or(0)
            }
            CatOp::Delete { version, .. } => !version
                .checked_sub(1)
                .and_then(|i| end.versions.get(i as usize))
                .is_some_and(|(_, deleted)| *deleted),
            _ => false,
        };
    }
    let mut k = 0;
    events.retain(|_| {
        k += 1;
        !drop[k - 1]
    });
}

/// A set of operation indexes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize, on: bool) {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        if let Some(word) = self.0.get_mut(w) {
            if on {
                *word |= b;
            } else {
                *word &= !b;
            }
        }
    }
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// Whether the model's answer `got` explains the recorded answer `want`.
fn explains(got: &CatRet, want: &CatRet) -> bool {
    want == &CatRet::Unknown || got == want
}

/// A state's fingerprint for the memo: two independent 64-bit hashes (a collision could only
/// cut a search short and report a violation that is not one, never hide one).
fn fingerprint(state: &State) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    let mut a = std::collections::hash_map::DefaultHasher::new();
    state.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    0x5bd1_e995u32.hash(&mut b);
    state.hash(&mut b);
    (a.finish(), b.finish())
}

/// The operations that may go next, in the order to try them: those with an answer first
/// (in invocation order), then those without (placing one only when the answers need it).
fn candidates(ops: &[&Event], placed: &Bits) -> Vec<usize> {
    let n = ops.len();
    // Nothing invoked after the earliest completion among the unplaced may go next.
    let horizon = (0..n)
        .filter(|&i| !placed.get(i))
        .map(|i| ops[i].done)
        .min()
        .unwrap_or(u64::MAX);
    let open: Vec<usize> = (0..n)
        .take_while(|&i| ops[i].call <= horizon)
        .filter(|&i| !placed.get(i))
        .collect();
    let (mut known, unknown): (Vec<usize>, Vec<usize>) = open
        .into_iter()
        .partition(|&i| ops[i].ret != CatRet::Unknown);
    known.extend(unknown);
    known
}

/// Depth-first search for an order of `ops` (sorted by invocation) that the model explains.
/// Answers the states visited.
fn search(name: &str, ops: &[&Event], budget: u64) -> Result<u64, Violation> {
    let n = ops.len();
    let known = ops.iter().filter(|e| e.ret != CatRet::Unknown).count();
    let mut placed = Bits::new(n);
    let mut placed_known = 0usize;
    let mut state: State = None;
    // Each placed operation: its position among the candidates, and the state before it.
    let mut stack: Vec<(usize, usize, State)> = Vec::new();
    let mut seen: HashSet<(Bits, (u64, u64))> = HashSet::new();
    let mut visited = 0u64;
    let mut next_from = 0usize;
    let mut deepest = (0usize, String::new());
    loop {
        if placed_known == known {
            return Ok(visited);
        }
        let order = candidates(ops, &placed);
        let mut moved = false;
        for (pos, &i) in order.iter().enumerate().skip(next_from) {
            let e = ops[i];
            let mut after = state.clone();
            if !explains(&step(&mut after, &e.op), &e.ret) {
                continue;
            }
            placed.set(i, true);
            visited += 1;
            if visited > budget {
                return Err(Violation::Inconclusive {
                    name: name.to_string(),
                    ops: n,
                    budget,
                });
            }
            if seen.insert((placed.clone(), fingerprint(&after))) {
                stack.push((i, pos, std::mem::replace(&mut state, after)));
                if e.ret != CatRet::Unknown {
                    placed_known += 1;
                }
                moved = true;
                break;
            }
            placed.set(i, false);
        }
        if moved {
            next_from = 0;
            continue;
        }
        if stack.len() > deepest.0 || deepest.1.is_empty() {
            let blocking = (0..n)
                .filter(|&i| !placed.get(i) && ops[i].ret != CatRet::Unknown)
                .min_by_key(|&i| ops[i].done)
                .map(|i| {
                    format!(
                        "{:?} answered {:?} (client {}, [{}, {}]) after state {:?}",
                        ops[i].op, ops[i].ret, ops[i].client, ops[i].call, ops[i].done, state
                    )
                })
                .unwrap_or_default();
            deepest = (stack.len(), blocking);
        }
        let Some((i, pos, before)) = stack.pop() else {
            return Err(Violation::NotLinearizable {
                name: name.to_string(),
                ops: n,
                placed: deepest.0,
                blocking: deepest.1,
            });
        };
        placed.set(i, false);
        if ops[i].ret != CatRet::Unknown {
            placed_known -= 1;
        }
        state = before;
        next_from = pos + 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::check::model::tests::ck;

    fn read() -> CatOp {
        CatOp::Read { name: "a".into() }
    }
    fn view(images: &[&str], default: u32) -> CatRet {
        CatRet::Named(Some(NameView {
            versions: images.iter().map(|i| (i.to_string(), false)).collect(),
            default,
            ..NameView::default()
        }))
    }

    #[test]
    fn concurrent_checkins_may_be_ordered_either_way() {
        let h = vec![
            Event::new(0, ck("x"), CatRet::Version(2), 0, 10),
            Event::new(1, ck("y"), CatRet::Version(1), 1, 9),
            Event::new(2, read(), view(&["y", "x"], 2), 11, 12),
        ];
        let s = check(&h).unwrap();
        assert_eq!((s.names, s.ops), (1, 3));
    }

    #[test]
    fn a_stale_read_is_caught() {
        let h = vec![
            Event::new(0, ck("x"), CatRet::Version(1), 0, 1),
            Event::new(0, ck("y"), CatRet::Version(2), 2, 3),
            // Invoked after the second checkin completed, yet shows only the first.
            Event::new(1, read(), view(&["x"], 1), 4, 5),
        ];
        let e = check(&h).unwrap_err();
        assert!(
            matches!(e, Violation::NotLinearizable { placed: 2, .. }),
            "{e}"
        );
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let h = vec![
            Event::new(0, ck("x"), CatRet::Version(1), 0, 1),
            Event::new(1, read(), CatRet::Named(None), 2, 3),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_write_applied_twice_is_caught() {
        // One checkin, answered once, but the name shows it twice (a retry applied again).
        let h = vec![
            Event::new(0, ck("x"), CatRet::Version(1), 0, 1),
            Event::new(1, read(), view(&["x", "x"], 2), 2, 3),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_unanswered_write_may_have_happened_or_not() {
        let took = vec![
            Event::new(0, ck("x"), CatRet::Version(1), 0, 1),
            Event::new(0, ck("y"), CatRet::Unknown, 2, u64::MAX),
            Event::new(1, read(), view(&["x", "y"], 2), 5, 6),
        ];
        check(&took).unwrap();
        let did_not = vec![
            Event::new(0, ck("x"), CatRet::Version(1), 0, 1),
            Event::new(0, ck("y"), CatRet::Unknown, 2, u64::MAX),
            Event::new(1, read(), view(&["x"], 1), 5, 6),
            Event::new(1, read(), view(&["x", "y"], 2), 7, 8),
        ];
        check(&did_not).unwrap();
        // But once seen, it cannot disappear again.
        let flicker = vec![
            Event::new(0, ck("x"), CatRet::Version(1), 0, 1),
            Event::new(0, ck("y"), CatRet::Unknown, 2, u64::MAX),
            Event::new(1, read(), view(&["x", "y"], 2), 5, 6),
            Event::new(1, read(), view(&["x"], 1), 7, 8),
        ];
        assert!(check(&flicker).is_err());
    }

    #[test]
    fn unanswered_writes_the_final_read_rules_out_are_left_out() {
        let end = |images: &[&str]| {
            BTreeMap::from([(
                "a".to_string(),
                Some(NameView {
                    versions: images.iter().map(|i| (i.to_string(), false)).collect(),
                    default: images.len() as u32,
                    ..NameView::default()
                }),
            )])
        };
        let del = CatOp::Delete {
            name: "a".into(),
            version: 1,
        };
        let h = vec![
            Event::new(0, ck("x"), CatRet::Version(1), 0, 1),
            Event::new(1, ck("x"), CatRet::Unknown, 0, u64::MAX),
            Event::new(2, ck("y"), CatRet::Unknown, 0, u64::MAX),
            Event::new(3, del, CatRet::Unknown, 0, u64::MAX),
        ];
        // Only one x at the end (the acknowledged one), no y, version 1 not deleted.
        let mut e = h.clone();
        prune_unknown(&mut e, &end(&["x"]));
        assert_eq!(e.len(), 1);
        // A second x and a y at the end: both unanswered checkins may have happened.
        let mut e = h.clone();
        prune_unknown(&mut e, &end(&["x", "y", "x"]));
        assert_eq!(e.len(), 3);
        check(&e).unwrap();
    }

    #[test]
    fn names_are_checked_apart() {
        let other = CatOp::Checkin {
            name: "b".into(),
            image: "z".into(),
        };
        let h = vec![
            Event::new(0, ck("x"), CatRet::Version(1), 0, 1),
            Event::new(1, other, CatRet::Version(1), 0, 1),
            Event::new(2, read(), view(&["x"], 1), 2, 3),
        ];
        assert_eq!(check(&h).unwrap().names, 2);
    }

    #[test]
    fn many_concurrent_clients_stay_tractable() {
        // 8 clients, 40 rounds of overlapping checkins and reads on one name.
        let mut h = Vec::new();
        let mut images: Vec<String> = Vec::new();
        let mut t = 0;
        for round in 0..40u64 {
            let base = images.len();
            for c in 0..4 {
                let img = format!("i{round}-{c}");
                images.push(img.clone());
                let n = (base + c + 1) as u32;
                h.push(Event::new(c, ck(&img), CatRet::Version(n), t, t + 10));
            }
            for c in 4..8 {
                h.push(Event::new(c, read(), CatRet::Unknown, t, u64::MAX));
            }
            t += 11;
            let all: Vec<&str> = images.iter().map(String::as_str).collect();
            h.push(Event::new(
                8,
                read(),
                view(&all, all.len() as u32),
                t,
                t + 1,
            ));
            t += 2;
        }
        let s = check(&h).unwrap();
        assert_eq!(s.ops, 200);
    }
}

//! Checking a history.
//!
//! - **Linearizability** per key (it is compositional), by the Wing-Gong algorithm with
//!   Lowe's memoisation, over a versioned-register model whose state is "absent" or
//!   `(version, value)`. Operations whose outcome is unknown have no return event: they may
//!   be linearized anywhere after their invocation, or never. `local` reads are left out.
//! - **Local reads** never return a value that was never written, or one written only after
//!   the read completed.
//! - **Versions** seen by one client on one key never go backwards.
//! - **Set**: after healing, every acknowledged create is present exactly once, and nothing
//!   that was never attempted.
//! - **Walks** of the list, page by page, during the faults: each is in the list's order
//!   with no record twice, holds every create acknowledged before it began, and nothing of
//!   the set's that was never attempted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::history::{Call, Op, Outcome};

/// What we know of a register's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ver {
    Exact(u64),
    /// Written by an operation whose result we never saw: some version >= `min`, and not
    /// `min + i` for each bit `i` of `not` (a compare-and-set on that version was answered
    /// 412). Without `not`, a 412 said nothing, and a later read that pinned the version to
    /// the one refused passed (found in review). Exclusions past `min + 63` are not kept:
    /// that only lets through what it cannot tell, never fails a valid history.
    AtLeast {
        min: u64,
        not: u64,
    },
}

impl Ver {
    fn at_least(min: u64) -> Ver {
        Ver::AtLeast { min, not: 0 }
    }

    fn min(self) -> u64 {
        match self {
            Ver::Exact(v) | Ver::AtLeast { min: v, .. } => v,
        }
    }

    /// Could the version be exactly `v`?
    fn admits(self, v: u64) -> bool {
        match self {
            Ver::Exact(x) => x == v,
            Ver::AtLeast { min, not } => v >= min && (v - min >= 64 || not & (1 << (v - min)) == 0),
        }
    }

    /// What is known once a compare-and-set expecting `v` was refused (412), or `None`
    /// when the version must have been `v`.
    fn refused(self, v: u64) -> Option<Ver> {
        match self {
            Ver::Exact(x) => (x != v).then_some(self),
            Ver::AtLeast { min, not } if v >= min && v - min < 64 => Some(Ver::AtLeast {
                min,
                not: not | (1 << (v - min)),
            }),
            Ver::AtLeast { .. } => Some(self),
        }
    }
}

/// The register: absent, or present with a version and a value.
pub type State = Option<(Ver, i64)>;

/// The model's transition for `op` from `s`, or `None` if `op` cannot take effect here.
pub fn step(s: State, op: &Op) -> Option<State> {
    let unknown = matches!(op.outcome, Outcome::Unknown { .. });
    match (&op.call, &op.outcome) {
        (Call::Read { .. }, Outcome::Ok { version, value }) => match (s, version, value) {
            (None, None, _) => Some(None),
            (Some((ver, val)), Some(v), Some(x)) if ver.admits(*v) && val == *x => {
                Some(Some((Ver::Exact(*v), val)))
            }
            _ => None,
        },
        (Call::Create { value }, outcome) => match (s, outcome) {
            (
                None,
                Outcome::Ok {
                    version: Some(w), ..
                },
            ) => Some(Some((Ver::Exact(*w), *value))),
            (None, _) if unknown => Some(Some((Ver::at_least(0), *value))),
            (Some(_), Outcome::Fail { status: 409 }) => Some(s),
            _ => None,
        },
        (Call::Write { value }, outcome) => match (s, outcome) {
            (
                Some((ver, _)),
                Outcome::Ok {
                    version: Some(w), ..
                },
            ) if *w > ver.min() => Some(Some((Ver::Exact(*w), *value))),
            (Some((ver, _)), _) if unknown => Some(Some((Ver::at_least(ver.min() + 1), *value))),
            (None, Outcome::Fail { status: 404 }) => Some(None),
            _ => None,
        },
        (Call::Cas { expected, value }, outcome) => match (s, outcome) {
            (
                Some((ver, _)),
                Outcome::Ok {
                    version: Some(w), ..
                },
            ) if ver.admits(*expected) && *w > *expected => Some(Some((Ver::Exact(*w), *value))),
            (Some((ver, _)), _) if unknown && ver.admits(*expected) => {
                Some(Some((Ver::at_least(expected + 1), *value)))
            }
            (None, Outcome::Fail { status: 412 }) => Some(None),
            // 412: the version differed, and is known to differ from then on.
            (Some((ver, val)), Outcome::Fail { status: 412 }) => {
                ver.refused(*expected).map(|ver| Some((ver, val)))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Whether the checker uses `op` for the linearizability search.
fn relevant(op: &Op) -> bool {
    match (&op.call, &op.outcome) {
        (Call::Read { local: true }, _) => false,
        (_, Outcome::ReadFailed) => false,
        (Call::Read { .. }, Outcome::Unknown { .. }) => false,
        (Call::Write { .. }, Outcome::Fail { status }) => *status == 404,
        (Call::Create { .. }, Outcome::Fail { status }) => *status == 409,
        (Call::Cas { .. }, Outcome::Fail { status }) => *status == 412,
        _ => true,
    }
}

/// A small growable bit set (one bit per operation of the key).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call: its return event, if the operation completed with a known outcome.
    ret: Option<usize>,
    prev: usize,
    next: usize,
}

/// Unknown writes that a local read saw, made known: a node applies only committed entries,
/// so a write whose value a local read returned (every write's value is its own) took
/// effect before that read completed, at the version the read saw. Left unknown, it could
/// be placed after a linearizable read that missed it, though the read began after it was
/// committed (found in review: such a stale read passed).
fn pinned_by_local_reads(ops: &[Op]) -> Vec<Op> {
    // The earliest completion of a local read of each (value, version).
    let mut seen: HashMap<i64, (u64, u64)> = HashMap::new();
    for r in ops.iter().filter(|o| o.call == Call::Read { local: true }) {
        if let Outcome::Ok {
            version: Some(v),
            value: Some(x),
        } = r.outcome
        {
            let e = seen.entry(x).or_insert((r.complete_ns, v));
            if r.complete_ns < e.0 {
                *e = (r.complete_ns, v);
            }
        }
    }
    ops.iter()
        .map(|o| {
            let value = match (&o.call, &o.outcome) {
                (
                    Call::Create { value } | Call::Write { value } | Call::Cas { value, .. },
                    Outcome::Unknown { .. },
                ) => *value,
                _ => return o.clone(),
            };
            match seen.get(&value) {
                Some(&(at, v)) if at >= o.invoke_ns => Op {
                    complete_ns: at,
                    outcome: Outcome::Ok {
                        version: Some(v),
                        value: Some(value),
                    },
                    ..o.clone()
                },
                _ => o.clone(),
            }
        })
        .collect()
}

/// Is this one key's history linearizable? `ops` are that key's operations.
pub fn linearizable(ops: &[Op]) -> bool {
    let pinned = pinned_by_local_reads(ops);
    let ops: Vec<&Op> = pinned.iter().filter(|o| relevant(o)).collect();
    let n = ops.len();
    // Events in time order; on equal times, calls first (the permissive choice).
    let mut times: Vec<(u64, bool, usize)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        times.push((op.invoke_ns, false, i));
        if !matches!(op.outcome, Outcome::Unknown { .. }) {
            times.push((op.complete_ns, true, i));
        }
    }
    times.sort_by_key(|&(t, is_ret, i)| (t, is_ret, i));
    // A doubly linked list with a sentinel head at index 0.
    let mut ev: Vec<Event> = vec![Event {
        op: usize::MAX,
        is_call: false,
        ret: None,
        prev: 0,
        next: 0,
    }];
    let mut call_idx = vec![0usize; n];
    for (_, is_ret, i) in &times {
        let idx = ev.len();
        ev.push(Event {
            op: *i,
            is_call: !is_ret,
            ret: None,
            prev: idx - 1,
            next: usize::MAX,
        });
        ev[idx - 1].next = idx;
        if *is_ret {
            let c = call_idx[*i];
            ev[c].ret = Some(idx);
        } else {
            call_idx[*i] = idx;
        }
    }
    const END: usize = usize::MAX;
    let mut returns_left = times.iter().filter(|t| t.1).count();

    fn unlink(ev: &mut [Event], i: usize) {
        let (p, n) = (ev[i].prev, ev[i].next);
        ev[p].next = n;
        if n != END {
            ev[n].prev = p;
        }
    }
    fn relink(ev: &mut [Event], i: usize) {
        let (p, n) = (ev[i].prev, ev[i].next);
        ev[p].next = i;
        if n != END {
            ev[n].prev = i;
        }
    }

    let mut state: State = None;
    let mut linearized = Bits::new(n);
    let mut cache: HashSet<(Bits, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut entry = ev[0].next;
    loop {
        if returns_left == 0 {
            return true;
        }
        // Past the last event (only calls without returns were left), or at the return of
        // an operation not linearized yet: undo the last choice and try the next one.
        let must_backtrack = entry == END || !ev[entry].is_call;
        if must_backtrack {
            let Some((call, prev_state)) = stack.pop() else {
                return false;
            };
            state = prev_state;
            linearized.clear(ev[call].op);
            if let Some(r) = ev[call].ret {
                relink(&mut ev, r);
                returns_left += 1;
            }
            relink(&mut ev, call);
            entry = ev[call].next;
            continue;
        }
        // A call: linearize it here if the model allows and this state is new.
        let e = ev[entry];
        if let Some(next) = step(state, ops[e.op]) {
            let mut lin = linearized.clone();
            lin.set(e.op);
            if cache.insert((lin.clone(), next)) {
                stack.push((entry, state));
                state = next;
                linearized = lin;
                unlink(&mut ev, entry);
                if let Some(r) = e.ret {
                    unlink(&mut ev, r);
                    returns_left -= 1;
                }
                entry = ev[0].next;
                continue;
            }
        }
        entry = e.next;
    }
}

/// Local reads: the value seen was written by some create/write/CAS on that key (acknowledged
/// or unknown) invoked before the read completed, with the version it got if known.
pub fn local_reads_valid(ops: &[Op]) -> Result<(), String> {
    for r in ops.iter().filter(|o| o.call == Call::Read { local: true }) {
        let Outcome::Ok {
            version: Some(v),
            value: Some(x),
        } = &r.outcome
        else {
            continue;
        };
        let writer = ops.iter().find(|w| {
            let value = match &w.call {
                Call::Create { value } | Call::Write { value } | Call::Cas { value, .. } => *value,
                Call::Read { .. } => return false,
            };
            let version_ok = match &w.outcome {
                Outcome::Ok {
                    version: Some(wv), ..
                } => wv == v,
                Outcome::Unknown { .. } => true,
                _ => false,
            };
            value == *x && version_ok && w.invoke_ns <= r.complete_ns
        });
        if writer.is_none() {
            return Err(format!(
                "local read by process {} on {} saw value {x} at version {v}, which no write produced",
                r.process, r.key
            ));
        }
    }
    Ok(())
}

/// One client's acknowledged versions on a key never decrease.
pub fn versions_monotonic(ops: &[Op]) -> Result<(), String> {
    let mut last: HashMap<(u64, &str), u64> = HashMap::new();
    let mut by_time: Vec<&Op> = ops.iter().collect();
    by_time.sort_by_key(|o| o.invoke_ns);
    for op in by_time {
        if op.call == (Call::Read { local: true }) {
            continue;
        }
        if let Outcome::Ok {
            version: Some(v), ..
        } = op.outcome
        {
            let slot = last.entry((op.process, op.key.as_str())).or_insert(0);
            if v < *slot {
                return Err(format!(
                    "process {} saw {} go from version {} back to {v}",
                    op.process, op.key, *slot
                ));
            }
            *slot = v;
        }
    }
    Ok(())
}

/// The set workload: `final_ids` is the list read after healing.
pub fn set_valid(
    attempted: &BTreeSet<String>,
    acked: &BTreeSet<String>,
    failed: &BTreeMap<String, u16>,
    final_ids: &[String],
) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for id in final_ids {
        if !seen.insert(id.clone()) {
            return Err(format!("duplicate: {id}"));
        }
        if !attempted.contains(id) {
            return Err(format!("phantom: {id} was never created"));
        }
        if let Some(status) = failed.get(id) {
            return Err(format!(
                "{id} was answered {status}, a certain failure, but is in the store (a write \
                 that may have applied must not be reported as failed)"
            ));
        }
    }
    let lost: Vec<_> = acked.difference(&seen).collect();
    if !lost.is_empty() {
        return Err(format!(
            "lost {} acknowledged creates, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    Ok(())
}

/// The keyed-retry invariant: every acknowledged create is present exactly once (retries
/// included: a create retried with its key takes effect at most once), nothing is present
/// that was never attempted, and no retry was answered as if its key were unknown.
pub fn keyed_valid(log: &super::workload::KeyedLog, final_ids: &[String]) -> Result<(), String> {
    if !log.violations.is_empty() {
        return Err(format!(
            "{} keyed creates answered 4xx (a key not honoured, or a valid create refused), \
             e.g. {:?}",
            log.violations.len(),
            &log.violations[..log.violations.len().min(5)]
        ));
    }
    // A keyed attempt that failed for certain is retried with its key: it may apply later.
    set_valid(&log.attempted, &log.acked, &BTreeMap::new(), final_ids)
}

/// The walk invariant. `acks`: when each create was acknowledged, and its id; `tracked`:
/// the ids whose creates are all in `attempted` (the set and keyed workloads'). A walk's
/// pages are reads of their own, each after the walk began: so whatever was acknowledged
/// before it began is on one of them (their records are never deleted or moved in this run:
/// `created` is kept by a `PUT` that does not send it; the records the walks delete are
/// the drain client's, which are not tracked). Order is the list's: newest
/// `created` first, ties by id; a record seen twice, or out of place, means a page did not
/// start where the one before it ended.
pub fn walks_valid(
    walks: &[super::workload::Walk],
    acks: &[(u64, String)],
    attempted: &BTreeSet<String>,
    tracked: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let mut acks: Vec<&(u64, String)> = acks.iter().collect();
    acks.sort();
    let bad: Vec<String> = walks
        .iter()
        .enumerate()
        .filter_map(|(n, walk)| {
            walk_valid(walk, &acks, attempted, &tracked)
                .err()
                .map(|why| {
                    format!(
                        "walk {n} (pages of {}, {} pages, {:.3}-{:.3} s): {why}",
                        walk.limit,
                        walk.pages,
                        walk.start_ns as f64 / 1e9,
                        walk.end_ns as f64 / 1e9
                    )
                })
        })
        .collect();
    match bad.first() {
        None => Ok(()),
        Some(first) => Err(format!(
            "{} of {} walks fail; the first: {first}",
            bad.len(),
            walks.len()
        )),
    }
}

/// One walk against the invariant of [`walks_valid`]; `acks` sorted by time.
fn walk_valid(
    walk: &super::workload::Walk,
    acks: &[&(u64, String)],
    attempted: &BTreeSet<String>,
    tracked: &impl Fn(&str) -> bool,
) -> Result<(), String> {
    for pair in walk.rows.windows(2) {
        let ((a, ca), (b, cb)) = (&pair[0], &pair[1]);
        if !(ca > cb || (ca == cb && a < b)) {
            return Err(format!(
                "{b} (created {cb}) came after {a} (created {ca}), out of the list's order"
            ));
        }
    }
    if let Some((id, _)) = walk
        .rows
        .iter()
        .find(|(id, _)| tracked(id) && !attempted.contains(id))
    {
        return Err(format!("phantom: {id} was never created"));
    }
    let seen: HashSet<&str> = walk.rows.iter().map(|(id, _)| id.as_str()).collect();
    let missing: Vec<&str> = acks
        .iter()
        .take_while(|(at, _)| *at < walk.start_ns)
        .map(|(_, id)| id.as_str())
        .filter(|id| !seen.contains(id))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} creates acknowledged before it began are missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    Ok(())
}

/// Split a history by key.
pub fn by_key(ops: &[Op]) -> BTreeMap<String, Vec<Op>> {
    let mut map: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for op in ops {
        map.entry(op.key.clone()).or_default().push(op.clone());
    }
    map
}

/// A readable timeline of one key's operations.
pub fn timeline(ops: &[Op]) -> String {
    let mut sorted: Vec<&Op> = ops.iter().collect();
    sorted.sort_by_key(|o| o.invoke_ns);
    let mut out = String::new();
    for o in sorted {
        out.push_str(&format!(
            "{:>10.3}ms -> {:>10.3}ms  p{:<4} node{}  {:?} => {:?}\n",
            o.invoke_ns as f64 / 1e6,
            o.complete_ns as f64 / 1e6,
            o.process,
            o.node + 1,
            o.call,
            o.outcome
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)] // one history operation, field by field
    fn op(p: u64, t0: u64, t1: u64, call: Call, outcome: Outcome) -> Op {
        Op {
            process: p,
            node: 0,
            key: "k".into(),
            call,
            invoke_ns: t0,
            complete_ns: t1,
            outcome,
        }
    }
    fn ok(v: u64, x: i64) -> Outcome {
        Outcome::Ok {
            version: Some(v),
            value: Some(x),
        }
    }
    fn read() -> Call {
        Call::Read { local: false }
    }
    fn unknown() -> Outcome {
        Outcome::Unknown {
            why: "timeout".into(),
        }
    }

    /// An unknown write whose value a local read saw was committed before that read
    /// completed: a linearizable read that began after it must not miss it (found in
    /// review: the checker placed the write after the stale read).
    #[test]
    fn an_unknown_write_a_local_read_saw_is_not_placed_after_a_later_read() {
        let local = Call::Read { local: true };
        let history = |stale: bool| {
            vec![
                op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
                op(2, 20, 10_000, Call::Write { value: 2 }, unknown()),
                op(3, 30, 40, local.clone(), ok(9, 2)),
                op(4, 50, 60, read(), if stale { ok(5, 1) } else { ok(9, 2) }),
                op(5, 100, 110, read(), ok(9, 2)),
            ]
        };
        assert!(!linearizable(&history(true)));
        assert!(linearizable(&history(false)));
        // Without the local read, the stale read is allowed: the write may come after it.
        let mut h = history(true);
        h.remove(2);
        assert!(linearizable(&h));
    }

    /// A compare-and-set refused (412) while the version was unknown says the version was
    /// not the one expected, from then on: a later read of exactly that version, with no
    /// write between, is not linearizable (found in review: it passed).
    #[test]
    fn a_refused_compare_and_set_rules_its_version_out() {
        let cas = |expected| Call::Cas { expected, value: 3 };
        let fail = |status| Outcome::Fail { status };
        let history = |read_version| {
            vec![
                op(1, 0, 1_000, Call::Create { value: 1 }, unknown()),
                op(3, 30, 40, Call::Create { value: 2 }, fail(409)),
                op(2, 50, 60, cas(9), fail(412)),
                op(4, 100, 110, read(), ok(read_version, 1)),
            ]
        };
        assert!(!linearizable(&history(9)));
        assert!(linearizable(&history(10)));
        // Two refusals rule out both; a refusal far above the known minimum is not kept,
        // which only ever lets a history through.
        let mut h = history(8);
        h.insert(3, op(2, 70, 80, cas(8), fail(412)));
        assert!(!linearizable(&h));
        assert!(linearizable(&history(1_000)));
        let far = Ver::at_least(0).refused(500).unwrap();
        assert!(far.admits(500));
        assert_eq!(Ver::Exact(9).refused(9), None);
    }

    #[test]
    fn accepts_a_sequential_history() {
        let h = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
            op(1, 2, 3, read(), ok(5, 1)),
            op(2, 4, 5, Call::Write { value: 2 }, ok(7, 2)),
            op(
                1,
                6,
                7,
                Call::Cas {
                    expected: 7,
                    value: 3,
                },
                ok(9, 3),
            ),
            op(
                2,
                8,
                9,
                Call::Cas {
                    expected: 7,
                    value: 4,
                },
                Outcome::Fail { status: 412 },
            ),
            op(1, 10, 11, read(), ok(9, 3)),
        ];
        assert!(linearizable(&h));
    }

    #[test]
    fn accepts_concurrent_reads_either_side_of_a_write() {
        let h = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
            op(2, 2, 10, Call::Write { value: 2 }, ok(7, 2)),
            op(3, 3, 4, read(), ok(7, 2)), // overlaps the write: may see it...
            op(1, 5, 6, read(), ok(7, 2)), // ...and then nobody may see the old value
        ];
        assert!(linearizable(&h));
    }

    #[test]
    fn rejects_a_stale_read() {
        let h = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
            op(2, 2, 3, Call::Write { value: 2 }, ok(7, 2)),
            op(3, 4, 5, read(), ok(5, 1)), // after the write completed
        ];
        assert!(!linearizable(&h));
    }

    #[test]
    fn rejects_a_lost_write() {
        // An acknowledged write, then a read that sees the state before it, forever.
        let h = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
            op(2, 2, 3, Call::Write { value: 2 }, ok(7, 2)),
            op(3, 10, 11, read(), ok(5, 1)),
            op(3, 12, 13, read(), ok(5, 1)),
        ];
        assert!(!linearizable(&h));
    }

    #[test]
    fn rejects_a_phantom_value() {
        let h = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
            op(2, 2, 3, read(), ok(6, 99)), // 99 was never written
        ];
        assert!(!linearizable(&h));
        let local = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
            op(2, 2, 3, Call::Read { local: true }, ok(6, 99)),
        ];
        assert!(local_reads_valid(&local).is_err());
        let local_ok = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
            op(2, 2, 3, Call::Read { local: true }, ok(5, 1)),
        ];
        assert!(local_reads_valid(&local_ok).is_ok());
    }

    #[test]
    fn rejects_a_double_successful_cas() {
        let h = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
            op(
                2,
                2,
                6,
                Call::Cas {
                    expected: 5,
                    value: 2,
                },
                ok(7, 2),
            ),
            op(
                3,
                2,
                6,
                Call::Cas {
                    expected: 5,
                    value: 3,
                },
                ok(8, 3),
            ),
        ];
        assert!(!linearizable(&h));
    }

    #[test]
    fn unknown_writes_may_apply_or_not() {
        // Applied: a later read sees it with a version we learn only then.
        let applied = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
            op(2, 2, 3, Call::Write { value: 2 }, unknown()),
            op(3, 10, 11, read(), ok(6, 2)),
            op(
                3,
                12,
                13,
                Call::Cas {
                    expected: 6,
                    value: 3,
                },
                ok(8, 3),
            ),
        ];
        assert!(linearizable(&applied));
        // Never applied.
        let never = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
            op(2, 2, 3, Call::Write { value: 2 }, unknown()),
            op(3, 10, 11, read(), ok(5, 1)),
        ];
        assert!(linearizable(&never));
        // But not before it was invoked.
        let too_early = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
            op(3, 2, 3, read(), ok(6, 2)),
            op(2, 10, 11, Call::Write { value: 2 }, unknown()),
        ];
        assert!(!linearizable(&too_early));
        // An unknown CAS applies only where its version matches.
        let cas = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(5, 1)),
            op(
                2,
                2,
                3,
                Call::Cas {
                    expected: 4,
                    value: 2,
                },
                unknown(),
            ),
            op(3, 10, 11, read(), ok(9, 2)),
        ];
        assert!(!linearizable(&cas));
    }

    #[test]
    fn absent_register_rules() {
        let h = vec![
            op(
                1,
                0,
                1,
                read(),
                Outcome::Ok {
                    version: None,
                    value: None,
                },
            ),
            op(
                1,
                2,
                3,
                Call::Write { value: 1 },
                Outcome::Fail { status: 404 },
            ),
            op(1, 4, 5, Call::Create { value: 1 }, ok(3, 1)),
            op(
                2,
                6,
                7,
                Call::Create { value: 2 },
                Outcome::Fail { status: 409 },
            ),
        ];
        assert!(linearizable(&h));
        let bad = vec![
            op(1, 0, 1, Call::Create { value: 1 }, ok(3, 1)),
            op(
                2,
                2,
                3,
                read(),
                Outcome::Ok {
                    version: None,
                    value: None,
                },
            ),
        ];
        assert!(!linearizable(&bad));
    }

    #[test]
    fn versions_never_go_backwards_for_a_client() {
        let h = vec![op(1, 0, 1, read(), ok(7, 1)), op(1, 2, 3, read(), ok(5, 1))];
        assert!(versions_monotonic(&h).is_err());
    }

    #[test]
    fn set_invariant() {
        let attempted: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let acked: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let none = BTreeMap::new();
        assert!(set_valid(&attempted, &acked, &none, &s(&["a", "b"])).is_ok());
        assert!(
            set_valid(&attempted, &acked, &none, &s(&["a", "b", "c"])).is_ok(),
            "unknown may appear"
        );
        assert!(
            set_valid(&attempted, &acked, &none, &s(&["a"])).is_err(),
            "lost"
        );
        assert!(
            set_valid(&attempted, &acked, &none, &s(&["a", "b", "b"])).is_err(),
            "duplicate"
        );
        assert!(
            set_valid(&attempted, &acked, &none, &s(&["a", "b", "z"])).is_err(),
            "phantom"
        );
        // A create answered as a certain failure (503 "No leader available") that is in
        // the store anyway (found in review: it passed as "unknown may appear").
        let failed: BTreeMap<String, u16> = [("c".to_string(), 503)].into();
        assert!(set_valid(&attempted, &acked, &failed, &s(&["a", "b"])).is_ok());
        let err = set_valid(&attempted, &acked, &failed, &s(&["a", "b", "c"])).unwrap_err();
        assert!(err.contains("c was answered 503"), "{err}");
    }

    #[test]
    fn keyed_retries_catch_a_key_not_honoured_and_a_lost_create() {
        use super::super::workload::KeyedLog;
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let mut log = KeyedLog {
            attempted: ids(&["k-1", "k-2", "k-3"]),
            acked: ids(&["k-1", "k-2"]),
            ..KeyedLog::default()
        };
        let present = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // k-3 unknown and applied: fine; k-3 unknown and not applied: fine.
        assert!(keyed_valid(&log, &present(&["k-1", "k-2", "k-3"])).is_ok());
        assert!(keyed_valid(&log, &present(&["k-1", "k-2"])).is_ok());
        // An acknowledged create missing, or a phantom: caught.
        assert!(keyed_valid(&log, &present(&["k-1"])).is_err());
        assert!(keyed_valid(&log, &present(&["k-1", "k-2", "k-9"])).is_err());
        // A retry answered 409 (the key was not honoured): caught even if the set looks fine.
        log.violations.push("k-2".into());
        assert!(keyed_valid(&log, &present(&["k-1", "k-2"])).is_err());
    }

    #[test]
    fn walks_catch_a_stale_page_a_repeat_a_skip_back_and_a_phantom() {
        use super::super::workload::Walk;
        let attempted: BTreeSet<String> = ["s-1", "s-2", "s-3", "s-4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // s-1 and s-2 acknowledged at 10 and 20; s-3 at 40, after the walk began.
        let acks: Vec<(u64, String)> =
            vec![(20, "s-2".into()), (10, "s-1".into()), (40, "s-3".into())];
        let tracked = |id: &str| id.starts_with("s-");
        let walk = |rows: &[(&str, i64)]| Walk {
            start_ns: 30,
            end_ns: 50,
            limit: 2,
            pages: 2,
            rows: rows.iter().map(|(id, c)| (id.to_string(), *c)).collect(),
            from_deleted: 0,
        };
        let check = |rows: &[(&str, i64)]| walks_valid(&[walk(rows)], &acks, &attempted, tracked);
        // Newest first, ties by id; register records ("r-") are not the set's.
        assert!(check(&[("s-3", 9), ("r-1", 8), ("s-1", 8), ("s-2", 8)]).is_ok());
        // Something acknowledged after it began need not be there.
        assert!(check(&[("s-1", 8), ("s-2", 8)]).is_ok());
        // An acknowledged create missing (a stale page): caught.
        let err = check(&[("s-3", 9), ("s-1", 8)]).unwrap_err();
        assert!(err.contains("missing") && err.contains("s-2"), "{err}");
        // A record twice (a page that started where the one before it had): caught.
        assert!(check(&[("s-1", 8), ("s-2", 8), ("s-2", 8)]).is_err());
        // Out of the order (a page that started too early, or one not sorted): caught.
        assert!(check(&[("s-1", 8), ("s-2", 8), ("s-3", 9)]).is_err());
        assert!(check(&[("s-2", 8), ("s-1", 8)]).is_err());
        // Something of the set's that was never created: caught.
        let err = check(&[("s-1", 8), ("s-2", 8), ("s-9", 7)]).unwrap_err();
        assert!(err.contains("phantom"), "{err}");
    }
}

//! Which log entry of a group each write goes into.
//!
//! A record's version is the index of the log entry that last wrote it (api.md, 7), so no
//! entry may hold two writes to one record: they would share a version, and an `If-Match`
//! read from the first would match after the second. Group commit used to leave a second
//! write to a record for the next group, one round later. With many clients on one record
//! (a counter, a shared document) that allowed one write to it per round: 2,539 updates/s
//! of one record at 16 clients and 1,966 at 64, against etcd's 4,201 and 7,154
//! (docs/benchmarks.md, thirty-first pass). So a group is proposed as several entries,
//! back to back in the same round, and a write goes into the entry after the last one
//! that writes any of its records: each entry holds a record once, and the writes to a
//! record keep the order they came in.
//!
//! One exception: a write on condition of a version the record had before the group
//! (`If-Match`, no rename) cannot apply once an earlier write in its entry changed the
//! record, so it goes into the entry of the last write to its record, after it. Clients that
//! race to compare-and-set one record used to take an entry each, of which all but the first
//! could only fail; now a round's race is one entry (docs/benchmarks.md, thirty-third pass).

use std::collections::HashMap;

/// Entries one group may be split into. Past this a write waits for the next group, as
/// every second write to a record did before; an entry costs openraft a message and a log
/// entry of its own, so a group of 64 writes to one record is 64 small entries in a round.
pub const MAX_ENTRIES: usize = 64;

/// The entries of the group being formed, as writes are placed into it.
#[derive(Debug, Default)]
pub struct Entries {
    /// For each record written so far, the last entry that writes it.
    last: HashMap<String, usize>,
    /// The entry of each write placed, in the order they were placed.
    placed: Vec<usize>,
    /// Entries in use.
    count: usize,
}

impl Entries {
    /// Place a write to `keys` (the records it may touch): the entry it goes into, or
    /// `None` when that would be past [`MAX_ENTRIES`] (it waits for the next group).
    /// `shares`: the write cannot apply once an earlier write in its entry changed its one
    /// record ([`Command::conditional_on_before`]), so it goes into the last entry that
    /// writes that record, after those writes, rather than into one of its own.
    ///
    /// [`Command::conditional_on_before`]: cookie_raft::Command::conditional_on_before
    pub fn place(&mut self, keys: &[&str], shares: bool) -> Option<usize> {
        let after = |e: usize| if shares && keys.len() == 1 { e } else { e + 1 };
        let entry = keys
            .iter()
            .filter_map(|k| self.last.get(*k))
            .map(|&e| after(e))
            .max()
            .unwrap_or(0);
        if entry >= MAX_ENTRIES {
            return None;
        }
        for k in keys {
            self.last.insert((*k).to_owned(), entry);
        }
        self.placed.push(entry);
        self.count = self.count.max(entry + 1);
        Some(entry)
    }

    /// Split `group` (the writes placed, in the order they were placed) into its entries,
    /// in order, each keeping its writes' order.
    pub fn split<T>(self, group: Vec<T>) -> Vec<Vec<T>> {
        debug_assert_eq!(group.len(), self.placed.len());
        let mut entries: Vec<Vec<T>> = (0..self.count).map(|_| Vec::new()).collect();
        for (item, entry) in group.into_iter().zip(self.placed) {
            entries[entry].push(item);
        }
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(writes: &[&[&str]]) -> (Vec<Option<usize>>, Vec<Vec<usize>>) {
        let mut e = Entries::default();
        let at: Vec<_> = writes.iter().map(|keys| e.place(keys, false)).collect();
        let taken: Vec<usize> = (0..writes.len()).filter(|&i| at[i].is_some()).collect();
        (at, e.split(taken))
    }

    #[test]
    fn writes_to_other_records_share_the_first_entry() {
        let (at, entries) = placed(&[&["a"], &["b"], &["c"]]);
        assert_eq!(at, [Some(0); 3]);
        assert_eq!(entries, [vec![0, 1, 2]]);
    }

    #[test]
    fn writes_to_one_record_go_into_entries_one_after_the_other() {
        let (at, entries) = placed(&[&["a"], &["b"], &["a"], &["a"], &["b"], &["c"]]);
        assert_eq!(at, [0, 0, 1, 2, 1, 0].map(Some));
        assert_eq!(entries, [vec![0, 1, 5], vec![2, 4], vec![3]]);
    }

    /// A rename touches two records: it goes after the last entry that writes either, and
    /// a later write to either goes after it. So no entry holds a record twice, and the
    /// writes to a record are applied in the order they came.
    #[test]
    fn a_write_to_two_records_goes_after_both() {
        let writes: &[&[&str]] = &[&["m"], &["k"], &["k"], &["k", "m"], &["m"], &["k"]];
        let (at, entries) = placed(writes);
        assert_eq!(at, [0, 0, 1, 2, 3, 3].map(Some));
        for entry in &entries {
            let mut keys: Vec<&str> = entry.iter().flat_map(|&i| writes[i].to_vec()).collect();
            let n = keys.len();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), n, "an entry holds a record twice: {entry:?}");
        }
        for record in ["k", "m"] {
            let order: Vec<usize> = entries
                .iter()
                .flatten()
                .copied()
                .filter(|&i| writes[i].contains(&record))
                .collect();
            assert!(order.is_sorted(), "{record}: applied as {order:?}");
        }
    }

    #[test]
    fn past_the_last_entry_a_write_waits_for_the_next_group() {
        let mut e = Entries::default();
        for i in 0..MAX_ENTRIES {
            assert_eq!(e.place(&["hot"], false), Some(i));
        }
        assert_eq!(e.place(&["hot"], false), None);
        assert_eq!(
            e.place(&["hot"], true),
            Some(MAX_ENTRIES - 1),
            "a conditional one shares"
        );
        assert_eq!(
            e.place(&["cold"], false),
            Some(0),
            "other records still go in"
        );
        let entries = e.split((0..=MAX_ENTRIES + 1).collect());
        assert_eq!(entries.len(), MAX_ENTRIES);
        assert_eq!(entries[0], [0, MAX_ENTRIES + 1]);
        assert_eq!(entries[MAX_ENTRIES - 1], [MAX_ENTRIES - 1, MAX_ENTRIES]);
    }

    /// Writes on condition of an earlier version of a record (compare-and-set clients
    /// racing on a counter) go into the entry of the last write to it, in order: one entry
    /// for the race, where each used to take an entry of its own. An unconditional write
    /// after them still goes into the next entry, and a conditional one before any write
    /// to its record goes first.
    #[test]
    fn conditional_writes_share_the_entry_of_the_last_write_to_their_record() {
        let mut e = Entries::default();
        let writes: [(&[&str], bool); 7] = [
            (&["hot"], true),
            (&["hot"], false),
            (&["hot"], true),
            (&["hot"], true),
            (&["cold"], true),
            (&["hot"], false),
            (&["hot", "other"], true),
        ];
        let at: Vec<_> = writes.iter().map(|(k, s)| e.place(k, *s)).collect();
        assert_eq!(at, [0, 1, 1, 1, 0, 2, 3].map(Some));
        assert_eq!(
            e.split((0..7).collect()),
            [vec![0, 4], vec![1, 2, 3], vec![5], vec![6]]
        );
    }

    #[test]
    fn a_write_without_records_goes_first() {
        let (at, entries) = placed(&[&["a"], &["a"], &[]]);
        assert_eq!(at, [0, 1, 0].map(Some));
        assert_eq!(entries, [vec![0, 2], vec![1]]);
    }
}

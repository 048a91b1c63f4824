//! Patched (cookie-crud): answers to append-entries requests held until the appends before
//! them are on disk.
//!
//! With `Config::parallel_leader_append` and `Config::parallel_follower_append`, `RaftCore`
//! hands entries to the log store and goes on without waiting for their flush; each such
//! append reports its flush back as one `Notify::LocalLogFlushed`, in the order the appends
//! were made (the log store flushes in order). A success answer to a leader says that this
//! log holds, durably, every entry up to the one it names, and so it may leave only once
//! every append submitted before it has flushed. Held answers leave in the order they were
//! made.
//!
//! An answer released after this node has since cut those entries (a newer leader's
//! conflicting append) is no different from one sent in time and delayed by the network: the
//! entries were accepted under the old vote, before the newer one, and the cut came after
//! the flush in the log store's order.

use std::collections::VecDeque;

/// Counts appends submitted without waiting and their flushes; holds answers in between.
pub(crate) struct FlushGate<T> {
    /// Appends handed to the log store with a flush callback to the core.
    submitted: u64,
    /// Of those, how many have reported their flush.
    flushed: u64,
    /// Answers, each with the count of submitted appends it waits for.
    held: VecDeque<(u64, T)>,
}

impl<T> Default for FlushGate<T> {
    fn default() -> Self {
        Self {
            submitted: 0,
            flushed: 0,
            held: VecDeque::new(),
        }
    }
}

impl<T> FlushGate<T> {
    /// An append was handed to the log store; its flush will be reported by [`Self::flushed`].
    pub(crate) fn submitted(&mut self) {
        self.submitted += 1;
    }

    /// `answer` if it may go now, or `None` if it is held until the appends submitted so far
    /// have flushed. An answer never overtakes one held before it.
    pub(crate) fn pass(&mut self, answer: T) -> Option<T> {
        if self.flushed >= self.submitted && self.held.is_empty() {
            return Some(answer);
        }
        self.held.push_back((self.submitted, answer));
        None
    }

    /// One more submitted append has flushed: the answers it frees, oldest first.
    pub(crate) fn flushed(&mut self) -> Vec<T> {
        debug_assert!(
            self.flushed < self.submitted,
            "a flush reported that was never submitted"
        );
        self.flushed = (self.flushed + 1).min(self.submitted);
        let free = self.held.iter().take_while(|(need, _)| *need <= self.flushed).count();
        self.held.drain(..free).map(|(_, answer)| answer).collect()
    }

    /// How many answers are held.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::FlushGate;

    #[test]
    fn passes_at_once_when_nothing_is_in_flight() {
        let mut g = FlushGate::default();
        assert_eq!(g.pass(1), Some(1));
        g.submitted();
        assert_eq!(g.flushed(), Vec::<i32>::new());
        assert_eq!(g.pass(2), Some(2));
    }

    #[test]
    fn holds_until_every_earlier_append_flushed() {
        let mut g = FlushGate::default();
        g.submitted();
        g.submitted();
        assert_eq!(g.pass("a"), None);
        g.submitted();
        assert_eq!(g.pass("b"), None);
        // The first flush frees nothing: "a" waits for two.
        assert!(g.flushed().is_empty());
        assert_eq!(g.flushed(), vec!["a"]);
        assert_eq!(g.held(), 1);
        assert_eq!(g.flushed(), vec!["b"]);
        assert_eq!(g.pass("c"), Some("c"));
    }

    #[test]
    fn a_later_answer_never_overtakes_a_held_one() {
        let mut g = FlushGate::default();
        g.submitted();
        assert_eq!(g.pass(1), None);
        // Nothing new was submitted, but 1 is still held: 2 queues behind it.
        assert_eq!(g.pass(2), None);
        assert_eq!(g.flushed(), vec![1, 2]);
    }
}

//! The node's wall clock, in one place.
//!
//! Wall-clock time enters the store only here: records' `created`/`last_used` are set by
//! the proposing node (then travel inside the command, so every replica stores the same
//! value), and `/cache` and the health monitor report times in Unix seconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock is set before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 if the clock is set before 1970): the log time an
/// idempotency key is recorded at.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

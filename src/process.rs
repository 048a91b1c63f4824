//! Settings of the node's process as a whole, made once at start-up.
//!
//! **Transparent huge pages, off by default.** mimalloc asks the kernel for huge pages on
//! its arenas (`madvise(MADV_HUGEPAGE)`), and hands freed memory back after a second. The
//! next allocation there faults a fresh 2 MiB page, which the kernel zeroes (and, with
//! THP `defrag=madvise`, may first compact memory for) while the faulting thread waits.
//! On a loaded leader that was 5-6% of its CPU, most of it in `Overlay::add` growing the
//! write-behind layer's hash map and in encoding AppendEntries, and it set the write tail:
//! at 64 clients p99.9 43-58 ms and max 74-120 ms, against 17-20 and 22-27 ms with huge
//! pages off (docs/benchmarks.md, "Huge pages"). With 4 KiB pages a fault zeroes only
//! what is touched. Databases that care about their tail (Redis, MongoDB) ask the same.

/// Turn transparent huge pages off for this process (`PR_SET_THP_DISABLE`) unless `allow`:
/// the kernel then backs every later fault with 4 KiB pages, whatever the system's THP
/// mode and whatever the allocator advises. Returns whether they are off now.
pub fn transparent_huge_pages(allow: bool) -> std::io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        if allow {
            return Ok(thp_disabled());
        }
        // SAFETY: prctl with PR_SET_THP_DISABLE reads no memory of ours; it sets a flag of
        // this process's memory map, inherited by nothing but its children.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(thp_disabled())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = allow;
        Ok(false)
    }
}

/// Whether this process has transparent huge pages turned off.
#[cfg(target_os = "linux")]
fn thp_disabled() -> bool {
    // SAFETY: as above; PR_GET_THP_DISABLE only reads the flag.
    unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    // The flag is the test process's; no other test depends on huge pages.
    #[test]
    fn huge_pages_are_turned_off_and_allowing_them_leaves_the_flag_alone() {
        assert!(super::transparent_huge_pages(false).unwrap());
        assert!(super::thp_disabled());
        // Allowing them changes nothing that was set: the setting is made once, at start.
        assert!(super::transparent_huge_pages(true).unwrap());
    }
}

/// **Open files.** Each connection is a file descriptor, and each listener takes up to
/// `http.max_connections` (4,096 by default) of them; a container's soft limit is often
/// 1,024. Past the limit, `accept` fails on either listener, so a flood of connections to
/// the peer port kept clients out of the client port (found in review). The soft limit is
/// raised to the hard one, as Go's runtime does, and the connections each listener may hold
/// are then fitted to what is left after [`FILES_KEPT`] for the stores, snapshots and
/// outbound connections.
pub const FILES_KEPT: u64 = 256;

/// Raise this process's soft limit on open files to its hard limit; the soft limit now.
pub fn raise_open_files() -> std::io::Result<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write only the struct passed.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        // `rlim_t` is `u64` on Linux, not on every Unix.
        #[allow(clippy::unnecessary_cast)]
        Ok(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        Ok(u64::MAX)
    }
}

/// Whether this process was started with SIGHUP ignored (`nohup`, as `make cluster-start`
/// runs the nodes): then a hangup must go on being ignored. Installing a handler replaces
/// the ignoring, and a node under `nohup` stopped at its terminal's hangup (found in
/// review).
pub fn hangup_ignored() -> bool {
    // SAFETY: a null new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// The connections each of the two listeners may hold under an open-files limit of
/// `limit`: `wanted`, or less where both listeners full would pass the limit.
pub fn connections_within(wanted: usize, limit: u64) -> usize {
    let room = limit.saturating_sub(FILES_KEPT) / 2;
    wanted
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(1)
}

#[cfg(test)]
mod files_tests {
    use super::*;

    #[test]
    fn connections_fit_the_open_files_limit() {
        assert_eq!(connections_within(4096, 1 << 20), 4096);
        assert_eq!(connections_within(4096, 1024), (1024 - 256) / 2);
        assert_eq!(connections_within(4096, 100), 1);
        assert!(raise_open_files().unwrap() > 0);
    }
}

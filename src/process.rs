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

//! `BENCH_CPU_QUOTA=<cores>`: every server process a bench starts (a cookie-crud node, an
//! etcd member) runs in a CPU cgroup of its own, limited to that many cores' worth of CPU
//! time. Why: the scaling target (creates grow from 2 to 4 cores per node at least as
//! much as etcd's) needs a machine with cores to pin; on a small one, halving and doubling
//! each node's CPU time is the closest measure left (`benches/cores.sh`). It is a proxy: a
//! quota limits CPU time, not how many threads run at once, so a stage that needs a core of
//! its own does not show; one that waits on a round trip or a disk, whatever the CPU, does.
//!
//! The period is 10 ms, not the kernel's default 100 ms: a node that spends its quota early
//! in a period waits out the rest, and a shorter period keeps that wait below the latencies
//! being measured. Needs root (or a delegated cgroup); cgroup v1 (`cpu` controller) and v2
//! (`cpu.max`) are both handled.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const PERIOD_US: u64 = 10_000;

/// The quota in cores, when `BENCH_CPU_QUOTA` asks for one.
pub fn configured() -> Option<f64> {
    let v = std::env::var("BENCH_CPU_QUOTA").ok()?;
    let cores: f64 = v
        .parse()
        .unwrap_or_else(|_| panic!("BENCH_CPU_QUOTA={v}: a number of cores, such as 0.5"));
    assert!(
        cores > 0.0,
        "BENCH_CPU_QUOTA={v}: more than zero cores, please"
    );
    Some(cores)
}

/// Where the CPU controller's hierarchy is mounted, and whether it is cgroup v2.
fn root() -> (PathBuf, bool) {
    for v1 in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"] {
        let p = PathBuf::from(v1);
        if p.join("cpu.cfs_quota_us").exists() {
            return (p, false);
        }
    }
    let v2 = PathBuf::from("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
    assert!(
        controllers.split_whitespace().any(|c| c == "cpu"),
        "BENCH_CPU_QUOTA: no cgroup CPU controller found under /sys/fs/cgroup"
    );
    (v2, true)
}

/// The group each confined server runs in, by its process id.
static GROUPS: Mutex<BTreeMap<u32, PathBuf>> = Mutex::new(BTreeMap::new());

/// Start `cmd`; with a quota configured, in a new group with that quota. The child moves
/// itself before it `exec`s, so the server never runs a moment outside it and sizes its
/// thread pools (Rust's `available_parallelism` reads the quota) the same way in every run.
/// A panic names what the kernel refused: a bench asked for a quota must not measure
/// without one.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let group = configured().map(|cores| confine(cmd, cores));
    let child = cmd.spawn()?;
    if let Some(g) = group {
        GROUPS.lock().expect("not poisoned").insert(child.id(), g);
    }
    Ok(child)
}

/// A new group with a quota of `cores`, and `cmd` set to join it before it `exec`s.
fn confine(cmd: &mut Command, cores: f64) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let (root, v2) = root();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("cookie-crud-bench-{}-{n}", std::process::id()));
    let quota_us = ((cores * PERIOD_US as f64).round() as u64).max(1000);
    let fail = |what: &str, e: std::io::Error| -> ! {
        panic!("BENCH_CPU_QUOTA: {what} under {}: {e}", dir.display())
    };
    if v2 {
        // A child group gets the cpu controller only where its parent hands it down.
        let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail("creating the group", e));
    let set = if v2 {
        std::fs::write(dir.join("cpu.max"), format!("{quota_us} {PERIOD_US}"))
    } else {
        std::fs::write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())
            .and_then(|_| std::fs::write(dir.join("cpu.cfs_quota_us"), quota_us.to_string()))
    };
    set.unwrap_or_else(|e| fail("setting the quota", e));
    // `cgroup.procs` moves the whole process (v1's `tasks` one thread); "0" names the writer.
    let procs = CString::new(dir.join("cgroup.procs").into_os_string().into_vec())
        .expect("a path without NUL");
    // SAFETY: between fork and exec only async-signal-safe calls: open, write, close on a
    // path prepared before the fork; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let wrote = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if wrote == 1 {
                Ok(())
            } else {
                Err(err)
            }
        });
    }
    dir
}

/// Remove the group of `pid`, once the process has exited (the kernel refuses a group that
/// still holds one).
pub fn release(pid: u32) {
    if let Some(g) = GROUPS.lock().expect("not poisoned").remove(&pid) {
        let _ = std::fs::remove_dir(g);
    }
}

/// The throttling so far of the group of `pid`: periods in which it ran out of quota and
/// periods it ran at all, from `cpu.stat`. A phase in which most periods are throttled is
/// CPU-bound at the quota, as the proxy needs; one that is seldom throttled is held up by
/// something else.
pub fn throttled(pid: u32) -> Option<(u64, u64)> {
    let group = GROUPS.lock().expect("not poisoned").get(&pid)?.clone();
    let stat = std::fs::read_to_string(group.join("cpu.stat")).ok()?;
    let field = |name: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((field("nr_throttled ")?, field("nr_periods ")?))
}

//! How much of the CPU this node may use sat idle lately: the signal cookie-crud's group
//! commit (`src/write/window.rs`) uses to keep a second batch in flight at any load while
//! there is CPU to spare, and that the state file's repack (`sm::repack`) waits on, so that
//! it takes only CPU that requests leave.
//!
//! Why a CPU signal and not only the load: a second batch in flight costs CPU (another
//! entry's round on every node) and saves latency (a write need not wait for the batch in
//! flight, and openraft 0.9, which keeps one AppendEntries in flight per follower, need not
//! spend a round trip on an entry-less AppendEntries that only carries the commit index).
//! Where CPU is short, as on the 2-core bench machine under 64 or more clients, the CPU
//! decides; where rounds are bound by latency (nodes on separate machines, or more cores
//! than the load uses), the latency decides, and the load alone cannot tell them apart.
//!
//! The share is measured over the CPUs this process may run on (`Cpus_allowed_list` in
//! `/proc/self/status`, their lines in `/proc/stat`), so other processes on those CPUs count
//! as busy; and where a cgroup quota caps the node, also against the quota (a container
//! on a large, idle host is still short once its quota is spent). The smaller of the two
//! counts. Both cgroup versions: v2's `cpu.max`, against the group's own `usage_usec`; and
//! v1's `cpu.cfs_quota_us` over `cpu.cfs_period_us` (hosts that still mount v1, some
//! Kubernetes nodes among them), against this process's own CPU time, since v1's `cpu`
//! controller keeps no usage of its own (that is `cpuacct`'s, mounted apart on some hosts)
//! and in a container the node is the process that spends the quota. Where none of these
//! files can be read (not Linux), there is no signal and the load alone decides.
//!
//! A sandboxed kernel may export `/proc/stat` with every counter at zero (gVisor does: GKE
//! Sandbox, some serverless hosts). Read as such, no CPU would ever look idle and pipelining
//! would stay off at any load with cores to spare. There the node measures its own CPU time
//! against the CPUs it may run on (or its quota, if smaller): it cannot see other processes'
//! use of those CPUs, but it sees whether it is itself short of CPU, which is what the
//! window asks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a sample is taken: long enough that one batch's burst does not swing it.
pub const PERIOD: Duration = Duration::from_millis(500);

/// Whether this node has CPU to spare, as its last measure found it: shared by whoever
/// measures (cookie-crud's group commit, which pipelines batches at any load while it does)
/// and whoever acts on it too (the replication streams: a further AppendEntries then goes
/// at once rather than after `raft.pipeline_after_us`, [`crate::network`]). One measure and
/// one hysteresis, so both ends change mode together. `false` until measured.
#[derive(Debug, Clone, Default)]
pub struct SpareCpu(Arc<AtomicBool>);

impl SpareCpu {
    pub fn set(&self, spare: bool) {
        self.0.store(spare, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Cumulative CPU time, as the kernel counts it.
#[derive(Debug, Clone, Copy)]
struct Counters {
    /// Over the allowed CPUs: idle (with I/O wait) and all, in clock ticks; none where the
    /// kernel's counters are not read.
    host_ticks: Option<(u64, u64)>,
    /// The CPU time spent against the quota, in microseconds, where there is one.
    cgroup_usec: Option<u64>,
}

/// How the CPU spent against a quota is read.
enum Usage {
    /// cgroup v2: the group's `cpu.stat`, whatever process in it spent the time.
    Group(PathBuf),
    /// cgroup v1: this process's own CPU time, all its threads.
    Process,
}

/// Samples the idle share every [`PERIOD`], on the caller's schedule.
pub struct IdleSampler {
    /// The CPUs whose `/proc/stat` lines count; none where the kernel's are all zeros.
    host: Option<Vec<usize>>,
    /// Where the node is capped: how its use is read, and the CPUs it may use.
    quota: Option<(Usage, f64)>,
    last: Option<(Instant, Counters)>,
}

impl IdleSampler {
    /// A sampler for this process, or `None` where the kernel's counters cannot be read.
    pub fn for_this_process() -> Option<IdleSampler> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .and_then(|l| parse_cpu_list(l.trim()))?;
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let quota = quota_v2(&cgroup).or_else(|| quota_v1(&cgroup));
        // Fails now rather than on every sample if /proc/stat is not what it should be.
        let (_, total) = parse_stat(&std::fs::read_to_string("/proc/stat").ok()?, &allowed)?;
        let (host, quota) = sources(allowed, total, quota);
        if host.is_none() {
            tracing::info!(
                "/proc/stat counts no CPU time: the idle signal is this node's own CPU time \
                 against the CPUs it may use"
            );
        }
        let sampler = IdleSampler {
            host,
            quota,
            last: None,
        };
        // And now, not on every sample, if the quota's usage cannot be read.
        sampler.read()?;
        Some(sampler)
    }

    /// The idle share of the interval since the last sample, if [`PERIOD`] has passed (the
    /// first call only starts the interval).
    pub fn poll(&mut self, now: Instant) -> Option<f64> {
        if let Some((at, _)) = self.last {
            if now.duration_since(at) < PERIOD {
                return None;
            }
        }
        let counters = self.read()?;
        let previous = self.last.replace((now, counters));
        let (at, before) = previous?;
        let quota = self.quota.as_ref().map(|(_, cpus)| *cpus);
        idle_share(&before, &counters, now.duration_since(at), quota)
    }

    /// How many CPUs' worth the share is of: the CPUs the process may use, or its quota
    /// if that is smaller.
    pub fn cpus(&self) -> f64 {
        let allowed = self.host.as_ref().map(|h| h.len() as f64);
        let quota = self.quota.as_ref().map(|(_, cpus)| *cpus);
        match (allowed, quota) {
            (Some(a), Some(q)) => a.min(q),
            (a, q) => a.or(q).unwrap_or(1.0),
        }
        .max(f64::MIN_POSITIVE)
    }

    fn read(&self) -> Option<Counters> {
        let host_ticks = match &self.host {
            Some(allowed) => Some(parse_stat(
                &std::fs::read_to_string("/proc/stat").ok()?,
                allowed,
            )?),
            None => None,
        };
        let cgroup_usec = match &self.quota {
            Some((Usage::Group(path), _)) => parse_usage(&std::fs::read_to_string(path).ok()?),
            Some((Usage::Process, _)) => process_usec(),
            None => None,
        };
        Some(Counters {
            host_ticks,
            cgroup_usec,
        })
    }
}

/// Which counters tell the idle share, given the CPUs allowed, the total ticks `/proc/stat`
/// counts for them so far, and the cgroup quota if any. A kernel that counts no time at
/// all exports no counters: then the node's own CPU time goes against the CPUs allowed
/// (or the quota, if smaller), read as a v1 quota's is unless a v2 group's usage is there.
fn sources(
    allowed: Vec<usize>,
    total_ticks: u64,
    quota: Option<(Usage, f64)>,
) -> (Option<Vec<usize>>, Option<(Usage, f64)>) {
    if total_ticks > 0 {
        return (Some(allowed), quota);
    }
    let n = allowed.len() as f64;
    let quota = match quota {
        Some((usage, cpus)) => (usage, cpus.min(n)),
        None => (Usage::Process, n),
    };
    (None, Some(quota))
}

/// The share idle between two readings `elapsed` apart: of the allowed CPUs, and of the
/// quota where there is one; the smaller. None where neither moved.
fn idle_share(a: &Counters, b: &Counters, elapsed: Duration, quota: Option<f64>) -> Option<f64> {
    let host = match (a.host_ticks, b.host_ticks) {
        (Some((idle_a, total_a)), Some((idle_b, total_b))) => {
            let total = total_b.checked_sub(total_a)?;
            if total == 0 {
                return None;
            }
            Some(idle_b.saturating_sub(idle_a) as f64 / total as f64)
        }
        _ => None,
    };
    let of_quota = match (quota, a.cgroup_usec, b.cgroup_usec) {
        (Some(cpus), Some(x), Some(y)) if elapsed > Duration::ZERO => {
            let used = y.saturating_sub(x) as f64 / 1e6 / elapsed.as_secs_f64();
            Some(1.0 - used / cpus)
        }
        _ => None,
    };
    let share = match (host, of_quota) {
        (None, None) => return None,
        (h, q) => h.unwrap_or(1.0).min(q.unwrap_or(1.0)),
    };
    Some(share.clamp(0.0, 1.0))
}

/// `0-3,8,10-11` (the kernel's CPU list format) as CPU numbers.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                // A bound on what a malformed line makes us allocate.
                if b < a || b - a > 1 << 16 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// Idle (idle + iowait) and total ticks of the `cpuN` lines of `/proc/stat` for the CPUs
/// in `allowed`. Fields: user nice system idle iowait irq softirq steal (guest time is
/// already in user and nice). Steal counts as busy: the host gave that time to another.
fn parse_stat(stat: &str, allowed: &[usize]) -> Option<(u64, u64)> {
    let (mut idle, mut total, mut seen) = (0u64, 0u64, 0usize);
    for line in stat.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(cpu) = fields.next().and_then(|f| f.strip_prefix("cpu")) else {
            continue;
        };
        let Ok(n) = cpu.parse::<usize>() else {
            continue; // the "cpu" line: all CPUs together
        };
        if !allowed.contains(&n) {
            continue;
        }
        let ticks: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
        if ticks.len() < 5 {
            return None;
        }
        idle += ticks[3] + ticks[4];
        total += ticks.iter().sum::<u64>();
        seen += 1;
    }
    (seen > 0).then_some((idle, total))
}

/// `cpu.max`: `"<quota> <period>"` in microseconds, or `"max <period>"` for no quota.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut f = text.split_ascii_whitespace();
    cpus(f.next()?, f.next()?)
}

/// A quota over its period, in CPUs; none where the quota is not a positive number (v2's
/// `max`, v1's `-1`).
fn cpus(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// `usage_usec` of a cgroup's `cpu.stat`.
fn parse_usage(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// The quota of this process's cgroup v2 directory (`0::<path>` in `cgroup`, the text of
/// `/proc/self/cgroup`).
fn quota_v2(cgroup: &str) -> Option<(Usage, f64)> {
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = PathBuf::from("/sys/fs/cgroup").join(path.trim().trim_start_matches('/'));
    let max = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
    Some((Usage::Group(dir.join("cpu.stat")), parse_cpu_max(&max)?))
}

/// The quota of this process's cgroup v1 `cpu` group: its path in `cgroup` (the text of
/// `/proc/self/cgroup`) under the mount of the `cpu` hierarchy that `/proc/self/mountinfo`
/// names.
fn quota_v1(cgroup: &str) -> Option<(Usage, f64)> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dir = v1_dir(v1_cpu_path(cgroup)?, &mounts)?;
    let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
    Some((Usage::Process, cpus(&quota, &period)?))
}

/// The path of the v1 group that holds this process for the `cpu` controller: the line
/// `<id>:<controllers>:<path>` whose controllers (`cpu,cpuacct`, `cpu`) include `cpu`.
fn v1_cpu_path(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers.split(',').any(|c| c == "cpu").then_some(path)
    })
}

/// Where the group at `path` is: under the mount of a v1 hierarchy with the `cpu`
/// controller (`mountinfo`: fields 4 and 5 are the group mounted and where; after " - ",
/// the type `cgroup` and its options). A container sees its own group mounted as the root
/// of the hierarchy, and `path` may then name it from above, or be `/`.
fn v1_dir(path: &str, mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        let mut fs = after.split_ascii_whitespace();
        let (kind, _source, options) = (fs.next()?, fs.next()?, fs.next()?);
        if kind != "cgroup" || !options.split(',').any(|o| o == "cpu") {
            return None;
        }
        let f: Vec<&str> = before.split_ascii_whitespace().collect();
        let (root, mount) = (*f.get(3)?, PathBuf::from(f.get(4)?));
        let below = match path.strip_prefix(root) {
            Some(rest) if root == "/" || rest.is_empty() || rest.starts_with('/') => rest,
            _ => "",
        };
        Some(mount.join(below.trim_start_matches('/')))
    })
}

/// This process's CPU time so far (user and system, every thread), in microseconds.
fn process_usec() -> Option<u64> {
    // SAFETY: getrusage writes only the struct it is given, which is ours and zeroed.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0).then_some(usage)
    }?;
    let usec = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Some(usec(usage.ru_utime) + usec(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpus_a_share_is_of_are_the_smaller_of_the_allowed_and_the_quota() {
        let sampler = |host: Option<usize>, quota: Option<f64>| IdleSampler {
            host: host.map(|n| (0..n).collect()),
            quota: quota.map(|q| (Usage::Process, q)),
            last: None,
        };
        assert_eq!(sampler(Some(4), Some(1.5)).cpus(), 1.5);
        assert_eq!(sampler(Some(2), Some(8.0)).cpus(), 2.0);
        assert_eq!(sampler(Some(2), None).cpus(), 2.0);
        assert_eq!(sampler(None, Some(3.0)).cpus(), 3.0);
    }

    const STAT: &str = "cpu  900 0 300 1800 100 0 0 0 0 0\n\
        cpu0 400 0 100 400 100 0 0 0 0 0\n\
        cpu1 500 0 200 1400 0 0 0 0 0 0\n\
        intr 12345\nctxt 999\n";

    #[test]
    fn cpu_lists_are_read_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-3"), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_list("1,4-5,9"), Some(vec![1, 4, 5, 9]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        for bad in ["", "3-1", "a", "0-", "0-99999999"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_the_allowed_cpus_count_and_iowait_is_idle() {
        // cpu0: idle 400 + iowait 100 of 1000; cpu1: 1400 of 2100.
        assert_eq!(parse_stat(STAT, &[0]), Some((500, 1000)));
        assert_eq!(parse_stat(STAT, &[1]), Some((1400, 2100)));
        assert_eq!(parse_stat(STAT, &[0, 1]), Some((1900, 3100)));
        assert_eq!(parse_stat(STAT, &[7]), None, "no line for an allowed CPU");
        assert_eq!(parse_stat("cpu0 1 2\n", &[0]), None, "a short line");
    }

    #[test]
    fn quotas_and_usage_are_read_from_cgroup_files() {
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2.0));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_usage("usage_usec 1500\nuser_usec 1000\n"), Some(1500));
        assert_eq!(parse_usage("user_usec 1000\n"), None);
    }

    #[test]
    fn a_v1_quota_is_found_where_the_cpu_hierarchy_is_mounted() {
        // A host's view: cpu and cpuacct mounted apart (this machine), or together.
        let cgroup = "9:name=systemd:/\n4:memory:/m\n2:cpuacct:/\n1:cpu:/pod/a\n0::/\n";
        assert_eq!(v1_cpu_path(cgroup), Some("/pod/a"));
        assert_eq!(v1_cpu_path("3:cpu,cpuacct:/k/b\n"), Some("/k/b"));
        assert_eq!(
            v1_cpu_path("2:cpuacct:/\n0::/x\n"),
            None,
            "no cpu controller"
        );
        let host = "30 25 0:27 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu\n\
                    31 25 0:28 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n";
        assert_eq!(
            v1_dir("/pod/a", host),
            Some(PathBuf::from("/sys/fs/cgroup/cpu/pod/a"))
        );
        let together =
            "30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        assert_eq!(
            v1_dir("/k/b", together),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/k/b"))
        );
        // A container: its own group mounted as the hierarchy's root.
        let inside =
            "700 650 0:27 /kubepods/pod1/c1 /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu\n";
        for path in ["/kubepods/pod1/c1", "/"] {
            assert_eq!(
                v1_dir(path, inside),
                Some(PathBuf::from("/sys/fs/cgroup/cpu")),
                "{path}"
            );
        }
        // Only a cgroup v1 mount with the cpu controller counts.
        let others = "40 25 0:29 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                      41 25 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n";
        assert_eq!(v1_dir("/", others), None);
        assert_eq!(cpus("50000\n", "100000\n"), Some(0.5));
        assert_eq!(cpus("-1\n", "100000\n"), None, "no quota");
        assert_eq!(cpus("", "100000"), None);
    }

    #[test]
    fn this_process_cpu_time_grows_as_it_works() {
        let Some(before) = process_usec() else {
            return; // no getrusage: no v1 quota signal
        };
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(process_usec().unwrap() > before);
    }

    #[test]
    fn the_share_is_the_smaller_of_the_cpus_and_the_quota() {
        let a = Counters {
            host_ticks: Some((100, 200)),
            cgroup_usec: Some(0),
        };
        let b = Counters {
            host_ticks: Some((180, 300)),
            cgroup_usec: Some(400_000),
        };
        let second = Duration::from_secs(1);
        let share = |quota| idle_share(&a, &b, second, quota).unwrap();
        let close = |x: f64, y: f64| assert!((x - y).abs() < 1e-9, "{x} against {y}");
        // 80 of 100 ticks idle.
        close(share(None), 0.8);
        // The host is idle, but 0.4 s of CPU in 1 s against a quota of half a CPU: short.
        close(share(Some(0.5)), 0.2);
        // Against two CPUs of quota the host's CPUs are the tighter bound.
        close(share(Some(2.0)), 0.8);
        // Counters that did not move (or went back) give no reading.
        assert_eq!(idle_share(&b, &b, second, None), None);
        assert_eq!(idle_share(&b, &a, second, None), None);
    }

    #[test]
    fn a_kernel_that_counts_no_cpu_time_leaves_the_node_its_own() {
        // A normal kernel: /proc/stat's lines count, the quota stays as read.
        let (host, quota) = sources(vec![0, 1], 5_000, None);
        assert_eq!(host, Some(vec![0, 1]));
        assert!(quota.is_none());
        // gVisor: every counter zero. The node's own time against its 4 CPUs.
        let (host, quota) = sources(vec![0, 1, 2, 3], 0, None);
        assert_eq!(host, None);
        assert!(matches!(quota, Some((Usage::Process, n)) if n == 4.0));
        // ...or against a smaller quota, read as the quota is.
        let group = PathBuf::from("/g/cpu.stat");
        let (_, quota) = sources(
            vec![0, 1, 2, 3],
            0,
            Some((Usage::Group(group.clone()), 1.5)),
        );
        assert!(matches!(quota, Some((Usage::Group(ref p), n)) if *p == group && n == 1.5));
        let (_, quota) = sources(vec![0, 1], 0, Some((Usage::Process, 8.0)));
        assert!(matches!(quota, Some((Usage::Process, n)) if n == 2.0));

        // Its share: 1.5 s of CPU in 1 s against 4 CPUs leaves 62.5% idle; 4 s, none.
        let at = |usec| Counters {
            host_ticks: None,
            cgroup_usec: Some(usec),
        };
        let second = Duration::from_secs(1);
        let share = idle_share(&at(0), &at(1_500_000), second, Some(4.0)).unwrap();
        assert!((share - 0.625).abs() < 1e-9, "{share}");
        assert_eq!(
            idle_share(&at(0), &at(4_000_000), second, Some(4.0)),
            Some(0.0)
        );
        // Nothing counted either way: no reading.
        let none = Counters {
            host_ticks: None,
            cgroup_usec: None,
        };
        assert_eq!(idle_share(&none, &none, second, None), None);
    }

    #[test]
    fn the_sampler_reads_this_machine_and_waits_a_period_between_samples() {
        let Some(mut s) = IdleSampler::for_this_process() else {
            return; // not Linux: no signal, which the window handles
        };
        let t0 = Instant::now();
        assert_eq!(s.poll(t0), None, "the first call starts the interval");
        assert_eq!(s.poll(t0 + PERIOD / 2), None, "too soon");
        // Time passes for the kernel's counters too: wait until they have moved.
        std::thread::sleep(Duration::from_millis(100));
        let share = s.poll(t0 + PERIOD).expect("a sample after a period");
        assert!((0.0..=1.0).contains(&share), "{share}");
    }
}

//! The nemesis: on a schedule, inject one fault, hold it, heal it, and log what it did.

use std::time::{Duration, Instant};

use super::proxy::Mesh;
use super::rng::Rng;
use crate::common::Cluster;
use crate::lossy_fs::{cut_power, Power, Writeback};

/// The kinds of fault, each selectable alone through `JEPSEN_FAULTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` a random node or the leader (a quarter of the time every node, the old
    /// leader restarted first); restart when healing.
    Kill,
    /// `SIGSTOP` a random node or the leader; `SIGCONT` when healing.
    Pause,
    /// `SIGTERM` a random node or the leader, as a rolling restart does: a leader hands
    /// leadership to a caught-up voter before it stops (`cluster::handover`), releasing its
    /// voters from its lease. Restarted when healing, once it has stopped.
    Stop,
    /// Partitions on the node-to-node links: majority/minority, isolate the leader, a
    /// bridge, or one-way.
    Partition,
    /// Remove a random node or the leader from the membership (through another node's
    /// API), kill it and delete its data; when healing, start it with empty data and
    /// `join`, as a voter: it is added back with a new incarnation.
    Member,
    /// Cut the power of a random node or the leader (a quarter of the time every node):
    /// freeze it, lose the writes it had not fsynced (a third of the time all of them, else
    /// all but a random half of its unsynced pages, which reach the disk first in any
    /// order), kill it; restart when healing. The
    /// data directories are lossy FUSE filesystems (`tests/common/lossy_fs.rs`; root and
    /// `/dev/fuse` needed).
    Power,
    /// Fill the disk of a random node or the leader (a quarter of the time every node's,
    /// as when disks of the same size holding the same data fill together) on the lossy
    /// filesystem ([`Power::fill`]): a node's next write that needs room fails with ENOSPC
    /// and it stops. When healing, make room and start the stopped nodes again.
    Disk,
}

impl Fault {
    pub fn parse(list: &str) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        for f in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match f {
                "kill" => out.push(Fault::Kill),
                "pause" => out.push(Fault::Pause),
                "stop" => out.push(Fault::Stop),
                "partition" => out.push(Fault::Partition),
                "member" => out.push(Fault::Member),
                "power" => out.push(Fault::Power),
                "disk" => out.push(Fault::Disk),
                "all" => out.extend([Fault::Kill, Fault::Pause, Fault::Partition, Fault::Stop]),
                "none" => {}
                other => {
                    return Err(format!(
                        "unknown fault {other:?} (kill, pause, stop, partition, member, power, disk, all, none)"
                    ))
                }
            }
        }
        out.dedup();
        Ok(out)
    }
}

/// What was done to the cluster, and how to undo it.
enum Active {
    Killed(usize),
    /// Every node killed; restarted in this order (the old leader first).
    KilledAll(Vec<usize>),
    Paused(usize),
    /// Sent SIGTERM: restarted once it has stopped.
    Stopped(usize),
    Partitioned,
    /// Removed from the membership, killed, data deleted: rejoins when healed.
    Removed(usize),
    /// Their disks filled: room made and the stopped ones restarted when healed.
    Filled(Vec<usize>),
    /// Nothing was done (the change was refused); nothing to undo.
    Nothing,
}

pub struct Nemesis {
    pub faults: Vec<Fault>,
    pub log: Vec<String>,
    rng: Rng,
    start: Instant,
    /// The power switches of the nodes' filesystems, when `Power` is among the faults.
    power: Vec<Power>,
    /// Each node's WAL directory where it is apart from its data directory
    /// (`JEPSEN_WAL_APART`): a node's data is deleted with its WAL, as an operator must.
    pub wal_dirs: Vec<std::path::PathBuf>,
}

impl Nemesis {
    pub fn new(faults: Vec<Fault>, seed: u64, power: Vec<Power>) -> Self {
        Nemesis {
            faults,
            log: Vec::new(),
            rng: Rng::new(seed ^ 0x004E_454D_4553_4953),
            start: Instant::now(),
            power,
            wal_dirs: Vec::new(),
        }
    }

    /// Power back on for node `i` before it starts again (a no-op after a plain kill).
    fn power_on(&self, i: usize) {
        if let Some(p) = self.power.get(i) {
            p.restore();
        }
    }

    fn note(&mut self, what: String) {
        let line = format!("{:>8.3}s {what}", self.start.elapsed().as_secs_f64());
        println!("nemesis: {line}");
        self.log.push(line);
    }

    /// Which unsynced pages a power cut lets reach the disk first: a third of the time
    /// none, else a random half (seeded from the nemesis' own generator, so a run repeats).
    fn writeback(&mut self) -> Writeback {
        match self.rng.below(3) {
            0 => Writeback::None,
            _ => Writeback::Random(self.rng.next()),
        }
    }

    /// A random node, or the leader half of the time (when one is known).
    async fn target(&mut self, cluster: &Cluster) -> usize {
        let n = cluster.nodes.len() as u64;
        if self.rng.below(2) == 0 {
            if let Some(l) = cluster.leader().await {
                return l;
            }
        }
        self.rng.below(n) as usize
    }

    async fn inject(&mut self, cluster: &mut Cluster, mesh: &Mesh) -> Option<Active> {
        let fault = *self
            .faults
            .get(self.rng.below(self.faults.len() as u64) as usize)?;
        let n = cluster.nodes.len();
        Some(match fault {
            Fault::Kill if self.rng.below(4) == 0 => {
                // The whole cluster crashes; the old leader comes back first, alone.
                let leader = cluster.leader().await.unwrap_or(0);
                let mut order = vec![leader];
                order.extend((0..n).filter(|&i| i != leader));
                for &i in &order {
                    cluster.kill(i);
                }
                self.note(format!(
                    "kill -9 every node (leader node{} first)",
                    leader + 1
                ));
                Active::KilledAll(order)
            }
            Fault::Kill => {
                let t = self.target(cluster).await;
                cluster.kill(t);
                self.note(format!("kill -9 node{}", t + 1));
                Active::Killed(t)
            }
            Fault::Power if self.rng.below(4) == 0 => {
                let leader = cluster.leader().await.unwrap_or(0);
                let mut order = vec![leader];
                order.extend((0..n).filter(|&i| i != leader));
                let writeback = self.writeback();
                let lost = cut_power(cluster, &self.power, (&order, writeback));
                self.note(format!("power cut on every node ({lost})"));
                Active::KilledAll(order)
            }
            Fault::Power => {
                let t = self.target(cluster).await;
                let writeback = self.writeback();
                let lost = cut_power(cluster, &self.power, (&[t], writeback));
                self.note(format!("power cut on node{} ({lost})", t + 1));
                Active::Killed(t)
            }
            Fault::Member => {
                let t = self.target(cluster).await;
                self.remove(cluster, t).await
            }
            Fault::Disk if self.rng.below(4) == 0 => {
                for p in &self.power {
                    p.fill();
                }
                self.note("fill the disk of every node".into());
                Active::Filled((0..n).collect())
            }
            Fault::Disk => {
                let t = self.target(cluster).await;
                self.power[t].fill();
                self.note(format!("fill the disk of node{}", t + 1));
                Active::Filled(vec![t])
            }
            Fault::Stop => {
                let t = self.target(cluster).await;
                // A node a full disk stopped (still draining when its heal looked) has
                // exited by now: start it again rather than signal a process that is gone.
                if !cluster.is_running(t) || cluster.wait_exit(t, Duration::ZERO).await.is_some() {
                    cluster.spawn(t);
                    self.note(format!("node{} had stopped; restart it", t + 1));
                    return Some(Active::Nothing);
                }
                // A heal restarts a node without waiting for it, and until it serves it has
                // not yet taken over SIGTERM (whose default action would kill it).
                cluster.wait_up(t, Duration::from_secs(30)).await;
                let leader = cluster.leader().await == Some(t);
                cluster.signal(t, "TERM");
                self.note(format!(
                    "SIGTERM node{}{}",
                    t + 1,
                    if leader { " (the leader)" } else { "" }
                ));
                Active::Stopped(t)
            }
            Fault::Pause => {
                let t = self.target(cluster).await;
                cluster.signal(t, "STOP");
                self.note(format!("SIGSTOP node{}", t + 1));
                Active::Paused(t)
            }
            Fault::Partition => {
                let kind = self.rng.below(4);
                let a = self.target(cluster).await;
                let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                let c = (0..n).find(|&x| x != a && x != b).unwrap_or(a);
                let what = match kind {
                    0 => {
                        // A minority (one node of three, one or two of five) cut off from
                        // the majority in both directions.
                        let size = 1 + self.rng.below(((n - 1) / 2) as u64) as usize;
                        let minority: Vec<usize> = (0..size).map(|k| (a + k) % n).collect();
                        for &x in &minority {
                            for y in (0..n).filter(|y| !minority.contains(y)) {
                                mesh.cut_both(x, y);
                            }
                        }
                        let names: Vec<String> =
                            minority.iter().map(|x| format!("node{}", x + 1)).collect();
                        format!("isolate {} (minority) from the majority", names.join("+"))
                    }
                    1 => {
                        // A bridge: a and b cannot talk, the others talk to both.
                        mesh.cut_both(a, b);
                        format!(
                            "bridge: node{} and node{} cut, node{} sees both",
                            a + 1,
                            b + 1,
                            c + 1
                        )
                    }
                    2 => {
                        for x in (0..n).filter(|&x| x != a) {
                            mesh.cut(a, x);
                        }
                        format!(
                            "one-way: node{} cannot reach the others (they still reach it)",
                            a + 1
                        )
                    }
                    _ => {
                        for x in (0..n).filter(|&x| x != a) {
                            mesh.cut(x, a);
                        }
                        format!(
                            "one-way: nobody reaches node{} (it still reaches them)",
                            a + 1
                        )
                    }
                };
                self.note(format!("partition [{}]: {what}", mesh.describe()));
                Active::Partitioned
            }
        })
    }

    async fn heal(&mut self, cluster: &mut Cluster, mesh: &Mesh, active: Active) {
        match active {
            Active::Killed(t) => {
                self.power_on(t);
                cluster.spawn(t);
                self.note(format!("restart node{}", t + 1));
            }
            Active::KilledAll(order) => {
                for &i in &order {
                    self.power_on(i);
                }
                cluster.spawn(order[0]);
                cluster.wait_up(order[0], Duration::from_secs(30)).await;
                for &i in &order[1..] {
                    cluster.spawn(i);
                }
                self.note("restart every node (old leader first)".into());
            }
            Active::Paused(t) => {
                cluster.signal(t, "CONT");
                self.note(format!("SIGCONT node{}", t + 1));
            }
            Active::Stopped(t) => {
                // A node stops within its handover bound (three election timeouts) and its
                // drain; one that does not is a fault of the node, not of the schedule.
                let status = cluster
                    .wait_exit(t, Duration::from_secs(60))
                    .await
                    .unwrap_or_else(|| panic!("node{} did not stop on SIGTERM", t + 1));
                assert!(status.success(), "node{} exited with {status}", t + 1);
                cluster.spawn(t);
                self.note(format!("restart node{} (it stopped cleanly)", t + 1));
            }
            Active::Partitioned => {
                mesh.heal();
                self.note("heal partition".into());
            }
            Active::Removed(t) => {
                cluster.spawn(t);
                self.note(format!(
                    "start node{} with empty data, joining as a voter",
                    t + 1
                ));
            }
            Active::Filled(nodes) => {
                let mut stopped = Vec::new();
                for &t in &nodes {
                    self.power[t].make_room();
                    // It stops on its first write that finds no room; none may have come.
                    if cluster.wait_exit(t, Duration::ZERO).await.is_some() {
                        cluster.spawn(t);
                        stopped.push(format!("node{}", t + 1));
                    }
                }
                let on: Vec<String> = nodes.iter().map(|t| format!("node{}", t + 1)).collect();
                self.note(format!(
                    "make room on {}; restart the stopped ones: [{}]",
                    on.join("+"),
                    stopped.join(", ")
                ));
            }
            Active::Nothing => {}
        }
    }

    /// Remove node `t` through another running node's API, then kill it and delete its
    /// data, and make its config join the cluster when it starts again.
    async fn remove(&mut self, cluster: &mut Cluster, t: usize) -> Active {
        let id = cluster.nodes[t].id;
        let Some(via) = (0..cluster.nodes.len()).find(|&i| i != t && cluster.is_running(i)) else {
            return Active::Nothing;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let removed = loop {
            let r = cluster
                .client
                .delete(format!("{}/cluster/members/{id}", cluster.url(via)))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 || r.status() == 404 => break true,
                _ if Instant::now() > deadline => break false,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        if !removed {
            self.note(format!(
                "remove node{} from the membership: refused, left as is",
                t + 1
            ));
            return Active::Nothing;
        }
        cluster.kill(t);
        let _ = std::fs::remove_dir_all(cluster.data_dir(t));
        if let Some(wal) = self.wal_dirs.get(t) {
            // Left behind, it is another log's WAL to the new data, and the node refuses it.
            let _ = std::fs::remove_dir_all(wal);
        }
        let config = std::fs::read_to_string(&cluster.nodes[t].config).unwrap();
        if !config.starts_with("join = ") {
            // Top-level keys go first: the config ends in tables.
            let join = format!(
                "join = \"127.0.0.1:{}\"\njoin_as = \"voter\"\n",
                cluster.nodes[via].peer_port
            );
            std::fs::write(&cluster.nodes[t].config, format!("{join}{config}")).unwrap();
        }
        self.note(format!(
            "remove node{} from the membership (through node{}), kill it, delete its data",
            t + 1,
            via + 1
        ));
        Active::Removed(t)
    }

    /// Inject faults until `deadline`: a quiet gap, a fault held for a while, heal; repeat.
    pub async fn run(&mut self, cluster: &mut Cluster, mesh: &Mesh, deadline: Instant) -> usize {
        let mut injected = 0;
        if self.faults.is_empty() {
            tokio::time::sleep_until(deadline.into()).await;
            return 0;
        }
        while Instant::now() + Duration::from_secs(2) < deadline {
            let gap = self.rng.millis(1000, 3000);
            tokio::time::sleep(gap).await;
            let Some(active) = self.inject(cluster, mesh).await else {
                break;
            };
            injected += 1;
            let hold = self.rng.millis(1500, 5000);
            let until = (Instant::now() + hold).min(deadline);
            tokio::time::sleep_until(until.into()).await;
            self.heal(cluster, mesh, active).await;
        }
        injected
    }
}

//! A TCP proxy on every node-to-node link, so a partition really stops traffic between two
//! node processes without any flag inside the node. Node A reaches node B only through the
//! link proxy (A, B) (A's `peer_overrides`); clients talk to nodes directly.
//!
//! Cutting a link resets its open connections and black-holes new ones (accepted, never
//! answered) until it heals, like packets dropped by the network: the caller sees timeouts.
//! Links are directed: cutting (A, B) stops A's requests to B, and B's replies to them, but
//! not B's own requests to A.

use std::collections::HashMap;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Mesh {
    cut: HashMap<(usize, usize), watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Pre-chosen listening ports for every directed link among `n` nodes.
pub fn link_ports(n: usize, mut alloc: impl FnMut() -> u16) -> HashMap<(usize, usize), u16> {
    let mut ports = HashMap::new();
    for a in 0..n {
        for b in 0..n {
            if a != b {
                ports.insert((a, b), alloc());
            }
        }
    }
    ports
}

async fn serve_link(listener: TcpListener, target: u16, cut: watch::Receiver<bool>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let mut cut = cut.clone();
        tokio::spawn(async move {
            if *cut.borrow() {
                // Black hole: hold the connection, say nothing, drop it on heal.
                let _ = cut.wait_for(|c| !*c).await;
                return;
            }
            let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            tokio::select! {
                _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut.wait_for(|c| *c) => {} // partition: drop both ends
            }
        });
    }
}

impl Mesh {
    /// Start the proxies: link (a, b) listens on `ports[(a, b)]` and forwards to
    /// `node_ports[b]` (node b's peer listener).
    pub async fn start(ports: HashMap<(usize, usize), u16>, node_ports: &[u16]) -> Mesh {
        let mut cut = HashMap::new();
        let mut tasks = Vec::new();
        for (&(a, b), &port) in &ports {
            let listener = TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap_or_else(|e| panic!("link proxy {a}->{b} on {port}: {e}"));
            let (tx, rx) = watch::channel(false);
            cut.insert((a, b), tx);
            tasks.push(tokio::spawn(serve_link(listener, node_ports[b], rx)));
        }
        Mesh { cut, tasks }
    }

    /// Stop traffic from `from` to `to`.
    pub fn cut(&self, from: usize, to: usize) {
        let _ = self.cut[&(from, to)].send(true);
    }

    /// Cut both directions between `a` and `b`.
    pub fn cut_both(&self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Cut `node` off from every other node.
    pub fn heal(&self) {
        for tx in self.cut.values() {
            let _ = tx.send(false);
        }
    }

    /// Which directed links are cut now, for the log.
    pub fn describe(&self) -> String {
        let mut cut: Vec<String> = self
            .cut
            .iter()
            .filter(|(_, tx)| *tx.borrow())
            .map(|((a, b), _)| format!("{}->{}", a + 1, b + 1))
            .collect();
        cut.sort();
        cut.join(" ")
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

//! `BENCH_PEER_DELAY_MS`: a proxy on every node-to-node link that holds each chunk of bytes
//! for a fixed time before passing it on, so a benchmark on loopback sees the round trips of
//! nodes on separate machines (and a cluster whose rounds are bound by latency, not CPU).
//! A cookie-crud node reaches another through a proxy of its own for that link (its
//! `peer_overrides`); an etcd member reaches another through the proxy in front of that one
//! (its advertised peer URL). Either way every message between two nodes is held once on its
//! way; clients talk to the nodes directly. tokio's timers tick in milliseconds, so the
//! delay is whole milliseconds, and a chunk waits up to one more for the tick.

use std::time::Duration;

use tokio::net::TcpListener;

// Shared with the tests' proxies.
#[path = "../../tests/common/held.rs"]
mod held;
use held::forward;

/// The delay `BENCH_PEER_DELAY_MS` asks for, if any.
pub fn configured() -> Option<Duration> {
    let ms: u64 = super::env_num("BENCH_PEER_DELAY_MS", 0);
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// A proxy to `target` (a loopback port) that holds every chunk `delay`: the port it
/// listens on.
pub async fn front(target: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve(listener, target, delay));
    port
}

/// Forward every connection to `listener` to `target`, each direction delayed by `delay`.
async fn serve(listener: TcpListener, target: u16, delay: Duration) {
    while let Ok((inbound, _)) = listener.accept().await {
        tokio::spawn(forward(inbound, target, delay, delay));
    }
}

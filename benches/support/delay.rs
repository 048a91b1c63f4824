//! `BENCH_PEER_DELAY_MS`: a proxy on every node-to-node link that holds each chunk of bytes
//! for a fixed time before passing it on, so a benchmark on loopback sees the round trips of
//! nodes on separate machines (and a cluster whose rounds are bound by latency, not CPU).
//! A cookie-crud node reaches another through a proxy of its own for that link (its
//! `peer_overrides`); an etcd member reaches another through the proxy in front of that one
//! (its advertised peer URL). Either way every message between two nodes is held once on its
//! way; clients talk to the nodes directly. tokio's timers tick in milliseconds, so the
//! delay is whole milliseconds, and a chunk waits up to one more for the tick.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

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
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::join!(pipe(ir, ow, delay), pipe(or, iw, delay));
        });
    }
}

/// One direction: chunks read now are written `delay` later, in order.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    tokio::join!(reader, writer);
}

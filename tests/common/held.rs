//! One direction of a proxied TCP connection, every chunk held a fixed time: the delaying
//! proxies of the tests (`tests/replication.rs`) and of the benchmarks
//! (`benches/support/delay.rs`, which includes this file).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What is read from `from` now is written to `to` `delay` later, in order; `to` is shut
/// down once `from` ends.
pub async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
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
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

/// Connect `inbound` to `target` (a loopback port): its requests reach `target` `there`
/// late, the answers come back `back` late. Returns once both directions end.
pub async fn forward(inbound: TcpStream, target: u16, there: Duration, back: Duration) {
    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    tokio::join!(pipe(ir, ow, there), pipe(or, iw, back));
}

//! One HTTP/1.1 connection to one peer, driven by the task that sends on it.
//!
//! openraft calls a peer's RPCs one at a time, from one task per peer (its replication
//! stream, or an election's vote). Through reqwest each call went from that task to the
//! pool's connection task and back: two more task wake-ups per RPC, often a parked worker
//! thread's, and a URL parsed, a pool looked up and a connection checked out every time.
//! A `Link` keeps the connection itself and polls hyper's connection future beside the
//! request (`select!`), so the request, its response and the connection's I/O all run in
//! the caller's task.
//!
//! A connection is used for one exchange at a time and only after the last one finished:
//! a call that was cancelled (its future dropped mid-exchange) leaves the connection marked
//! busy, and the next call opens a new one rather than risk reading the old call's answer
//! as its own. (hyper's dispatcher discards a cancelled request's answer by itself, so
//! the test of this passes without the mark too; the mark keeps it from resting on that.)
//! Any error drops the connection too. A request that fails on a reused connection
//! before any answer arrived (the peer closed it while idle) is sent once more on a fresh
//! one: Raft's RPCs may be repeated.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use sync_wrapper::SyncWrapper;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::capped::Capped;

/// How long a connection may take to open before the peer counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No connection could be made: the peer is down or not listening (nothing was sent).
    #[error("cannot connect to {addr}: {why}")]
    Connect { addr: String, why: String },
    /// The connection broke, the answer was too long, or the time ran out.
    #[error("{0}")]
    Failed(String),
}

/// A request to send: `body` POSTed to `path` with `headers`, its answer read up to
/// `limit` bytes.
pub struct Post<'a> {
    pub path: &'a str,
    pub headers: &'a [(HeaderName, HeaderValue)],
    pub body: Bytes,
    pub limit: usize,
}

/// An answer: its status, headers and body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// `SyncWrapper`: openraft needs its network `Sync`; the future is only ever used through
/// `&mut`, which is what the wrapper allows.
type Driver = SyncWrapper<Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>>;

struct Open {
    send: SendRequest<Full<Bytes>>,
    /// hyper's connection future: it does the socket's reads and writes when polled.
    driver: Driver,
    /// An exchange began and has not finished: a cancelled call leaves this set.
    busy: bool,
    /// At least one exchange finished on it (a failure then may be an idle close).
    reused: bool,
    /// hyper's connection future has completed: it must not be polled again.
    ended: bool,
}

/// A connection to `addr`, opened on first use and again after any failure.
pub struct Link {
    addr: String,
    host: HeaderValue,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    open: Option<Open>,
}

/// The name a peer that dials `addr` (`host:port`) checks the server's certificate
/// against: the host, without an IPv6 address's brackets. A node checks its own peer
/// certificate against the name of its own address with this too.
pub fn server_name(
    addr: &str,
) -> Result<rustls::pki_types::ServerName<'static>, rustls::pki_types::InvalidDnsNameError> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_owned())
}

impl Link {
    /// A link to `addr` (`host:port`), over TLS with `tls` (the server's certificate must
    /// name the host, as it must for reqwest). Nothing connects until the first request.
    pub fn new(addr: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Self, LinkError> {
        let bad = |why: String| LinkError::Failed(format!("peer address {addr:?}: {why}"));
        let host = HeaderValue::from_str(addr).map_err(|e| bad(e.to_string()))?;
        let tls = match tls {
            None => None,
            Some(config) => {
                let name = server_name(addr).map_err(|e| bad(e.to_string()))?;
                let mut config = (*config).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(Link {
            addr: addr.to_owned(),
            host,
            tls,
            open: None,
        })
    }

    /// Send `post`; its answer within `timeout` (connecting included).
    pub async fn post(&mut self, post: &Post<'_>, timeout: Duration) -> Result<Answer, LinkError> {
        let deadline = Instant::now() + timeout;
        let attempt = tokio::time::timeout_at(deadline, self.exchange(post));
        let result = match attempt.await {
            Ok(Err(Retry::Again(_))) => {
                // The peer closed a connection we had kept: once more on a new one.
                let again = self.exchange(post);
                match tokio::time::timeout_at(deadline, again).await {
                    Ok(r) => r.map_err(Retry::into_error),
                    Err(_) => Err(self.timed_out(timeout)),
                }
            }
            Ok(r) => r.map_err(Retry::into_error),
            Err(_) => Err(self.timed_out(timeout)),
        };
        if result.is_err() {
            self.open = None;
        }
        result
    }

    fn timed_out(&self, timeout: Duration) -> LinkError {
        LinkError::Failed(format!("no answer from {} within {timeout:?}", self.addr))
    }

    async fn exchange(&mut self, post: &Post<'_>) -> Result<Answer, Retry> {
        let Post {
            path,
            headers,
            ref body,
            limit,
        } = *post;
        if self.open.as_mut().is_none_or(|o| o.busy || o.driver_done()) {
            self.open = None;
            self.open = Some(self.connect().await.map_err(Retry::Not)?);
        }
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_LENGTH, body.len())
            .body(Full::new(body.clone()))
            .map_err(|e| Retry::Not(LinkError::Failed(e.to_string())))?;
        req.headers_mut().extend(headers.iter().cloned());

        let open = self.open.as_mut().expect("connected above");
        open.busy = true;
        let reused = open.reused;
        let Open {
            send,
            driver,
            ended,
            ..
        } = open;
        let outcome = {
            let call = async {
                send.ready().await.map_err(|e| (false, e.to_string()))?;
                let resp = send
                    .send_request(req)
                    .await
                    .map_err(|e| (false, e.to_string()))?;
                let (parts, body) = resp.into_parts();
                let body = collect(body, limit).await.map_err(|e| (true, e))?;
                Ok::<_, (bool, String)>(Answer {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                })
            };
            tokio::pin!(call);
            tokio::select! {
                biased;
                r = &mut call => r,
                _ = driver.get_mut() => {
                    // The connection ended (the peer closed it, or it broke), possibly right
                    // after the answer arrived: the call now completes at once either way, as
                    // its answer or as an error, with nothing left to wait on.
                    *ended = true;
                    call.await
                }
            }
        };
        match outcome {
            Ok(answer) => {
                let open = self.open.as_mut().expect("still open");
                open.busy = false;
                open.reused = true;
                if open.ended {
                    self.open = None;
                }
                Ok(answer)
            }
            Err((answered, why)) => {
                self.open = None;
                let err = LinkError::Failed(format!("{}{path}: {why}", self.addr));
                // Only a kept connection that broke before any answer is worth a retry.
                Err(if reused && !answered {
                    Retry::Again(err)
                } else {
                    Retry::Not(err)
                })
            }
        }
    }

    async fn connect(&self) -> Result<Open, LinkError> {
        let refused = |why: String| LinkError::Connect {
            addr: self.addr.clone(),
            why,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| refused(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| refused(e.to_string()))?;
        // One small request waits for one small answer: never for Nagle.
        tcp.set_nodelay(true).map_err(|e| refused(e.to_string()))?;
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| {
                            refused(format!("no TLS handshake within {CONNECT_TIMEOUT:?}"))
                        })?
                        .map_err(|e| refused(format!("TLS: {e}")))?;
                handshake(TokioIo::new(tls)).await
            }
        }
    }
}

impl Link {
    /// Whether the link holds an open connection with no exchange left on it: worth
    /// keeping for the next caller. A cancelled call's connection (busy) or one the peer
    /// closed is not.
    fn reusable(&mut self) -> bool {
        self.open
            .as_mut()
            .is_some_and(|o| !o.busy && !o.driver_done())
    }
}

/// How many idle links are kept per peer address. A leader's quorum checks hold one link per
/// voter while a round is out, and rounds overlap only when one outlives its successor's
/// start, so a few cover it; more would hold sockets a burst opened and never needs again.
const IDLE_PER_PEER: usize = 4;

/// A link left idle, and when.
type Kept = (Instant, Link);

/// How long an idle link is kept (reqwest's pool kept its connections 30 s too).
const IDLE_FOR: Duration = Duration::from_secs(30);

/// Links whose last caller is done with them, by peer address, for the next caller to the
/// same address. openraft makes a new network client for every election and every quorum
/// check (each round of linearizable reads, `Raft::get_read_log_id`): without these, each
/// of them would open, and for TLS peers handshake, a connection per voter and close it
/// again. Cloning shares the same links.
#[derive(Clone, Default)]
pub struct Idle {
    links: Arc<std::sync::Mutex<HashMap<String, Vec<Kept>>>>,
}

impl Idle {
    /// A kept link to `addr`, if one is idle (the most recently kept first).
    pub fn take(&self, addr: &str) -> Option<Link> {
        let mut links = self.links.lock().expect("not poisoned");
        let kept = links.get_mut(addr)?;
        let link = kept.pop().map(|(_, link)| link);
        if kept.is_empty() {
            links.remove(addr);
        }
        link
    }

    /// Keep `link` for the next caller to its address, if its connection can be reused;
    /// links idle for longer than `IDLE_FOR`, and the oldest beyond `IDLE_PER_PEER` per
    /// address, are closed.
    pub fn keep(&self, mut link: Link) {
        if !link.reusable() {
            return;
        }
        let now = Instant::now();
        let mut links = self.links.lock().expect("not poisoned");
        links.retain(|_, kept| {
            kept.retain(|(at, _)| now.duration_since(*at) < IDLE_FOR);
            !kept.is_empty()
        });
        let kept = links.entry(link.addr.clone()).or_default();
        if kept.len() == IDLE_PER_PEER {
            kept.remove(0);
        }
        kept.push((now, link));
    }
}

impl Open {
    /// Whether hyper's connection has ended (the peer closed it while it sat idle): polled
    /// once, without waiting.
    fn driver_done(&mut self) -> bool {
        if self.ended {
            return true;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        self.driver.get_mut().as_mut().poll(&mut cx).is_ready()
    }
}

/// The outcome of one attempt: a failure that a fresh connection may cure, or not.
enum Retry {
    Again(LinkError),
    Not(LinkError),
}

impl Retry {
    fn into_error(self) -> LinkError {
        match self {
            Retry::Again(e) | Retry::Not(e) => e,
        }
    }
}

async fn handshake<T>(io: TokioIo<T>) -> Result<Open, LinkError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| LinkError::Failed(e.to_string()))?;
    Ok(Open {
        send,
        driver: SyncWrapper::new(Box::pin(conn)),
        busy: false,
        reused: false,
        ended: false,
    })
}

/// A body's bytes, refused once they pass `limit`.
async fn collect(mut body: hyper::body::Incoming, limit: usize) -> Result<Bytes, String> {
    use hyper::body::Body as _;
    let mut out = Capped::new(body.size_hint().lower(), limit).map_err(|e| e.to_string())?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            out.push(&data).map_err(|e| e.to_string())?;
        }
    }
    Ok(out.into_bytes().into())
}

/// A peer for tests, here and in `network`: it speaks just enough HTTP/1.1 to answer.
#[cfg(test)]
pub(crate) mod test_peer {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Read one request's head and body; its path, or None at the end of the stream.
    async fn read_request(sock: &mut TcpStream) -> Option<String> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if sock.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).ok()?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        sock.read_exact(&mut body).await.ok()?;
        Some(head.split_whitespace().nth(1)?.to_owned())
    }

    /// The body a peer answers a request for a path with.
    pub type Answer = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

    /// A peer that answers each request 200 with `answer`'s body, `/slow` after 300 ms;
    /// with `close_after_one`, it closes each connection after its first answer (as an
    /// idle timeout would, without saying so). Its address and a count of connections.
    pub async fn serve(answer: Answer, close_after_one: bool) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    while let Some(path) = read_request(&mut sock).await {
                        if path == "/slow" {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        let body = answer(&path);
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        if sock.write_all(head.as_bytes()).await.is_err()
                            || sock.write_all(&body).await.is_err()
                            || close_after_one
                        {
                            return;
                        }
                    }
                });
            }
        });
        (addr, conns)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;

    use super::*;

    async fn echo_peer(close_after_one: bool) -> (String, Arc<AtomicUsize>) {
        test_peer::serve(
            Arc::new(|path: &str| path.as_bytes().to_vec()),
            close_after_one,
        )
        .await
    }

    async fn post(link: &mut Link, path: &str) -> Result<String, LinkError> {
        let req = Post {
            path,
            headers: &[],
            body: Bytes::from_static(b"x"),
            limit: 1024,
        };
        let answer = link.post(&req, Duration::from_secs(5)).await?;
        assert_eq!(answer.status, StatusCode::OK);
        Ok(String::from_utf8(answer.body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn answers_come_back_on_one_kept_connection() {
        let (addr, conns) = echo_peer(false).await;
        let mut link = Link::new(&addr, None).unwrap();
        for i in 0..20 {
            assert_eq!(
                post(&mut link, &format!("/r{i}")).await.unwrap(),
                format!("/r{i}")
            );
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    /// A call dropped mid-exchange (openraft cancels an RPC when its stream ends) must not
    /// leave its answer on the connection for the next call to read as its own.
    #[tokio::test]
    async fn a_cancelled_call_never_hands_its_answer_to_the_next() {
        let (addr, conns) = echo_peer(false).await;
        let mut link = Link::new(&addr, None).unwrap();
        assert_eq!(post(&mut link, "/first").await.unwrap(), "/first");
        let cancelled = tokio::time::timeout(Duration::from_millis(50), post(&mut link, "/slow"));
        assert!(cancelled.await.is_err(), "the slow call was still waiting");
        assert_eq!(post(&mut link, "/next").await.unwrap(), "/next");
        assert_eq!(
            conns.load(Ordering::SeqCst),
            2,
            "the busy connection was replaced"
        );
    }

    /// A peer that closed a kept connection (idle timeout, restart) costs no failed RPC.
    #[tokio::test]
    async fn a_connection_the_peer_closed_is_replaced_without_a_failure() {
        let (addr, conns) = echo_peer(true).await;
        let mut link = Link::new(&addr, None).unwrap();
        for i in 0..5 {
            assert_eq!(
                post(&mut link, &format!("/r{i}")).await.unwrap(),
                format!("/r{i}")
            );
        }
        assert_eq!(conns.load(Ordering::SeqCst), 5);
    }

    /// A link kept in `Idle` serves the next caller on its connection; a cancelled call's
    /// link is not kept, and neither is one that never connected.
    #[tokio::test]
    async fn idle_links_are_handed_on_unless_their_call_was_cancelled() {
        let (addr, conns) = echo_peer(false).await;
        let idle = Idle::default();
        for i in 0..5 {
            let mut link = idle
                .take(&addr)
                .unwrap_or_else(|| Link::new(&addr, None).unwrap());
            assert_eq!(
                post(&mut link, &format!("/r{i}")).await.unwrap(),
                format!("/r{i}")
            );
            idle.keep(link);
        }
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "one connection for five callers"
        );

        let mut link = idle.take(&addr).expect("kept");
        let cancelled = tokio::time::timeout(Duration::from_millis(50), post(&mut link, "/slow"));
        assert!(cancelled.await.is_err(), "the slow call was still waiting");
        idle.keep(link);
        assert!(idle.take(&addr).is_none(), "a busy connection is not kept");
        idle.keep(Link::new(&addr, None).unwrap());
        assert!(
            idle.take(&addr).is_none(),
            "nothing to keep without a connection"
        );
    }

    /// At most `IDLE_PER_PEER` links are kept per address; the oldest go first.
    #[tokio::test]
    async fn idle_links_are_bounded_per_peer() {
        let (addr, conns) = echo_peer(false).await;
        let idle = Idle::default();
        let mut links = Vec::new();
        for _ in 0..IDLE_PER_PEER + 2 {
            let mut link = Link::new(&addr, None).unwrap();
            post(&mut link, "/a").await.unwrap();
            links.push(link);
        }
        for link in links {
            idle.keep(link);
        }
        let mut kept = 0;
        while let Some(mut link) = idle.take(&addr) {
            post(&mut link, "/b").await.unwrap();
            kept += 1;
        }
        assert_eq!(kept, IDLE_PER_PEER);
        assert_eq!(
            conns.load(Ordering::SeqCst),
            IDLE_PER_PEER + 2,
            "no new connection"
        );
    }

    #[tokio::test]
    async fn a_peer_that_is_not_listening_is_a_connect_error() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().to_string()
        };
        let mut link = Link::new(&addr, None).unwrap();
        match post(&mut link, "/a").await {
            Err(LinkError::Connect { .. }) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    /// Its own time limit ends a call the peer does not answer, as a failure that drops
    /// the connection.
    #[tokio::test]
    async fn a_call_without_an_answer_in_time_fails_and_the_next_one_works() {
        let (addr, conns) = echo_peer(false).await;
        let mut link = Link::new(&addr, None).unwrap();
        let req = Post {
            path: "/slow",
            headers: &[],
            body: Bytes::new(),
            limit: 1024,
        };
        let slow = link.post(&req, Duration::from_millis(50)).await;
        assert!(
            matches!(slow, Err(LinkError::Failed(_))),
            "{:?}",
            slow.map(|_| ())
        );
        assert_eq!(post(&mut link, "/next").await.unwrap(), "/next");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }
}

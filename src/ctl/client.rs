//! The HTTP client `cookie-crud ctl` talks to a cluster with: a list of endpoints tried in
//! turn, a token, a deadline.
//!
//! A request goes to the first endpoint; one that cannot be reached, or answers 503 (no
//! leader yet, or shutting down), sends it to the next, round and round until the deadline.
//! Retrying a write is safe because every write carries an `Idempotency-Key` (the caller's,
//! or a random one made once per command): a retry of a write that was applied is answered
//! as a replay, never applied twice (api.md section 11). A membership change carries no key:
//! once a node has answered it, whatever the answer, it is not sent again
//! ([`Call::answered_once`]). Giving up, the command reports the last answer a node gave
//! (its status and error), not a later timeout that says less.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::tls::Tls;

/// Where and how to reach the cluster.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoints: Vec<String>,
    pub token: Option<String>,
    pub cacert: Option<std::path::PathBuf>,
    pub timeout: Duration,
}

/// An answer from a node.
#[derive(Debug)]
pub struct Answer {
    pub endpoint: String,
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Result<serde_json::Value, CtlError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            CtlError::Failed(format!(
                "{} answered {} that is not JSON: {e}",
                self.endpoint, self.status
            ))
        })
    }
}

/// Why a command failed; each kind has its exit code (see `super`'s documentation).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No endpoint could be reached, or a node failed (5xx), or something local failed.
    #[error("{0}")]
    Failed(String),
    /// The request was refused as bad (4xx other than the ones below), or the command line.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    /// 409 or 412: a conflicting change or a failed precondition.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Failed(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::NotFound(_) => 3,
            CtlError::Conflict(_) => 4,
            CtlError::Unauthorized(_) => 5,
        }
    }

    /// The error a non-success answer stands for.
    pub fn from_answer(a: &Answer) -> CtlError {
        let body = String::from_utf8_lossy(&a.body);
        let msg = format!("{} answered {}: {}", a.endpoint, a.status, body.trim());
        match a.status.as_u16() {
            404 => CtlError::NotFound(msg),
            409 | 412 => CtlError::Conflict(msg),
            401 | 403 => CtlError::Unauthorized(msg),
            s if (400..500).contains(&s) => CtlError::Usage(msg),
            _ => CtlError::Failed(msg),
        }
    }
}

/// "host:port" becomes a URL: https when a CA is given, http otherwise.
pub fn normalize(endpoint: &str, tls: bool) -> String {
    let e = endpoint.trim().trim_end_matches('/');
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_owned()
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    }
}

pub struct Client {
    http: reqwest::Client,
    pub target: Target,
}

/// A request: method, path (with query), JSON body, extra headers.
pub struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    pub body: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, String)>,
    /// The first answer is final, 503 included: the request is sent to another endpoint
    /// only when none answered it.
    pub once: bool,
}

impl<'a> Call<'a> {
    pub fn get(path: &'a str) -> Self {
        Call {
            method: Method::GET,
            path,
            body: None,
            headers: Vec::new(),
            once: false,
        }
    }

    pub fn new(method: Method, path: &'a str) -> Self {
        Call {
            method,
            ..Call::get(path)
        }
    }

    pub fn json(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }

    pub fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Not sent again once a node has answered (a membership change: it has no idempotency
    /// key, and a 503 such as "node 4 does not answer at its peer address" is the answer).
    pub fn answered_once(mut self) -> Self {
        self.once = true;
        self
    }
}

impl Client {
    pub fn new(target: Target) -> Result<Client, CtlError> {
        if target.endpoints.is_empty() {
            return Err(CtlError::Usage("no endpoints given".into()));
        }
        // A token that cannot go in a header failed every request as a builder error,
        // which was taken for an unreachable node and retried until `--timeout` (found in
        // review). It is the caller's mistake: said at once, never printed.
        if let Some(t) = &target.token {
            if reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).is_err() {
                return Err(CtlError::Usage(
                    "the token holds characters an HTTP header cannot carry (a newline or \
                     other control character?)"
                        .into(),
                ));
            }
        }
        cookie_raft::network::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            // Idle pooled connections go before a node's header timeout closes them.
            .pool_idle_timeout(Duration::from_millis(250));
        if let Some(ca) = &target.cacert {
            let tls = Tls::trusting(ca).map_err(|e| CtlError::Usage(e.to_string()))?;
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder
            .build()
            .map_err(|e| CtlError::Failed(e.to_string()))?;
        Ok(Client { http, target })
    }

    /// A request to `url` with the token, if any.
    pub fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.target.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// The request on one endpoint, once, within the whole `--timeout`.
    pub async fn once(&self, endpoint: &str, call: &Call<'_>) -> Result<Answer, reqwest::Error> {
        self.once_within(endpoint, call, self.target.timeout).await
    }

    /// The request on one endpoint, once, within `limit`.
    async fn once_within(
        &self,
        endpoint: &str,
        call: &Call<'_>,
        limit: Duration,
    ) -> Result<Answer, reqwest::Error> {
        let mut req = self
            .request(call.method.clone(), &format!("{endpoint}{}", call.path))
            .timeout(limit);
        if let Some(b) = &call.body {
            req = req
                .header("content-type", "application/json")
                .body(b.clone());
        }
        for (k, v) in &call.headers {
            req = req.header(*k, v);
        }
        let r = req.send().await?;
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.bytes().await?.to_vec();
        Ok(Answer {
            endpoint: endpoint.to_owned(),
            status,
            headers,
            body,
        })
    }

    /// The request on the endpoints in turn until one answers with something other than
    /// 503 (any answer, for a call [`Call::answered_once`]), or the deadline passes. Any
    /// answer (2xx or not) is returned; at the deadline, the last 503 a node gave, if any:
    /// only a cluster none of whose nodes answered is an error.
    ///
    /// A request that may be sent again (a read, or a write with its idempotency key) gets a
    /// share of `--timeout` on each endpoint (`attempt_limit`): one node that accepts the
    /// connection and never answers (stopped, say) took the whole of it, and the others
    /// were never asked. A membership change, which carries no key, keeps the whole.
    pub async fn send(&self, call: Call<'_>) -> Result<Answer, CtlError> {
        let deadline = tokio::time::Instant::now() + self.target.timeout;
        let shared =
            call.method == Method::GET || call.headers.iter().any(|(k, _)| *k == "idempotency-key");
        let mut last_answer: Option<Answer> = None;
        for round in 0u32.. {
            for endpoint in &self.target.endpoints {
                let expired = || tokio::time::Instant::now() >= deadline;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let limit = if shared {
                    attempt_limit(self.target.timeout, self.target.endpoints.len(), left)
                } else {
                    left.max(Duration::from_millis(1))
                };
                match self.once_within(endpoint, &call, limit).await {
                    // No leader yet, or a node shutting down: another node, or later.
                    Ok(a)
                        if a.status == StatusCode::SERVICE_UNAVAILABLE
                            && !call.once
                            && !expired() =>
                    {
                        last_answer = Some(a);
                    }
                    Ok(a) => return Ok(a),
                    // What a node said is worth more than a timeout on the last try.
                    Err(_) if expired() && last_answer.is_some() => {
                        return Ok(last_answer.take().expect("checked"));
                    }
                    Err(e) if expired() => {
                        return Err(CtlError::Failed(format!(
                            "gave up: {endpoint}: {}",
                            describe(&e)
                        )))
                    }
                    Err(_) => {}
                }
            }
            let pause = Duration::from_millis(100 * u64::from(round.min(5) + 1));
            tokio::time::sleep(pause).await;
        }
        unreachable!("the loop returns")
    }

    /// `send`, and anything but 2xx as the error it stands for.
    pub async fn ok(&self, call: Call<'_>) -> Result<Answer, CtlError> {
        let a = self.send(call).await?;
        if a.status.is_success() {
            Ok(a)
        } else {
            Err(CtlError::from_answer(&a))
        }
    }
}

/// The shortest time one attempt of a request that may be sent again is given (below it, a
/// slow but healthy answer would be cut off).
const MIN_ATTEMPT: Duration = Duration::from_secs(2);

/// How long one attempt on one of `endpoints` may take, `left` of `timeout` in all: an
/// equal share of `timeout`, at least [`MIN_ATTEMPT`], and never past the deadline.
fn attempt_limit(timeout: Duration, endpoints: usize, left: Duration) -> Duration {
    let share = timeout / u32::try_from(endpoints.max(1)).unwrap_or(u32::MAX);
    share
        .max(MIN_ATTEMPT)
        .min(left)
        .max(Duration::from_millis(1))
}

/// reqwest's error with its causes (its own message alone says little: "error sending request").
pub fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// A random idempotency key for one command, so its retries are safe.
pub fn random_key() -> String {
    let v = cookie_raft::identity::random_id().unwrap_or(0);
    format!("ctl-{v:016x}")
}

/// Read a JSON argument: inline, `@FILE`, or `-` for standard input.
pub fn json_arg(arg: &str) -> Result<Vec<u8>, CtlError> {
    let bytes = match arg {
        "-" => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                .map_err(|e| CtlError::Usage(format!("standard input: {e}")))?;
            v
        }
        a if a.starts_with('@') => std::fs::read(Path::new(&a[1..]))
            .map_err(|e| CtlError::Usage(format!("{}: {e}", &a[1..])))?,
        a => a.as_bytes().to_vec(),
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| CtlError::Usage(format!("not JSON: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_gets_a_share_of_the_timeout() {
        let s = Duration::from_secs;
        // One endpoint: the whole of it.
        assert_eq!(attempt_limit(s(10), 1, s(10)), s(10));
        // Three: a third each, then what is left.
        assert_eq!(attempt_limit(s(9), 3, s(9)), s(3));
        assert_eq!(attempt_limit(s(9), 3, s(1)), s(1));
        // Never under MIN_ATTEMPT while there is time, never past the deadline.
        assert_eq!(attempt_limit(s(10), 10, s(10)), MIN_ATTEMPT);
        assert_eq!(attempt_limit(s(1), 1, s(1)), s(1));
        assert!(attempt_limit(s(10), 3, Duration::ZERO) > Duration::ZERO);
    }
}

//! What the API reads from a request besides its JSON body: the path id, `?consistency=`,
//! `?limit=&after=` or `&cursor=`, `If-Match`, the content type, and the body itself within its limit.
//! Each refusal is the contract's 400 (or 413) with its message.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderMap};

use cookie_raft::sm::{Cursor, PageStart};

use super::error::ApiError;

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Local,
}

/// A query's parameters whose names are among `known`, each decoded as a form field (`+` a
/// space, `%XX` a byte); the others are passed over unread. A known one given twice, or
/// whose value is not UTF-8 once decoded, is refused: `form_urlencoded` read `limit=1&limit=2`
/// as its last value and `after=%FF` as the id "\u{FFFD}" (found in review).
fn known_params<'q>(
    query: Option<&'q str>,
    known: &[&'static str],
) -> Result<Vec<(&'static str, Cow<'q, str>)>, ApiError> {
    let mut found: Vec<(&'static str, Cow<'q, str>)> = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let Ok(key) = form_field(raw_key) else {
            continue; // not UTF-8: no name we know
        };
        let Some(&name) = known.iter().find(|&&k| k == key) else {
            continue;
        };
        if found.iter().any(|(k, _)| *k == name) {
            return Err(ApiError::bad_request(format!("{name} is given twice")));
        }
        let value = form_field(raw_value).map_err(|_| {
            ApiError::bad_request(format!("{name} is not UTF-8 once percent-decoded"))
        })?;
        found.push((name, value));
    }
    Ok(found)
}

/// One field of a form-encoded query, decoded strictly.
fn form_field(raw: &str) -> Result<Cow<'_, str>, std::str::Utf8Error> {
    use percent_encoding::percent_decode_str;
    if raw.contains('+') {
        let spaced = raw.replace('+', " ");
        return Ok(Cow::Owned(
            percent_decode_str(&spaced).decode_utf8()?.into_owned(),
        ));
    }
    percent_decode_str(raw).decode_utf8()
}

pub fn consistency(query: Option<&str>) -> Result<Consistency, ApiError> {
    // The usual read has no query, or none that could name it (a name may be
    // percent-encoded: `%63onsistency`).
    let Some(query) = query.filter(|q| q.contains("consistency") || q.contains('%')) else {
        return Ok(Consistency::Linearizable);
    };
    let mut level = Consistency::Linearizable;
    for (_, v) in known_params(Some(query), &["consistency"])? {
        level = match v.as_ref() {
            "linearizable" => Consistency::Linearizable,
            "local" => Consistency::Local,
            _ => {
                return Err(ApiError::bad_request(
                    "consistency must be linearizable or local",
                ))
            }
        };
    }
    Ok(level)
}

pub fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    match path {
        Ok(Path(id)) if !id.is_empty() => Ok(id),
        Ok(_) => Err(ApiError::NotFound),
        Err(_) => Err(ApiError::bad_request("Invalid cookie id in path")),
    }
}

/// Parse `If-Match: "<index>"` (the quotes may be left out). Anything else is 400: a weak
/// `W/` tag (If-Match compares strongly, so it could never match), a sign, leading zeros,
/// unbalanced quotes, a list, or the header given twice. Each of those was read as some
/// version before, and two lines were decided by whichever came first (found in review).
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let mut all = headers.get_all(header::IF_MATCH).iter();
    let Some(raw) = all.next() else {
        return Ok(None);
    };
    let bad = || ApiError::bad_request("If-Match must be one version like \"42\"");
    if all.next().is_some() {
        return Err(bad());
    }
    let s = raw.to_str().unwrap_or("").trim();
    let digits = match s.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').ok_or_else(bad)?,
        None => s,
    };
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return Err(bad());
    }
    digits.parse::<u64>().map(Some).map_err(|_| bad())
}

/// `Idempotency-Key: <1-128 visible ASCII characters>` (api.md section 11), if given.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut all = headers.get_all("idempotency-key").iter();
    let Some(raw) = all.next() else {
        return Ok(None);
    };
    let key = raw.as_bytes();
    // Two lines are one key with a comma and a space in it, which is not a valid key: the
    // second line was ignored, so the request was bound to a key it did not send alone.
    if all.next().is_some() || !cookie_raft::command::valid_idempotency_key(key) {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 128 visible ASCII characters",
        ));
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

pub fn require_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::bad_request("Content-Type header is required"));
    };
    let ct = ct.to_str().unwrap_or("").trim().to_ascii_lowercase();
    if ct.starts_with("application/json") {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "Content-Type must be application/json",
        ))
    }
}

/// How much of an oversized body we read and discard before answering 413, so that a
/// client still sending it reads our reply instead of a connection reset.
const DRAIN_LIMIT: usize = 16 << 20;

/// How many bodies of `max_body_bytes` the node holds while it reads them, at most: the
/// budget of [`BodyRoom`].
pub const BODIES_IN_READING: usize = 64;

/// The bytes of request bodies this node holds while it reads them, for all connections
/// and streams together. Each connection (and each of an HTTP/2 connection's streams) may
/// hold a body of up to `max_body_bytes` until it is complete, and bodies that come slowly
/// or never end held as much memory as connections allowed: 8 HTTP/2 connections took a
/// node to 1.6 GB (found in review). Once the budget is spent, a body that needs more is
/// refused with 503, and the node stays up.
#[derive(Clone)]
pub struct BodyRoom(std::sync::Arc<tokio::sync::Semaphore>);

impl BodyRoom {
    /// Room for [`BODIES_IN_READING`] bodies of `max_body_bytes`.
    pub fn new(max_body_bytes: usize) -> Self {
        let bytes = max_body_bytes
            .saturating_mul(BODIES_IN_READING)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        BodyRoom(std::sync::Arc::new(tokio::sync::Semaphore::new(bytes)))
    }
}

/// Read a request body of at most `limit` bytes, holding room for what it has read in
/// `room` until it is returned.
pub async fn read_body(body: Body, limit: usize, room: &BodyRoom) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            // The router's body timeout ends a body that comes too slowly.
            let timed_out = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<super::body_timeout::BodyTimedOut>())
                || e.to_string().contains("timed out");
            if timed_out {
                ApiError::BodyTimeout
            } else {
                ApiError::bad_request("Could not read request body")
            }
        })?;
        seen += chunk.len();
        if seen <= limit {
            let more = u32::try_from(chunk.len()).map_err(|_| ApiError::PayloadTooLarge)?;
            let permit = room
                .0
                .clone()
                .try_acquire_many_owned(more)
                .map_err(|_| ApiError::Busy("request bodies being read"))?;
            match &mut held {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
            buf.extend_from_slice(&chunk);
        } else if seen > limit + DRAIN_LIMIT {
            break; // give up draining; the connection will be closed
        }
    }
    if seen > limit {
        Err(ApiError::PayloadTooLarge)
    } else {
        Ok(buf)
    }
}

/// Largest page `?limit=` accepts.
pub const MAX_PAGE: usize = 10_000;

/// Where a page starts: `?after=<id>`, `?cursor=<token>` (a page's `next_cursor`), or at
/// the list's first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageFrom {
    First,
    After(String),
    Cursor(Cursor),
}

impl PageFrom {
    pub fn start(&self) -> PageStart<'_> {
        match self {
            PageFrom::First => PageStart::First,
            PageFrom::After(id) => PageStart::After(id),
            PageFrom::Cursor(c) => PageStart::At(c),
        }
    }
}

/// `?limit=N&after=<id>` or `?limit=N&cursor=<token>`: `None` when none is given (the
/// original, unpaged list).
pub fn paging(query: Option<&str>) -> Result<Option<(usize, PageFrom)>, ApiError> {
    let mut limit = None;
    let mut from = None;
    for (k, v) in known_params(query, &["limit", "after", "cursor"])? {
        let start = match k {
            "limit" => {
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n));
                limit = Some(n.ok_or_else(|| {
                    ApiError::bad_request(format!("limit must be an integer from 1 to {MAX_PAGE}"))
                })?);
                continue;
            }
            "after" => PageFrom::After(v.into_owned()),
            "cursor" => PageFrom::Cursor(Cursor::decode(&v).ok_or_else(|| {
                ApiError::bad_request("cursor must be a next_cursor that a page returned")
            })?),
            _ => continue,
        };
        // Two starts could only be told apart by guessing which the client meant.
        if from.replace(start).is_some() {
            return Err(ApiError::bad_request("give one of after and cursor, once"));
        }
    }
    if limit.is_none() && from.is_none() {
        return Ok(None);
    }
    Ok(Some((
        limit.unwrap_or(100),
        from.unwrap_or(PageFrom::First),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn consistency_levels() {
        assert_eq!(consistency(None).unwrap(), Consistency::Linearizable);
        assert_eq!(
            consistency(Some("consistency=local")).unwrap(),
            Consistency::Local
        );
        assert_eq!(
            consistency(Some("x=1&consistency=linearizable")).unwrap(),
            Consistency::Linearizable
        );
        assert!(consistency(Some("consistency=eventual")).is_err());
        assert!(consistency(Some("consistency=local&consistency=linearizable")).is_err());
        assert!(consistency(Some("consistency=%FF")).is_err());
        // Other parameters are not read: `after=%FF` is paging's to refuse.
        assert_eq!(
            consistency(Some("after=%FF&consistency=loc%61l")).unwrap(),
            Consistency::Local
        );
        assert_eq!(
            consistency(Some("x=consistency")).unwrap(),
            Consistency::Linearizable
        );
        // A name may be percent-encoded, like any other.
        assert_eq!(
            consistency(Some("%63onsistency=local")).unwrap(),
            Consistency::Local
        );
        assert!(consistency(Some("%63onsistency=bogus")).is_err());
    }

    #[test]
    fn paging_parameters() {
        assert_eq!(paging(None).unwrap(), None);
        assert_eq!(paging(Some("consistency=local")).unwrap(), None);
        assert_eq!(paging(Some("limit=5")).unwrap(), Some((5, PageFrom::First)));
        assert_eq!(
            paging(Some("after=a%20b")).unwrap(),
            Some((100, PageFrom::After("a b".into())))
        );
        assert_eq!(
            paging(Some("after=a+b%2B%C3%A9&x=%FF")).unwrap(),
            Some((100, PageFrom::After("a b+é".into())))
        );
        let token = "AX_________3aWQtMS0wMDAzNQ";
        let Some((7, PageFrom::Cursor(c))) =
            paging(Some(&format!("limit=7&cursor={token}"))).unwrap()
        else {
            panic!("a cursor")
        };
        assert_eq!(c.encode(), token);
        for bad in [
            "limit=0",
            "limit=-1",
            "limit=x",
            "limit=10001",
            "cursor=",
            "cursor=x",
            "after=a&cursor=AX_________3aWQtMS0wMDAzNQ",
            "after=a&after=b",
            "limit=1&limit=2",
            "after=%FF",
            "after=a%FFb",
        ] {
            assert!(paging(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn idempotency_key_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert(
            "idempotency-key",
            HeaderValue::from_static("order-42/retry"),
        );
        assert_eq!(
            idempotency_key(&h).unwrap().as_deref(),
            Some("order-42/retry")
        );
        for bad in ["", "has space", &"k".repeat(129)] {
            h.insert("idempotency-key", HeaderValue::from_str(bad).unwrap());
            assert!(idempotency_key(&h).is_err(), "{bad:?}");
        }
        h.insert(
            "idempotency-key",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert!(idempotency_key(&h).is_err());
        // Two lines, each a valid key.
        h.insert("idempotency-key", HeaderValue::from_static("d1"));
        h.append("idempotency-key", HeaderValue::from_static("d2"));
        assert!(idempotency_key(&h).is_err());
    }

    #[test]
    fn if_match_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(if_match(&h).unwrap(), None);
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"12\""));
        assert_eq!(if_match(&h).unwrap(), Some(12));
        h.insert(header::IF_MATCH, HeaderValue::from_static("7"));
        assert_eq!(if_match(&h).unwrap(), Some(7));
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"0\""));
        assert_eq!(if_match(&h).unwrap(), Some(0));
        for bad in [
            "*",
            "W/\"7\"",
            "\"+7\"",
            "+7",
            "\"07\"",
            "\"7",
            "7\"",
            "\"\"7\"\"",
            "\"\"",
            "",
            "\"7\", \"8\"",
            "\"99999999999999999999\"",
        ] {
            h.insert(header::IF_MATCH, HeaderValue::from_static(bad));
            assert!(if_match(&h).is_err(), "{bad:?} was taken");
        }
        // Given twice, whatever the order.
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"7\""));
        h.append(header::IF_MATCH, HeaderValue::from_static("\"7\""));
        assert!(if_match(&h).is_err());
    }
}

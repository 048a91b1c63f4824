//! Client authentication and roles (api.md section 12), when `client_tokens` is configured.
//!
//! Every client request then carries `Authorization: Bearer <token>`; the token's role must
//! cover the request: `read` any GET (and HEAD or OPTIONS, which change nothing: the
//! router answers them 405), `write` also POST, PUT and DELETE on `/cookies`,
//! `admin` also `DELETE /cache`, `/cluster` and `/admin/*`. Missing or unknown token: 401
//! `{"error":"Unauthorized"}`; a role without the right: 403 `{"error":"Forbidden"}`.
//! `/health` and `/ready` stay open for probes, and `/` (the status page, which holds no
//! data: its script asks the other endpoints with the token the user gives it). The cluster secret is no client credential:
//! it opens the peer listener only (`peer_gate`), where peers probe each other.
//!
//! Tokens are compared in constant time, every configured token each time, so the time
//! taken says nothing about which token (or how much of one) matched.

use axum::extract::Request;
use axum::http::{header, Method};

use super::error::ApiError;
use super::state::Shared;
use crate::config::{Config, Role};

/// The role a request needs, or `None` for the open probes.
fn needed(method: &Method, path: &str) -> Option<Role> {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if path == "/" || path == "/health" || path == "/ready" {
        return None;
    }
    // Safe methods (RFC 9110, section 9.2.1) change nothing: reading is enough to be told
    // which of them a route serves (a HEAD or OPTIONS that none does is 405 to a read
    // token too, not 403).
    let changes = !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    let admin = under("/cluster") || under("/admin") || (under("/cache") && changes);
    Some(if admin {
        Role::Admin
    } else if under("/cookies") && changes {
        Role::Write
    } else {
        Role::Read
    })
}

/// The role the presented token has: the best of all that match (none match: `None`).
fn role_of(cfg: &Config, presented: &[u8]) -> Option<Role> {
    let mut best = None;
    for t in &cfg.client_tokens {
        if t.token.matches(presented) {
            best = best.max(Some(t.role));
        }
    }
    best
}

/// Check the request's token against its route, before its handler runs (only for requests
/// that matched a route: an unknown path is 404 to everyone); a refusal changes nothing.
pub fn check(state: &Shared, req: &Request) -> Result<(), ApiError> {
    let cfg = &state.cfg;
    if cfg.client_tokens.is_empty() {
        return Ok(());
    }
    let Some(need) = needed(req.method(), req.uri().path()) else {
        return Ok(());
    };
    let presented = bearer(req.headers());
    match presented.and_then(|p| role_of(cfg, p)) {
        None => Err(ApiError::Unauthorized),
        Some(role) if role < need => Err(ApiError::Forbidden),
        Some(_) => Ok(()),
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme's name is
/// case-insensitive (RFC 7235, section 2.1): `bearer` and `BEARER` clients were refused.
/// A request with two such headers carries none that counts: the first alone was read, so
/// a valid token followed by another passed whatever the other said (found in review).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let v = all.next()?.as_bytes();
    if all.next().is_some() {
        return None;
    }
    let (scheme, token) = v.split_at_checked(SCHEME.len())?;
    scheme.eq_ignore_ascii_case(SCHEME).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let with = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            bearer(&h).map(|t| t.to_vec())
        };
        for v in ["Bearer t0k", "bearer t0k", "BEARER t0k"] {
            assert_eq!(with(v), Some(b"t0k".to_vec()), "{v}");
        }
        for v in ["Basic t0k", "Bearer", "Bearert0k", "Bear t0k"] {
            assert_eq!(with(v), None, "{v}");
        }
        assert_eq!(bearer(&axum::http::HeaderMap::new()), None);
        let mut two = axum::http::HeaderMap::new();
        two.append(header::AUTHORIZATION, "Bearer t0k".parse().unwrap());
        two.append(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        assert_eq!(bearer(&two), None);
    }

    #[test]
    fn each_route_needs_the_contracts_role() {
        let cases = [
            (Method::GET, "/health", None),
            (Method::GET, "/ready", None),
            (Method::GET, "/", None),
            (Method::GET, "/cookies", Some(Role::Read)),
            (Method::GET, "/cookies/a", Some(Role::Read)),
            (Method::GET, "/metrics", Some(Role::Read)),
            (Method::GET, "/cache", Some(Role::Read)),
            (Method::POST, "/cookies", Some(Role::Write)),
            (Method::PUT, "/cookies/a", Some(Role::Write)),
            (Method::DELETE, "/cookies/a", Some(Role::Write)),
            (Method::DELETE, "/cache", Some(Role::Admin)),
            // Methods no route serves: safe ones are 405 to a reader, not 403.
            (Method::HEAD, "/cookies", Some(Role::Read)),
            (Method::OPTIONS, "/cookies/a", Some(Role::Read)),
            (Method::HEAD, "/cache", Some(Role::Read)),
            (Method::PATCH, "/cookies/a", Some(Role::Write)),
            (Method::HEAD, "/cluster", Some(Role::Admin)),
            (Method::GET, "/cluster", Some(Role::Admin)),
            (Method::POST, "/cluster/members", Some(Role::Admin)),
            (Method::GET, "/admin/backup", Some(Role::Admin)),
            // Not a prefix match on a longer name.
            (Method::GET, "/clusterx", Some(Role::Read)),
            (Method::GET, "/raftx", Some(Role::Read)),
        ];
        for (method, path, role) in cases {
            assert_eq!(needed(&method, path), role, "{method} {path}");
        }
    }

    #[test]
    fn the_best_matching_role_wins_and_the_cluster_secret_is_no_client_token() {
        let cfg = Config::parse(
            r#"
            cluster_secret = "peer-secret"
            client_tokens = [
              { token = "r", role = "read" },
              { token = "w", role = "write" },
              { token = "w", role = "admin" },
            ]
            "#,
        )
        .unwrap();
        assert_eq!(role_of(&cfg, b"r"), Some(Role::Read));
        assert_eq!(role_of(&cfg, b"w"), Some(Role::Admin));
        assert_eq!(role_of(&cfg, b"peer-secret"), None);
        assert_eq!(role_of(&cfg, b"nope"), None);
        assert_eq!(role_of(&cfg, b""), None);
        assert!(format!("{cfg:?}").contains("Secret(***)"));
        assert!(!format!("{cfg:?}").contains("peer-secret"));
    }
}

//! `GET /`: the status page, one self-contained HTML file (`status.html`: inline CSS and
//! script, no external assets) compiled into the binary. It holds no data: its script polls
//! this node's JSON endpoints (`/cluster`, `/cache`, `/metrics`, `/health`) every second and
//! draws the cluster from them. Open without a client token, like `/health`
//! (`auth::needed`); the page asks for a token when the endpoints want one.
//!
//! The Content-Security-Policy allows nothing but this page's own style and script (by
//! their SHA-256, computed once from the embedded file) and requests to this origin.

use std::sync::LazyLock;

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("status.html");

/// The text between the first `<{tag}>` and the `</{tag}>` after it.
fn inline_block<'a>(html: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    html.split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map_or("", |(body, _)| body)
}

/// Standard base64 with padding (RFC 4648), as CSP hash sources are written.
fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn hash_source(text: &str) -> String {
    format!("'sha256-{}'", base64(&Sha256::digest(text.as_bytes())))
}

/// The page's Content-Security-Policy: its own inline style and script, by hash, and
/// `fetch` to this origin; nothing else (no frames, forms, plugins or other origins).
static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash_source(inline_block(PAGE, "script")),
        hash_source(inline_block(PAGE, "style")),
    )
});

/// `GET /`: the status page.
pub async fn page() -> Response {
    let csp = HeaderValue::from_str(&CSP).expect("the policy is ASCII");
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
        // The form CSP wants: SHA-256 of "abc".
        assert_eq!(
            hash_source("abc"),
            "'sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='"
        );
    }

    #[test]
    fn the_policy_names_the_pages_one_script_and_one_style() {
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert_eq!(PAGE.matches("<style>").count(), 1);
        let script = inline_block(PAGE, "script");
        let style = inline_block(PAGE, "style");
        assert!(script.contains("fetch("), "the script polls");
        assert!(style.contains("table"), "the style is there");
        assert!(CSP.contains(&hash_source(script)));
        assert!(CSP.contains(&hash_source(style)));
        // Nothing is loaded from elsewhere, and no data is put in as markup.
        for banned in [
            "http://",
            "https://",
            "innerHTML",
            "outerHTML",
            "eval(",
            " style=",
        ] {
            assert!(!PAGE.contains(banned), "status.html contains {banned}");
        }
    }
}

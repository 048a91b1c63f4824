//! `GET /openapi.json`: the client API's OpenAPI 3 document (`docs/openapi.yaml`, compiled
//! into the binary and converted to JSON once), for clients, tools, and the Schemathesis
//! fuzz run in `make test` (`scripts/fuzz.sh`).

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;

use super::error::json_bytes;

const YAML: &str = include_str!("../../docs/openapi.yaml");

/// The document as JSON text; the unit test below proves it converts.
static JSON: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
    let doc: serde_json::Value = serde_yaml_ng::from_str(YAML).map_err(|e| e.to_string())?;
    Ok(Bytes::from(doc.to_string()))
});

pub async fn document() -> Response {
    match &*JSON {
        Ok(body) => json_bytes(StatusCode::OK, body.clone()),
        Err(e) => json_bytes(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": format!("openapi.yaml: {e}") }).to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_converts_and_names_every_client_route() {
        let doc: serde_json::Value = serde_json::from_slice(JSON.as_ref().unwrap()).unwrap();
        assert_eq!(doc["openapi"], "3.0.3");
        for path in [
            "/cookies",
            "/cookies/{cookie}",
            "/cache",
            "/health",
            "/ready",
            "/cluster",
            "/metrics",
            "/openapi.json",
            "/",
            "/cluster/members",
            "/cluster/members/{id}",
            "/cluster/members/{id}/promote",
            "/admin/backup",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is not documented");
        }
    }
}

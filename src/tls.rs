//! TLS for both listeners and for outgoing peer calls (rustls, with ring as the crypto
//! provider), built from the `[tls]` config table.
//!
//! - **Clients**: with `tls.cert` and `tls.key`, the client listener speaks HTTPS only.
//! - **Peers**: with `tls.peer_ca`, `tls.peer_cert` and `tls.peer_key`, the peer listener
//!   speaks TLS and requires a client certificate signed by `peer_ca` (mutual TLS), and
//!   every outgoing peer call presents `peer_cert` and trusts only `peer_ca`. The handshake
//!   is then the peer credential (api.md section 9), in place of or beside the cluster
//!   secret. Server names are checked: each certificate must name the address peers dial
//!   (`peer_addr`'s host, an IP or DNS subject alternative name).
//!
//! Files are read once, at start; a missing or unreadable file stops the node with its
//! path and the reason.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::TlsConfig;

/// Why TLS could not be set up, with the file it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tls: {0}")]
pub struct TlsError(String);

fn provider() -> Arc<CryptoProvider> {
    cookie_raft::network::install_crypto_provider();
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if read.is_empty() {
        return Err(TlsError(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(read)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError(format!("{}: {e}", path.display())))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store
            .add(c)
            .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    }
    Ok(Arc::new(store))
}

/// Both listeners speak HTTP/2 and HTTP/1.1 (hyper's auto builder follows ALPN's choice).
fn with_alpn(mut c: ServerConfig) -> Arc<ServerConfig> {
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(c)
}

/// What the node serves and dials with, built from the config.
#[derive(Clone, Default)]
pub struct Tls {
    /// The client listener's server config (HTTPS), when configured.
    pub client_listener: Option<Arc<ServerConfig>>,
    /// The peer listener's server config (mutual TLS), when configured.
    pub peer_listener: Option<Arc<ServerConfig>>,
    /// What outgoing peer calls use (mutual TLS), when configured.
    pub peer_client: Option<Arc<ClientConfig>>,
}

impl Tls {
    pub fn load(cfg: &TlsConfig) -> Result<Tls, TlsError> {
        let mut tls = Tls::default();
        if let (Some(cert), Some(k)) = (&cfg.cert, &cfg.key) {
            let server = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError(e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(certs(cert)?, key(k)?)
                .map_err(|e| TlsError(format!("{} and {}: {e}", cert.display(), k.display())))?;
            tls.client_listener = Some(with_alpn(server));
        }
        if let (Some(ca), Some(cert), Some(k)) = (&cfg.peer_ca, &cfg.peer_cert, &cfg.peer_key) {
            let roots = roots(ca)?;
            let (chain, private) = (certs(cert)?, key(k)?);
            let pair_err =
                |e: rustls::Error| TlsError(format!("{} and {}: {e}", cert.display(), k.display()));
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError(format!("{}: {e}", ca.display())))?;
            let server = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError(e.to_string()))?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), private.clone_key())
                .map_err(pair_err)?;
            tls.peer_listener = Some(with_alpn(server));
            let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError(format!("{}: {e}", ca.display())))?;
            let client = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError(e.to_string()))?
                .with_webpki_verifier(server_verifier)
                .with_client_auth_cert(chain, private)
                .map_err(pair_err)?;
            tls.peer_client = Some(Arc::new(client));
        }
        Ok(tls)
    }

    /// A client config that trusts the CA certificates in `ca` (and checks server names):
    /// what `cookie-crud ctl --cacert` uses against a cluster with a private CA.
    pub fn trusting(ca: &Path) -> Result<ClientConfig, TlsError> {
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth())
    }

    /// A client config that accepts exactly the certificate in `path` (its first), whatever
    /// name it was reached by: what `cookie-crud healthcheck` uses to reach its own node
    /// over loopback, where the certificate names the node's public names, not 127.0.0.1.
    pub fn pinned(path: &Path) -> Result<ClientConfig, TlsError> {
        let pinned = certs(path)?.swap_remove(0);
        let verifier = Pinned {
            cert: pinned,
            provider: provider(),
        };
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth())
    }
}

/// Accepts one certificate, and a handshake signed by its key.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::generate;

    #[test]
    fn generated_files_load_as_both_listeners_and_the_peer_client() {
        let dir = tempfile::tempdir().unwrap();
        let w = generate(dir.path(), 2, &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let (cert, key) = &w.nodes[1];
        let tls = Tls::load(&TlsConfig {
            cert: Some(cert.clone()),
            key: Some(key.clone()),
            peer_ca: Some(w.ca.clone()),
            peer_cert: Some(cert.clone()),
            peer_key: Some(key.clone()),
        })
        .unwrap();
        assert!(tls.client_listener.is_some() && tls.peer_listener.is_some());
        assert!(tls.peer_client.is_some());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never overwritten.
        assert!(generate(dir.path(), 1, &["localhost".into()]).is_err());
        // A key that does not match the certificate is refused at load, naming the files.
        let other = TlsConfig {
            cert: Some(w.nodes[0].0.clone()),
            key: Some(w.nodes[1].1.clone()),
            ..TlsConfig::default()
        };
        assert!(Tls::load(&other).is_err());
        let missing = TlsConfig {
            cert: Some(dir.path().join("nope.pem")),
            key: Some(key.clone()),
            ..TlsConfig::default()
        };
        let e = Tls::load(&missing).err().unwrap().to_string();
        assert!(e.contains("nope.pem"), "{e}");
    }
}

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
//! Files are read and checked at start: a missing or unreadable file, a key that does not
//! match its certificate, a certificate past its dates or a peer certificate `peer_ca` does
//! not accept stops the node with the path and the reason. Certificates and keys renewed in
//! place are then reloaded while the node runs (`files.rs`, [`watch`]); `peer_ca` is read
//! once.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use crate::config::TlsConfig;

mod dates;
mod files;
mod pem;
mod watch;

pub use dates::Dates;
use files::PeerTrust;
pub use files::{KeyFiles, Refresh};
pub use pem::TlsError;
use pem::{certs, roots};
pub use watch::watch;

fn provider() -> Arc<CryptoProvider> {
    cookie_raft::network::install_crypto_provider();
    Arc::new(rustls::crypto::ring::default_provider())
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
    /// The certificates above, as files to reload when renewed ([`watch`]).
    pub files: Vec<Arc<KeyFiles>>,
    /// What was found at load that does not stop the node, for its log.
    pub warnings: Vec<String>,
}

/// The name peers check this node's certificate against when they dial `addr`; none for
/// an unspecified address (`0.0.0.0`, a listen address standing in for the real one).
fn dialed_name(addr: &str) -> Option<ServerName<'static>> {
    let name = cookie_raft::link::server_name(addr).ok()?;
    match &name {
        ServerName::IpAddress(ip) if std::net::IpAddr::from(*ip).is_unspecified() => None,
        _ => Some(name),
    }
}

impl Tls {
    /// Reads and checks every configured file. `peer_addr` is the address peers dial this
    /// node by, whose host its peer certificate should name.
    pub fn load(cfg: &TlsConfig, peer_addr: &str) -> Result<Tls, TlsError> {
        let mut tls = Tls::default();
        if let (Some(cert), Some(k)) = (&cfg.cert, &cfg.key) {
            let (files, warning) = KeyFiles::open("client", (cert, k), None, provider())?;
            let server = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(files.clone());
            tls.client_listener = Some(with_alpn(server));
            tls.files.push(files);
            tls.warnings.extend(warning);
        }
        if let (Some(ca), Some(cert), Some(k)) = (&cfg.peer_ca, &cfg.peer_cert, &cfg.peer_key) {
            let roots = roots(ca)?;
            let ca_err = |e: rustls::server::VerifierBuilderError| {
                TlsError(format!("{}: {e}", ca.display()))
            };
            let client_verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                    .build()
                    .map_err(ca_err)?;
            let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(ca_err)?;
            let trust = PeerTrust {
                ca: ca.clone(),
                client: client_verifier.clone(),
                server: server_verifier.clone(),
                name: dialed_name(peer_addr),
            };
            let (files, warning) = KeyFiles::open("peer", (cert, k), Some(trust), provider())?;
            let server = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError(e.to_string()))?
                .with_client_cert_verifier(client_verifier)
                .with_cert_resolver(files.clone());
            tls.peer_listener = Some(with_alpn(server));
            let client = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError(e.to_string()))?
                .with_webpki_verifier(server_verifier)
                .with_client_cert_resolver(files.clone());
            tls.peer_client = Some(Arc::new(client));
            tls.files.push(files);
            tls.warnings.extend(warning);
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

    const PEER: &str = "127.0.0.1:9081";

    #[test]
    fn generated_files_load_as_both_listeners_and_the_peer_client() {
        let dir = tempfile::tempdir().unwrap();
        let w = generate(dir.path(), 2, &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let (cert, key) = &w.nodes[1];
        let tls = Tls::load(
            &TlsConfig {
                cert: Some(cert.clone()),
                key: Some(key.clone()),
                peer_ca: Some(w.ca.clone()),
                peer_cert: Some(cert.clone()),
                peer_key: Some(key.clone()),
            },
            PEER,
        )
        .unwrap();
        assert!(tls.client_listener.is_some() && tls.peer_listener.is_some());
        assert!(tls.peer_client.is_some());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never overwritten.
        assert!(generate(dir.path(), 1, &["localhost".into()]).is_err());
        // And a run refused for one existing file writes none of the others (it wrote a new
        // ca.key beside the ca.pem it found: found in review).
        let partial = tempfile::tempdir().unwrap();
        std::fs::copy(&w.ca, partial.path().join("ca.pem")).unwrap();
        let e = generate(partial.path(), 1, &["localhost".into()]).unwrap_err();
        assert!(e.contains("ca.pem: already exists"), "{e}");
        let left: Vec<_> = std::fs::read_dir(partial.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["ca.pem"]);
        // A key that does not match the certificate is refused at load, naming the files.
        let other = TlsConfig {
            cert: Some(w.nodes[0].0.clone()),
            key: Some(w.nodes[1].1.clone()),
            ..TlsConfig::default()
        };
        assert!(Tls::load(&other, PEER).is_err());
        let missing = TlsConfig {
            cert: Some(dir.path().join("nope.pem")),
            key: Some(key.clone()),
            ..TlsConfig::default()
        };
        let e = Tls::load(&missing, PEER).err().unwrap().to_string();
        assert!(e.contains("nope.pem"), "{e}");
    }
}

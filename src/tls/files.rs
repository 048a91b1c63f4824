//! A certificate and its key as files that may be renewed while the node runs.
//!
//! cert-manager, certbot and the like renew a certificate in place, weeks before it expires,
//! and expect the server to pick it up: a node that read its files once would serve the old
//! certificate until it expired and every handshake failed. So each listener (and the peer
//! client) asks a [`KeyFiles`] for its certificate at every handshake, and
//! [`KeyFiles::refresh`] reloads the files when what they hold changes (however it was
//! changed: a Kubernetes Secret volume swaps a symlink, `cp` writes in place, `mv` renames).
//!
//! A reload is checked as the start is: the key must match the certificate, the dates must
//! hold, and a peer certificate must be accepted by `peer_ca` for both ends of a
//! connection. Files that fail keep the certificate in use serving, and the failure is
//! logged and exported; files caught half-written (a new certificate beside the old key)
//! fail that way and load at the next look, once both are in place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

use super::dates::{self, Dates};
use super::{certs_in, key_in, read, TlsError};

/// What a peer certificate must satisfy besides its dates: `peer_ca` must accept it as a
/// client's (the peer listener's check) and as a server's (the outgoing calls' check).
#[derive(Debug)]
pub struct PeerTrust {
    pub ca: PathBuf,
    pub client: Arc<dyn ClientCertVerifier>,
    pub server: Arc<WebPkiServerVerifier>,
    /// The host peers dial this node by (`peer_addr`'s), whose name the certificate
    /// should carry.
    pub name: Option<ServerName<'static>>,
}

impl PeerTrust {
    /// Checks `chain` (from `path`); `Ok(Some(warning))` when `peer_ca` accepts it but it
    /// does not name this node's peer address. That is a warning, not a refusal: a peer that
    /// dials another name (a `peer_overrides` address) may still reach it.
    fn check(
        &self,
        path: &Path,
        chain: &[CertificateDer<'static>],
    ) -> Result<Option<String>, TlsError> {
        let (leaf, rest) = (&chain[0], &chain[1..]);
        let now = UnixTime::now();
        let refused = |e: rustls::Error| {
            TlsError(format!(
                "{}: not accepted by peer_ca {}: {e}",
                path.display(),
                self.ca.display()
            ))
        };
        self.client
            .verify_client_cert(leaf, rest, now)
            .map_err(refused)?;
        let Some(name) = &self.name else {
            return Ok(None);
        };
        match self.server.verify_server_cert(leaf, rest, name, &[], now) {
            Ok(_) => Ok(None),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(Some(format!(
                "{}: does not name {}, the host peers dial this node by: their calls to it \
                 will fail the handshake",
                path.display(),
                name.to_str()
            ))),
            Err(e) => Err(refused(e)),
        }
    }
}

/// The bytes of a certificate file and its key file as last read, or why they could not be.
/// Compared whole at each look: a few KiB, where metadata (mtime, inode) can repeat across
/// a quick rewrite.
type Contents = (Result<Vec<u8>, TlsError>, Result<Vec<u8>, TlsError>);

/// The certificate served, with its dates.
#[derive(Debug)]
struct Served {
    key: Arc<CertifiedKey>,
    dates: Dates,
}

/// What [`KeyFiles::refresh`] found.
#[derive(Debug)]
pub enum Refresh {
    /// The files have not changed since the last look.
    Unchanged,
    /// The files changed and were loaded: the certificate now served and any warning.
    Loaded(Dates, Option<String>),
    /// The files changed and were refused; the certificate served before goes on.
    Refused(TlsError),
}

/// Where a certificate and its key are read from, and what they must pass.
#[derive(Debug)]
struct Source {
    cert: PathBuf,
    key: PathBuf,
    trust: Option<PeerTrust>,
    provider: Arc<CryptoProvider>,
}

impl Source {
    fn read(&self) -> Contents {
        (read(&self.cert), read(&self.key))
    }

    /// Loads what `contents` holds (read once, so the certificate and key checked are the
    /// ones served).
    fn load(&self, contents: &Contents) -> Result<(Served, Option<String>), TlsError> {
        let (cert_pem, key_pem) = (contents.0.clone()?, contents.1.clone()?);
        let chain = certs_in(&self.cert, &cert_pem)?;
        let dates = Dates::of(&self.cert, &chain[0])?;
        dates.check(&self.cert, dates::now())?;
        let warning = match &self.trust {
            Some(t) => t.check(&self.cert, &chain)?,
            None => None,
        };
        let key = CertifiedKey::from_der(chain, key_in(&self.key, &key_pem)?, &self.provider)
            .map_err(|e| {
                TlsError(format!(
                    "{} and {}: {e}",
                    self.cert.display(),
                    self.key.display()
                ))
            })?;
        let served = Served {
            key: Arc::new(key),
            dates,
        };
        Ok((served, warning))
    }
}

/// One certificate chain and key, by path, served from memory and reloaded when the files
/// change.
#[derive(Debug)]
pub struct KeyFiles {
    /// Which certificate this is, in logs and metrics: `client` or `peer`.
    pub label: &'static str,
    source: Source,
    served: RwLock<Arc<Served>>,
    /// The files as they were when last loaded or refused.
    seen: Mutex<Contents>,
}

impl KeyFiles {
    /// Reads and checks the files: an error stops the node at start, naming the file.
    pub fn open(
        label: &'static str,
        (cert, key): (&Path, &Path),
        trust: Option<PeerTrust>,
        provider: Arc<CryptoProvider>,
    ) -> Result<(Arc<KeyFiles>, Option<String>), TlsError> {
        let source = Source {
            cert: cert.to_owned(),
            key: key.to_owned(),
            trust,
            provider,
        };
        let seen = source.read();
        let (served, warning) = source.load(&seen)?;
        let files = KeyFiles {
            label,
            source,
            served: RwLock::new(Arc::new(served)),
            seen: Mutex::new(seen),
        };
        Ok((Arc::new(files), warning))
    }

    fn served(&self) -> Arc<Served> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The dates of the certificate being served.
    pub fn dates(&self) -> Dates {
        self.served().dates
    }

    /// Loads the files if they changed since the last look (blocking file reads: call it
    /// off the runtime's workers).
    pub fn refresh(&self) -> Refresh {
        let now = self.source.read();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return Refresh::Unchanged;
            }
            seen.clone_from(&now);
        }
        match self.source.load(&now) {
            Ok((served, warning)) => {
                let dates = served.dates;
                *self.served.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(served);
                Refresh::Loaded(dates, warning)
            }
            Err(e) => Refresh::Refused(e),
        }
    }
}

impl rustls::server::ResolvesServerCert for KeyFiles {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.served().key.clone())
    }
}

impl rustls::client::ResolvesClientCert for KeyFiles {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.served().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::client::ResolvesClientCert;
    use rustls::server::WebPkiClientVerifier;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = p.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(p, key),
            pem,
        }
    }

    /// A leaf for `host`, valid for both ends, written as `{name}.pem`/`{name}.key`
    /// through a rename (as a renewal would); `expired` puts its end in the past.
    fn leaf(dir: &Path, name: &str, ca: &Ca, (host, expired): (&str, bool)) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![host.to_owned()]).unwrap();
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        let paths = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        for (path, text) in [(&paths.0, cert.pem()), (&paths.1, key.serialize_pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        paths
    }

    fn trust(dir: &Path, ca: &Ca, name: &str) -> PeerTrust {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &ca.pem).unwrap();
        let roots = super::super::roots(&path).unwrap();
        PeerTrust {
            ca: path,
            client: WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .unwrap(),
            server: WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .unwrap(),
            name: Some(ServerName::try_from(name.to_owned()).unwrap()),
        }
    }

    fn served_cert(files: &KeyFiles) -> Vec<u8> {
        let key = ResolvesClientCert::resolve(files, &[], &[]).unwrap();
        key.cert[0].as_ref().to_vec()
    }

    fn first_cert(path: &Path) -> Vec<u8> {
        super::super::certs(path).unwrap()[0].as_ref().to_vec()
    }

    #[test]
    fn renewed_files_are_served_and_bad_ones_leave_the_old_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = ca();
        let (cert, key) = leaf(d, "node", &ca, ("localhost", false));
        let t = trust(d, &ca, "localhost");
        let (files, warning) = KeyFiles::open("peer", (&cert, &key), Some(t), provider()).unwrap();
        assert_eq!(warning, None);
        assert!(matches!(files.refresh(), Refresh::Unchanged));
        let first = served_cert(&files);
        assert_eq!(first, first_cert(&cert));

        // Renewed in place: the next look serves the new certificate.
        leaf(d, "node", &ca, ("localhost", false));
        let second = first_cert(&cert);
        assert_ne!(first, second);
        assert!(matches!(files.refresh(), Refresh::Loaded(_, None)));
        assert_eq!(served_cert(&files), second);
        assert!(matches!(files.refresh(), Refresh::Unchanged));

        // Caught half-written (a new certificate beside the old key): refused, the last
        // certificate still served; loaded once the key is there too.
        let (next_cert, next_key) = leaf(d, "next", &ca, ("localhost", false));
        std::fs::copy(&next_cert, &cert).unwrap();
        let Refresh::Refused(e) = files.refresh() else {
            panic!("a certificate beside another's key was loaded");
        };
        assert!(e.to_string().contains("node.pem and"), "{e}");
        assert_eq!(served_cert(&files), second);
        std::fs::copy(&next_key, &key).unwrap();
        assert!(matches!(files.refresh(), Refresh::Loaded(..)));
        assert_eq!(served_cert(&files), first_cert(&next_cert));

        // Expired, or from another CA: refused, naming why.
        leaf(d, "node", &ca, ("localhost", true));
        let Refresh::Refused(e) = files.refresh() else {
            panic!("an expired certificate was loaded");
        };
        assert!(
            e.to_string().contains("expired at 2021-01-01T00:00:00Z"),
            "{e}"
        );
        leaf(d, "node", &self::ca(), ("localhost", false));
        let Refresh::Refused(e) = files.refresh() else {
            panic!("a certificate from another CA was loaded");
        };
        assert!(e.to_string().contains("not accepted by peer_ca"), "{e}");
        assert_eq!(served_cert(&files), first_cert(&next_cert));
    }

    #[test]
    fn a_start_refuses_what_a_reload_would_and_warns_of_a_name_peers_do_not_dial() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = ca();
        let expired = leaf(d, "old", &ca, ("localhost", true));
        let e = KeyFiles::open("client", (&expired.0, &expired.1), None, provider())
            .unwrap_err()
            .to_string();
        assert!(e.contains("old.pem: expired at"), "{e}");
        let stranger = leaf(d, "stranger", &self::ca(), ("localhost", false));
        let t = trust(d, &ca, "localhost");
        let e = KeyFiles::open("peer", (&stranger.0, &stranger.1), Some(t), provider())
            .unwrap_err()
            .to_string();
        assert!(e.contains("stranger.pem: not accepted by peer_ca"), "{e}");
        // A client listener's certificate needs no CA of ours.
        KeyFiles::open("client", (&stranger.0, &stranger.1), None, provider()).unwrap();
        let elsewhere = leaf(d, "elsewhere", &ca, ("db.example", false));
        let t = trust(d, &ca, "localhost");
        let (_, warning) =
            KeyFiles::open("peer", (&elsewhere.0, &elsewhere.1), Some(t), provider()).unwrap();
        let w = warning.unwrap();
        assert!(w.contains("does not name localhost"), "{w}");
    }
}

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
use super::pem::{certs_in, key_in, read, TlsError};

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
        at: UnixTime,
    ) -> Result<Option<String>, TlsError> {
        let (leaf, rest) = (&chain[0], &chain[1..]);
        let refused = |e: rustls::Error| {
            TlsError(format!(
                "{}: not accepted by peer_ca {}: {e}",
                path.display(),
                self.ca.display()
            ))
        };
        self.client
            .verify_client_cert(leaf, rest, at)
            .map_err(refused)?;
        // Without a name peers dial (an unspecified address), the rest of the server check
        // still runs, against a name no certificate carries, whose mismatch is not counted.
        let placeholder = ServerName::try_from("peer-name-unknown.invalid").ok();
        let Some(name) = self.name.as_ref().or(placeholder.as_ref()) else {
            return Ok(None);
        };
        match self.server.verify_server_cert(leaf, rest, name, &[], at) {
            Ok(_) => Ok(None),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if self.name.is_none() => Ok(None),
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
    /// Nothing new: the files have not changed since the last look, or were refused again.
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
    fn load(&self, contents: &Contents, now: i64) -> Result<(Served, Option<String>), TlsError> {
        let cert_pem = contents.0.as_ref().map_err(Clone::clone)?;
        let key_pem = contents.1.as_ref().map_err(Clone::clone)?;
        let chain = certs_in(&self.cert, cert_pem)?;
        let dates = Dates::of(&self.cert, &chain[0])?;
        dates.check(&self.cert, now)?;
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(dates.checked_at(now)).unwrap_or(0),
        ));
        let warning = match &self.trust {
            Some(t) => t.check(&self.cert, &chain, at)?,
            None => None,
        };
        let key = CertifiedKey::from_der(chain, key_in(&self.key, key_pem)?, &self.provider)
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
/// change. Its `Debug` (rustls asks for one) names the files and never shows what they hold:
/// the key's bytes are in `seen`.
pub struct KeyFiles {
    /// Which certificate this is, in logs and metrics: `client` or `peer`.
    pub label: &'static str,
    source: Source,
    served: RwLock<Arc<Served>>,
    /// The files as they were when last loaded or refused, and whether they were refused.
    seen: Mutex<(Contents, bool)>,
}

impl std::fmt::Debug for KeyFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFiles")
            .field("label", &self.label)
            .field("cert", &self.source.cert)
            .field("key", &self.source.key)
            .field("dates", &self.dates())
            .finish_non_exhaustive()
    }
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
        let (served, warning) = source.load(&seen, dates::now())?;
        let files = KeyFiles {
            label,
            source,
            served: RwLock::new(Arc::new(served)),
            seen: Mutex::new((seen, false)),
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

    /// Loads the files if they changed since the last look, or were refused then (blocking
    /// file reads: call it off the runtime's workers). Files refused once are tried at every
    /// look: what refused them may have been the clock (a start ahead of it), which moves.
    pub fn refresh(&self) -> Refresh {
        self.refresh_at(dates::now())
    }

    /// [`KeyFiles::refresh`] with the clock at `clock` (Unix seconds).
    fn refresh_at(&self, clock: i64) -> Refresh {
        let now = self.source.read();
        let again = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.0 == now && !seen.1 {
                return Refresh::Unchanged;
            }
            let again = seen.0 == now;
            seen.0.clone_from(&now);
            again
        };
        let loaded = self.source.load(&now, clock);
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).1 = loaded.is_err();
        match loaded {
            Ok((served, warning)) => {
                let dates = served.dates;
                *self.served.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(served);
                Refresh::Loaded(dates, warning)
            }
            // Refused again, as at the last look: said then.
            Err(_) if again => Refresh::Unchanged,
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
        leaf_with(dir, (name, host), ca, |p| {
            if expired {
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
        })
    }

    /// [`leaf`], with its parameters changed by `edit` before it is signed.
    fn leaf_with(
        dir: &Path,
        (name, host): (&str, &str),
        ca: &Ca,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![host.to_owned()]).unwrap();
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        edit(&mut p);
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
        PeerTrust {
            name: Some(ServerName::try_from(name.to_owned()).unwrap()),
            ..nameless_trust(dir, ca)
        }
    }

    /// Trust in `ca` for a node whose peers' name for it is unknown (`0.0.0.0`).
    fn nameless_trust(dir: &Path, ca: &Ca) -> PeerTrust {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &ca.pem).unwrap();
        let roots = super::super::pem::roots(&path).unwrap();
        PeerTrust {
            ca: path,
            client: WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .unwrap(),
            server: WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .unwrap(),
            name: None,
        }
    }

    fn served_cert(files: &KeyFiles) -> Vec<u8> {
        let key = ResolvesClientCert::resolve(files, &[], &[]).unwrap();
        key.cert[0].as_ref().to_vec()
    }

    fn first_cert(path: &Path) -> Vec<u8> {
        super::super::pem::certs(path).unwrap()[0].as_ref().to_vec()
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

    /// Files refused for their start date are tried again at every look, and served once the
    /// clock reaches it: a refusal used to be final for those bytes (found in review). A
    /// start within `SKEW` ahead of the clock is served at once.
    #[test]
    fn files_refused_for_a_start_ahead_of_the_clock_are_served_once_it_comes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = ca();
        let (cert, key) = leaf(d, "node", &ca, ("localhost", false));
        let t = trust(d, &ca, "localhost");
        let (files, _) = KeyFiles::open("peer", (&cert, &key), Some(t), provider()).unwrap();
        let now = dates::now();
        let later = time::OffsetDateTime::now_utc() + time::Duration::seconds(3_600);
        leaf_with(d, ("node", "localhost"), &ca, |p| p.not_before = later);
        let Refresh::Refused(e) = files.refresh_at(now) else {
            panic!("a certificate valid from an hour on was loaded");
        };
        assert!(e.to_string().contains("not valid before"), "{e}");
        // Refused again, and not said again.
        assert!(matches!(files.refresh_at(now + 60), Refresh::Unchanged));
        assert!(matches!(files.refresh_at(now + 3_600), Refresh::Loaded(..)));
        assert_eq!(served_cert(&files), first_cert(&cert));
        // Five minutes ahead: an issuer's clock ahead of this one; served.
        let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(dates::SKEW - 10);
        leaf_with(d, ("node", "localhost"), &ca, |p| p.not_before = soon);
        assert!(matches!(files.refresh_at(now), Refresh::Loaded(..)));
    }

    /// A peer certificate that cannot serve (client authentication alone) is refused even
    /// where peers' name for the node is unknown: the rest of the server check still runs.
    #[test]
    fn a_peer_certificate_that_cannot_serve_is_refused_without_a_name_too() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = ca();
        let (cert, key) = leaf_with(d, ("client-only", "localhost"), &ca, |p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        });
        for t in [trust(d, &ca, "localhost"), nameless_trust(d, &ca)] {
            let e = KeyFiles::open("peer", (&cert, &key), Some(t), provider())
                .unwrap_err()
                .to_string();
            assert!(e.contains("not accepted by peer_ca"), "{e}");
        }
        // Without a name, a certificate for any host is taken.
        let (cert, key) = leaf(d, "elsewhere", &ca, ("db.example", false));
        let (_, warning) = KeyFiles::open(
            "peer",
            (&cert, &key),
            Some(nameless_trust(d, &ca)),
            provider(),
        )
        .unwrap();
        assert_eq!(warning, None);
    }

    /// rustls may print a resolver: the private key it holds must not be in it.
    #[test]
    fn the_debug_form_names_the_files_and_shows_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = leaf(dir.path(), "node", &ca(), ("localhost", false));
        let (files, _) = KeyFiles::open("client", (&cert, &key), None, provider()).unwrap();
        let shown = format!("{files:?}");
        assert!(shown.contains("node.key"), "{shown}");
        assert!(
            !shown.contains("PRIVATE") && !shown.contains("45, 45"),
            "{shown}"
        );
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

//! PEM files read whole and bounded, and the error that names the file: what every other
//! part of `tls` builds on (a leaf: it imports nothing from `tls`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// Why TLS could not be set up, with the file it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tls: {0}")]
pub struct TlsError(pub(crate) String);

/// The file at `path`, whole (a certificate or key file is a few KiB; anything past
/// [`MAX_PEM_BYTES`] is refused rather than read).
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError(format!(
            "{}: over {MAX_PEM_BYTES} bytes: not a certificate or key file",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The most a PEM file of certificates or a key may hold: a CA bundle of a few hundred
/// certificates fits.
const MAX_PEM_BYTES: u64 = 4 << 20;

/// The certificates in `pem`, read from `path`.
pub(crate) fn certs_in(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if read.is_empty() {
        return Err(TlsError(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(read)
}

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_in(path, &read(path)?)
}

/// The private key in `pem`, read from `path`.
pub(crate) fn key_in(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError(format!("{}: {e}", path.display())))
}

pub(crate) fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store
            .add(c)
            .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    }
    Ok(Arc::new(store))
}

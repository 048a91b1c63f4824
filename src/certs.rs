//! `cookie-crud certs`: a private CA and one certificate per node, for a lab or a test
//! cluster (`make cluster-start TLS=1` uses it). Production clusters use their own PKI
//! (cert-manager on Kubernetes, docs/security.md); the config takes any PEM files.
//!
//! Each node's certificate is good for both ends of a connection (server and client
//! authentication), so one file serves the client listener, the peer listener and the
//! node's outgoing peer calls. It names every host given, so every node's certificate is
//! valid wherever a peer dials it.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;

/// What `cookie-crud certs` writes into its output directory.
#[derive(Debug)]
pub struct Written {
    /// `ca.pem`: what clients and peers trust.
    pub ca: PathBuf,
    /// `node{i}.pem` (the node's certificate, then the CA's) and `node{i}.key`, for
    /// `i` in `1..=nodes`.
    pub nodes: Vec<(PathBuf, PathBuf)>,
}

fn err(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Write a file that only its owner may read (keys).
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether two paths name one file (both exist and share device and inode).
fn same_path(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn write_public(path: &Path, text: &str) -> Result<(), String> {
    if path.exists() {
        return Err(format!("{}: already exists", path.display()));
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// How node certificates are signed, and for how long.
#[derive(Debug, Default, Clone)]
pub struct Signing {
    /// A directory holding `ca.pem` and `ca.key` (from an earlier run) to sign with, in
    /// place of a new CA: for a node added later, or to renew certificates before they
    /// expire, so that the cluster's members keep trusting each other.
    pub ca: Option<PathBuf>,
    /// How many days the node certificates are valid from now (from an hour ago, for
    /// clocks a little behind); `None` for rcgen's default, which runs to the year 4096.
    pub days: Option<u32>,
}

/// The CA in `dir`, checked: its key must be the certificate's.
fn existing_ca(dir: &Path) -> Result<(String, Issuer<'static, KeyPair>), String> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let (pem, key_pem) = (read("ca.pem")?, read("ca.key")?);
    let key = KeyPair::from_pem(&key_pem).map_err(err("ca.key"))?;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("{}: {e}", dir.join("ca.pem").display()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("{}: {e}", dir.join("ca.pem").display()))?;
    if parsed
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .as_ref()
        != key.public_key_raw()
    {
        return Err(format!(
            "{}: not the key of {}",
            dir.join("ca.key").display(),
            dir.join("ca.pem").display()
        ));
    }
    let issuer = Issuer::from_ca_cert_pem(&pem, key).map_err(err("ca.pem"))?;
    Ok((pem, issuer))
}

/// A new CA, written to `out`.
fn new_ca(out: &Path) -> Result<(String, Issuer<'static, KeyPair>), String> {
    let ca_key = KeyPair::generate().map_err(err("CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err("CA"))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cookie-crud private CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(err("CA"))?;
    write_private(&out.join("ca.key"), &ca_key.serialize_pem())?;
    Ok((ca_cert.pem(), Issuer::new(ca, ca_key)))
}

/// Make a CA and `nodes` node certificates naming `hosts` (IP addresses or DNS names, `*.`
/// wildcards allowed) in `out`. Existing files are never overwritten.
pub fn generate(out: &Path, nodes: usize, hosts: &[String]) -> Result<Written, String> {
    generate_with(out, (nodes, hosts), &Signing::default())
}

/// [`generate`], signed as `signing` says. With an existing CA, `out` gets a copy of its
/// `ca.pem` (never its key).
pub fn generate_with(
    out: &Path,
    (nodes, hosts): (usize, &[String]),
    signing: &Signing,
) -> Result<Written, String> {
    if hosts.is_empty() {
        return Err("name at least one host (--host) the certificates are for".into());
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let ca_path = out.join("ca.pem");
    let same_file = signing
        .ca
        .as_ref()
        .is_some_and(|dir| same_path(&dir.join("ca.pem"), &ca_path));
    // Every file this writes is looked for first: one found after others were written
    // left them behind (found in review: a new ca.key beside another CA's ca.pem, which
    // no later run could use).
    let mut targets = Vec::new();
    if signing.ca.is_none() {
        targets.push(out.join("ca.key"));
    }
    if !same_file {
        targets.push(ca_path.clone());
    }
    for i in 1..=nodes {
        targets.push(out.join(format!("node{i}.pem")));
        targets.push(out.join(format!("node{i}.key")));
    }
    if let Some(there) = targets.iter().find(|p| p.symlink_metadata().is_ok()) {
        return Err(format!(
            "{}: already exists (nothing was written; existing files are never overwritten)",
            there.display()
        ));
    }
    let (ca_pem, issuer) = match &signing.ca {
        Some(dir) => existing_ca(dir)?,
        None => new_ca(out)?,
    };
    if !same_file {
        write_public(&ca_path, &ca_pem)?;
    }

    let mut written = Vec::new();
    for i in 1..=nodes {
        let key = KeyPair::generate().map_err(err("node key"))?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(err("node"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("cookie-crud node{i}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if let Some(days) = signing.days {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::HOUR;
            params.not_after = now + time::Duration::days(i64::from(days));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).map_err(err("node"))?;
        let (cert_path, key_path) = (
            out.join(format!("node{i}.pem")),
            out.join(format!("node{i}.key")),
        );
        write_private(&key_path, &key.serialize_pem())?;
        write_public(&cert_path, &format!("{}{ca_pem}", cert.pem()))?;
        written.push((cert_path, key_path));
    }
    Ok(Written {
        ca: ca_path,
        nodes: written,
    })
}

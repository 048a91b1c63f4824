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

fn write_public(path: &Path, text: &str) -> Result<(), String> {
    if path.exists() {
        return Err(format!("{}: already exists", path.display()));
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Make a CA and `nodes` node certificates naming `hosts` (IP addresses or DNS names, `*.`
/// wildcards allowed) in `out`. Existing files are never overwritten.
pub fn generate(out: &Path, nodes: usize, hosts: &[String]) -> Result<Written, String> {
    if hosts.is_empty() {
        return Err("name at least one host (--host) the certificates are for".into());
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
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
    let ca_path = out.join("ca.pem");
    write_private(&out.join("ca.key"), &ca_key.serialize_pem())?;
    write_public(&ca_path, &ca_cert.pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let mut written = Vec::new();
    for i in 1..=nodes {
        let key = KeyPair::generate().map_err(err("node key"))?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(err("node"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("cookie-crud node{i}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
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
        write_public(&cert_path, &format!("{}{}", cert.pem(), ca_cert.pem()))?;
        written.push((cert_path, key_path));
    }
    Ok(Written {
        ca: ca_path,
        nodes: written,
    })
}

//! A certificate's validity period, read from its DER with x509-parser: checked before the
//! node serves the certificate (at start and at every reload) and exported as
//! `tls_certificate_expiry_timestamp_seconds`, so an operator sees a renewal that did not
//! happen weeks before the handshakes start failing.

use std::path::Path;

use rustls::pki_types::CertificateDer;

use super::pem::TlsError;

/// When a certificate starts and stops being valid, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dates {
    pub not_before: i64,
    pub not_after: i64,
}

/// A Unix time as RFC 3339 (UTC), for messages; the number itself if it is out of range.
pub fn shown(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{t} (Unix time)"))
}

/// The seconds since the Unix epoch now, by this machine's clock.
pub fn now() -> i64 {
    i64::try_from(crate::clock::unix_now()).unwrap_or(i64::MAX)
}

/// How far ahead of this machine's clock a certificate's start may be and still be served:
/// an issuer sets it to the moment of issue, and a node whose clock is a little behind the
/// issuer's would refuse a fresh certificate that its peers, with their clocks, accept.
pub const SKEW: i64 = 300;

impl Dates {
    /// The time to check the certificate's chain at: now, or its start when that lies within
    /// `SKEW` ahead (then it is checked as its peers, with clocks that far ahead, will).
    pub fn checked_at(&self, now: i64) -> i64 {
        if now < self.not_before && self.not_before - now <= SKEW {
            self.not_before
        } else {
            now
        }
    }

    /// The dates of `cert`, the first certificate of the file `path`.
    pub fn of(path: &Path, cert: &CertificateDer<'_>) -> Result<Dates, TlsError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| TlsError(format!("{}: not an X.509 certificate: {e}", path.display())))?;
        let v = parsed.validity();
        Ok(Dates {
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
        })
    }

    /// Whether the certificate in `path` is valid at `now`. A node refuses to serve one that
    /// is not: every peer and client that checks dates would refuse it at the handshake,
    /// which they report as a connection that failed, far from the file at fault.
    pub fn check(&self, path: &Path, now: i64) -> Result<(), TlsError> {
        if now < self.not_before.saturating_sub(SKEW) {
            return Err(TlsError(format!(
                "{}: not valid before {} (this machine's clock says {}): it was issued for \
                 later, or this clock is behind the issuer's",
                path.display(),
                shown(self.not_before),
                shown(now)
            )));
        }
        if now > self.not_after {
            return Err(TlsError(format!(
                "{}: expired at {}; renew it (a node reloads renewed files while it runs)",
                path.display(),
                shown(self.not_after)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: (i32, u8), not_after: (i32, u8)) -> CertificateDer<'static> {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        p.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, 1);
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn dates_are_read_and_checked_against_the_clock() {
        let path = Path::new("node.pem");
        let d = Dates::of(path, &cert((2020, 1), (2030, 6))).unwrap();
        assert_eq!(shown(d.not_before), "2020-01-01T00:00:00Z");
        assert_eq!(shown(d.not_after), "2030-06-01T00:00:00Z");
        assert!(d.check(path, now()).is_ok());
        let e = d.check(path, d.not_after + 1).unwrap_err().to_string();
        assert!(
            e.contains("node.pem: expired at 2030-06-01T00:00:00Z"),
            "{e}"
        );
        // A start a little ahead of this clock is an issuer's clock ahead of ours.
        assert!(d.check(path, d.not_before - SKEW).is_ok());
        assert_eq!(d.checked_at(d.not_before - SKEW), d.not_before);
        assert_eq!(
            d.checked_at(d.not_before - SKEW - 1),
            d.not_before - SKEW - 1
        );
        let e = d
            .check(path, d.not_before - SKEW - 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid before 2020-01-01T00:00:00Z"), "{e}");
        let junk = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
        let e = Dates::of(path, &junk).unwrap_err().to_string();
        assert!(e.contains("node.pem: not an X.509 certificate"), "{e}");
    }
}

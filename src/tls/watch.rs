//! The task that reloads renewed certificates, and exports their dates.

use std::sync::Arc;
use std::time::Duration;

use super::dates::shown;
use super::files::{KeyFiles, Refresh};
use crate::metrics::Metrics;

/// How often the certificate files are looked at. A renewal is served within this long;
/// the look is a `stat` of each file.
pub const EVERY: Duration = Duration::from_secs(10);

/// Looks at `files` every `EVERY` (10 s) for as long as the node runs, loading those that
/// changed. Sets `tls_certificate_expiry_timestamp_seconds` and
/// `tls_certificate_files_refused` at once (before the node serves), then as they change.
pub fn watch(
    files: Vec<Arc<KeyFiles>>,
    metrics: Arc<Metrics>,
) -> impl std::future::Future<Output = ()> {
    for f in &files {
        metrics.set_certificate(f.label, f.dates().not_after, false);
    }
    look(files, metrics)
}

async fn look(files: Vec<Arc<KeyFiles>>, metrics: Arc<Metrics>) {
    let mut refused = vec![false; files.len()];
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for (f, refused) in files.iter().zip(refused.iter_mut()) {
            let looked = f.clone();
            // File reads, however small, stay off the runtime's workers.
            let Ok(outcome) = tokio::task::spawn_blocking(move || looked.refresh()).await else {
                continue;
            };
            match outcome {
                Refresh::Unchanged => continue,
                Refresh::Loaded(dates, warning) => {
                    *refused = false;
                    tracing::info!(
                        certificate = f.label,
                        not_after = %shown(dates.not_after),
                        "tls: renewed certificate loaded; new handshakes use it"
                    );
                    if let Some(w) = warning {
                        tracing::warn!(certificate = f.label, "tls: {w}");
                    }
                    metrics.certificate_reloaded(f.label, true);
                }
                Refresh::Refused(e) => {
                    *refused = true;
                    tracing::warn!(
                        certificate = f.label,
                        "tls: certificate files changed but were refused; the certificate \
                         loaded before is still served: {e}"
                    );
                    metrics.certificate_reloaded(f.label, false);
                }
            }
            metrics.set_certificate(f.label, f.dates().not_after, *refused);
        }
    }
}

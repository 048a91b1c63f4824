//! `cookie-crud ctl backup FILE` and `cookie-crud restore`: a backup downloaded and checked,
//! and restored into a new data directory, each with a progress bar on a terminal; and
//! `cookie-crud dump`: a backup of a stopped node's data directory (the disaster case).

use std::io::Write;
use std::path::Path;

use cookie_raft::identity::random_id;
use cookie_raft::log::Dirs;
use cookie_raft::network::{read_capped, MAX_RESPONSE_BYTES};
use cookie_raft::sm::backup::{self, BackupHeader, Origin, RestoreTarget};
use cookie_raft::sm::dump::{self, DumpReport};
use cookie_raft::CookieNode;
use indicatif::{ProgressBar, ProgressStyle};

use super::client::{describe, Client, CtlError};
use crate::config::Config;

/// A byte-counting bar (hidden when standard error is not a terminal, so scripts and CI
/// logs get no control characters).
fn bar(len: Option<u64>, what: &str) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    let style = ProgressStyle::with_template(
        "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// Download a backup from the first endpoint that serves one into `file` (written as
/// `FILE.partial`, checked, then renamed), refusing to overwrite an existing file.
pub async fn download(
    client: &Client,
    file: &Path,
    consistency: &str,
) -> Result<BackupHeader, CtlError> {
    if file.exists() {
        return Err(CtlError::Usage(format!(
            "{} exists: a backup never overwrites a file",
            file.display()
        )));
    }
    let partial = partial_path(file);
    let mut last = String::from("no endpoint");
    for endpoint in &client.target.endpoints {
        let url = format!("{endpoint}/admin/backup?consistency={consistency}");
        // A node that accepts the connection and never answers (stopped, say) is given
        // `--timeout` to start its answer, and as long between two chunks of it; then the
        // next endpoint is asked. (Both waits had no bound: a stopped node held `backup`
        // for ever.)
        let stall = client.target.timeout;
        let sent = client.request(reqwest::Method::GET, &url).send();
        let mut resp = match tokio::time::timeout(stall, sent).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                last = format!("{endpoint}: {}", describe(&e));
                continue;
            }
            Err(_) => {
                last = format!("{endpoint}: no answer within {stall:?}");
                continue;
            }
        };
        if !resp.status().is_success() {
            let status = resp.status();
            // An error is a short JSON object; a longer answer is cut off, not buffered.
            let body = read_capped(resp, MAX_RESPONSE_BYTES)
                .await
                .unwrap_or_else(|e| e.to_string().into_bytes());
            let err = CtlError::from_answer(&super::client::Answer {
                endpoint: endpoint.clone(),
                status,
                headers: Default::default(),
                body,
            });
            if status == 503 || status.is_server_error() {
                last = err.to_string();
                continue;
            }
            return Err(err);
        }
        let progress = bar(resp.content_length(), "backup");
        let mut out = create_partial(&partial)?;
        let mut received = 0u64;
        let stopped = loop {
            let why = match tokio::time::timeout(stall, resp.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    out.write_all(&chunk)
                        .map_err(|e| CtlError::Failed(format!("{}: {e}", partial.display())))?;
                    received += chunk.len() as u64;
                    progress.set_position(received);
                    continue;
                }
                Ok(Ok(None)) => break None,
                Ok(Err(e)) => describe(&e),
                Err(_) => format!("nothing for {stall:?}"),
            };
            break Some(why);
        };
        if let Some(why) = stopped {
            // Another node may serve it whole: its own consistent copy, from the start.
            progress.abandon();
            drop(out);
            let _ = std::fs::remove_file(&partial);
            last = format!("{endpoint}: the backup stopped after {received} bytes: {why}");
            continue;
        }
        progress.finish_and_clear();
        out.sync_all()
            .map_err(|e| CtlError::Failed(format!("{}: {e}", partial.display())))?;
        drop(out);
        let checked = tokio::task::spawn_blocking({
            let partial = partial.clone();
            move || backup::verify(&partial, &|_| {})
        })
        .await
        .map_err(|e| CtlError::Failed(e.to_string()))?;
        let header = match checked {
            Ok(h) => h,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(CtlError::Failed(format!(
                    "the backup from {endpoint} does not check: {e}"
                )));
            }
        };
        publish(&partial, file)
            .map_err(|e| CtlError::Failed(format!("{}: {e}", file.display())))?;
        return Ok(header);
    }
    Err(CtlError::Failed(format!("no backup: {last}")))
}

/// `cookie-crud restore`: the data directory `cfg.data_dir` of a new one-member cluster
/// whose member is the node `cfg` describes, holding exactly the backup's records.
pub fn restore(cfg: &Config, file: &Path) -> Result<BackupHeader, CtlError> {
    let target = RestoreTarget {
        node_id: cfg.node_id,
        node: CookieNode::new(cfg.advertise(), cfg.advertise_peer(), cfg.name()),
        cluster: random_id().map_err(|e| CtlError::Failed(e.to_string()))?,
    };
    let dirs = cfg.dirs();
    // The restored log's WAL is made at the node's first start, where the config puts it; a
    // WAL already there is another data's, and the node would refuse it then.
    if dirs.wal_apart() {
        let in_use = cookie_raft::log::place::in_use(&dirs.wal)
            .map_err(|e| CtlError::Failed(format!("{}: {e}", dirs.wal.display())))?;
        if in_use {
            return Err(CtlError::Usage(format!(
                "{} (storage.wal_dir) holds a WAL already: a restore needs it empty",
                dirs.wal.display()
            )));
        }
    }
    let len = std::fs::metadata(file)
        .map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))?
        .len();
    // Two walks of the file: the check, then the writing.
    let progress = bar(Some(len * 2), "restore");
    let second = std::cell::Cell::new(false);
    let last = std::cell::Cell::new(0u64);
    let result = backup::restore(file, &cfg.data_dir, &target, &|n| {
        if n < last.get() {
            second.set(true);
        }
        last.set(n);
        progress.set_position(if second.get() { len + n } else { n });
    });
    progress.finish_and_clear();
    result.map_err(|e| match e {
        backup::RestoreError::NotEmpty { .. } => CtlError::Usage(e.to_string()),
        backup::RestoreError::Backup(b) => CtlError::Usage(format!("{}: {b}", file.display())),
        e => CtlError::Failed(e.to_string()),
    })
}

/// `cookie-crud dump`: a backup of the stopped node's data in `dirs` into `file` (written
/// as `FILE.partial`, then renamed), for a cluster that lost its quorum for good.
/// The working copy goes in `scratch`, or else beside `file`.
pub fn dump(
    dirs: &Dirs,
    file: &Path,
    scratch: Option<&Path>,
    applied_only: bool,
) -> Result<DumpReport, CtlError> {
    let dir = &dirs.data;
    if file.exists() {
        return Err(CtlError::Usage(format!(
            "{} exists: a backup never overwrites a file",
            file.display()
        )));
    }
    let partial = partial_path(file);
    let failed = |e: std::io::Error| CtlError::Failed(format!("{}: {e}", partial.display()));
    let mut out = std::io::BufWriter::new(create_partial(&partial)?);
    let origin = Origin {
        node: format!("dump of {}", dir.display()),
        created_ms: crate::clock::unix_now_ms(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let beside = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let from = dump::DumpFrom {
        dirs,
        scratch: scratch.unwrap_or(beside),
        applied_only,
    };
    let report = match dump::dump(&from, origin, &mut out) {
        Ok(r) => r,
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(&partial);
            return Err(CtlError::Usage(e.to_string()));
        }
    };
    out.into_inner()
        .map_err(|e| failed(e.into_error()))?
        .sync_all()
        .map_err(failed)?;
    publish(&partial, file).map_err(failed)?;
    Ok(report)
}

/// `FILE.partial`: the file's whole name with `.partial` after it. (`with_extension`
/// replaced the extension, so `nightly.tar` wrote over a `nightly.partial` of someone
/// else's, and renamed it away: found in review.)
fn partial_path(file: &Path) -> std::path::PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    name.into()
}

/// Create `partial`, which must not exist: one left by a run that did not finish is
/// the user's to look at and remove, never overwritten.
fn create_partial(partial: &Path) -> Result<std::fs::File, CtlError> {
    std::fs::File::create_new(partial).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => CtlError::Usage(format!(
            "{} exists (left by a backup that did not finish?): remove it first",
            partial.display()
        )),
        _ => CtlError::Failed(format!("{}: {e}", partial.display())),
    })
}

/// Rename a synced `partial` to `file`, and sync the directory: a success reported before
/// the rename is durable could leave, after a power cut, only the partial file or none.
/// Never over a file: one made at `file` while the backup was written (checked absent
/// before) was replaced by a plain rename (found in review); it stays, and so does the
/// backup, as `partial`.
fn publish(partial: &Path, file: &Path) -> std::io::Result<()> {
    cookie_raft::durable::rename_no_replace(partial, file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            std::io::Error::new(
                e.kind(),
                format!(
                    "a file appeared there while the backup was written: it is kept, and \
                     the backup is in {}",
                    partial.display()
                ),
            )
        } else {
            e
        }
    })?;
    cookie_raft::durable::sync_parent(file)
}

#[cfg(test)]
mod partial_tests {
    use super::*;

    #[test]
    fn the_partial_file_is_the_whole_name_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nightly.tar");
        let partial = partial_path(&file);
        assert_eq!(partial, dir.path().join("nightly.tar.partial"));
        std::fs::write(dir.path().join("nightly.partial"), "someone else's").unwrap();
        drop(create_partial(&partial).unwrap());
        assert!(matches!(create_partial(&partial), Err(CtlError::Usage(_))));
        let theirs = std::fs::read_to_string(dir.path().join("nightly.partial")).unwrap();
        assert_eq!(theirs, "someone else's");
    }

    /// A file made at the backup's name while it was written is kept, and so is the backup.
    #[test]
    fn publishing_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.backup");
        let partial = partial_path(&file);
        std::fs::write(&partial, "the backup").unwrap();
        std::fs::write(&file, "theirs").unwrap();
        let err = publish(&partial, &file).unwrap_err();
        assert!(err.to_string().contains("it is kept"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "theirs");
        assert_eq!(std::fs::read_to_string(&partial).unwrap(), "the backup");
        std::fs::remove_file(&file).unwrap();
        publish(&partial, &file).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "the backup");
    }
}

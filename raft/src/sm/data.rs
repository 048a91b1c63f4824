//! [`SnapshotFile`]: a snapshot's data as openraft handles it (its `SnapshotData`), an open
//! file rather than bytes in memory.
//!
//! openraft reads a snapshot to send it a chunk at a time (seek, read), so a leader sending
//! a million records holds one chunk, not the state. The file keeps its path: installing a
//! received snapshot renames the very file it arrived in into place
//! ([`super::files::SnapshotFiles::adopt`]), instead of copying it.
//!
//! An open file stays readable after it is unlinked, so a snapshot being sent is not cut
//! short when a newer one replaces it on disk meanwhile.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::fs::File;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// An open snapshot file and where it is.
#[derive(Debug)]
pub struct SnapshotFile {
    file: File,
    path: PathBuf,
}

impl SnapshotFile {
    /// Open `path` to read it.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(SnapshotFile {
            file: File::from_std(std::fs::File::open(path)?),
            path: path.to_owned(),
        })
    }

    /// Create `path` (empty) to write it, and to read it back.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        Ok(SnapshotFile {
            file: File::from_std(file),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its length in bytes.
    pub async fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata().await?.len())
    }

    /// Cut the file to `len` bytes and go to its end, where the next write lands.
    pub async fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        use tokio::io::AsyncSeekExt;
        self.file.set_len(len).await?;
        self.file.seek(SeekFrom::Start(len)).await?;
        Ok(())
    }

    /// Every write flushed to disk (data and length).
    pub async fn sync(&mut self) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await?;
        self.file.sync_all().await
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn written_bytes_read_back_and_survive_an_unlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.snap");
        let mut f = SnapshotFile::create(&path).unwrap();
        f.write_all(b"hello, world").await.unwrap();
        f.truncate_to(5).await.unwrap();
        f.write_all(b"!").await.unwrap();
        f.sync().await.unwrap();
        assert_eq!(f.len().await.unwrap(), 6);

        let mut r = SnapshotFile::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        r.seek(SeekFrom::Start(1)).await.unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "ello!");
    }
}

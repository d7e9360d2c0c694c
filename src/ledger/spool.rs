//! The local durable spool: where ledger rows wait while the database is
//! unreachable.
//!
//! Rows are appended as JSON lines to segment files in `spool_dir`; every
//! append is followed by `fsync` before the writer forgets the rows, so a
//! crash after a failed insert loses nothing that was spooled. Replay reads
//! whole segments, inserts them (idempotently, by request id) and deletes a
//! segment only after all its rows are stored. A line torn by a crash in the
//! middle of an append is skipped with a warning: its row was never
//! acknowledged as spooled.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::LedgerRow;

pub struct Spool {
    dir: PathBuf,
    current: Option<(PathBuf, File)>,
}

impl Spool {
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            current: None,
        })
    }

    fn segments(&self) -> Vec<PathBuf> {
        let mut segments: Vec<PathBuf> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension().is_some_and(|e| e == "jsonl")
                    && path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("ledger-"))
            })
            .collect();
        segments.sort();
        segments
    }

    pub fn has_pending(&self) -> bool {
        self.current.is_some() || !self.segments().is_empty()
    }

    /// Rows found in existing segments (counted once, at startup).
    pub fn pending_rows_estimate(&self) -> u64 {
        self.segments()
            .iter()
            .filter_map(|path| File::open(path).ok())
            .map(|file| BufReader::new(file).lines().count() as u64)
            .sum()
    }

    pub fn append(&mut self, rows: &[LedgerRow]) -> io::Result<()> {
        let mut buffer = Vec::with_capacity(rows.len() * 512);
        for row in rows {
            serde_json::to_writer(&mut buffer, row)?;
            buffer.push(b'\n');
        }
        if self.current.is_none() {
            let name = format!(
                "ledger-{:020}-{}.jsonl",
                chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
                std::process::id()
            );
            let path = self.dir.join(name);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            // Make the new directory entry durable too.
            File::open(&self.dir)?.sync_all()?;
            self.current = Some((path, file));
        }
        if let Some((_, file)) = self.current.as_mut() {
            file.write_all(&buffer)?;
            file.sync_data()?;
        }
        Ok(())
    }

    /// Feeds every segment to `insert`, oldest first, deleting each one once
    /// it is stored. Stops at the first failure (the rest waits for the next
    /// attempt). Returns the rows replayed.
    pub async fn replay<F, Fut, E>(&mut self, mut insert: F) -> Result<u64, E>
    where
        F: FnMut(Vec<LedgerRow>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        // Seal the current segment so new failures start a fresh one.
        self.current = None;
        let mut replayed = 0;
        for path in self.segments() {
            let rows = read_segment(&path);
            let count = rows.len() as u64;
            insert(rows).await?;
            if let Err(err) = fs::remove_file(&path) {
                tracing::error!(path = %path.display(), error = %err, "cannot remove replayed spool segment");
            }
            replayed += count;
        }
        Ok(replayed)
    }
}

fn read_segment(path: &Path) -> Vec<LedgerRow> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (number, line) in BufReader::new(file).split(b'\n').enumerate() {
        let Ok(line) = line else { break };
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<LedgerRow>(&line) {
            Ok(row) => rows.push(row),
            Err(err) => tracing::warn!(
                path = %path.display(), line = number + 1, error = %err,
                "skipping a torn spool line"
            ),
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ledger::sample_row as row;

    #[tokio::test]
    async fn spooled_rows_replay_exactly_once_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        spool.append(&[row("a"), row("b")]).unwrap();
        spool.append(&[row("c")]).unwrap();
        // A crash in the middle of an append leaves a partial line.
        let (path, _) = spool.current.as_ref().unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(b"{\"request_id\":\"tor")
            .unwrap();
        assert_eq!(spool.pending_rows_estimate(), 4);

        // A failing insert keeps everything.
        let failed = spool.replay(|_| async { Err::<(), &str>("db down") }).await;
        assert!(failed.is_err());
        assert!(spool.has_pending());

        let mut seen = Vec::new();
        let replayed = spool
            .replay(|rows| {
                seen.extend(rows.iter().map(|r| r.request_id.clone()));
                async { Ok::<(), &str>(()) }
            })
            .await
            .unwrap();
        assert_eq!(replayed, 3);
        assert_eq!(seen, ["a", "b", "c"]);
        assert!(!spool.has_pending());
        let original = row("a");
        let mut again = Spool::open(dir.path()).unwrap();
        again.append(std::slice::from_ref(&original)).unwrap();
        let mut back = Vec::new();
        again
            .replay(|rows| {
                back = rows;
                async { Ok::<(), &str>(()) }
            })
            .await
            .unwrap();
        assert_eq!(
            back,
            vec![original],
            "a spooled row round-trips every field"
        );
    }
}

//! A capture file's writer: one thread per file per worker, so that a slow or hung disk
//! never holds the nginx thread or the runtime's threads. Copies hand it their records and
//! await its word; it writes what waits in one `write` (continued when short) to the file
//! nginx opened (and reopens on `nginx -s reopen`), and with `rotate=` starts a new file
//! past the size. A write that fails mid-record leaves a fragment that the next write closes
//! with a separator, so every later record stands on its own.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;

use super::format::SEPARATOR;
use crate::engine::outcome::{FailReason, Failure};

/// Records written in one `write` at most (more wait for the next).
const BATCH_BYTES: usize = 1 << 20;

/// Why a record was not kept.
pub enum Refusal {
    /// No room in the target's share of the backlog (or the producer's queue).
    Full,
    Failed(Failure),
}

struct Job {
    bytes: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The copies' side of one capture file's writer.
pub struct FileWriter {
    tx: UnboundedSender<Job>,
    rx: Mutex<Option<UnboundedReceiver<Job>>>,
    /// A file the nginx thread opened (at start and on `nginx -s reopen`), taken by the
    /// writer before its next write.
    handed: Arc<Mutex<Option<File>>>,
    path: PathBuf,
    rotate: Option<u64>,
}

impl FileWriter {
    pub fn new(path: PathBuf, rotate: Option<u64>) -> FileWriter {
        let (tx, rx) = unbounded_channel();
        FileWriter { tx, rx: Mutex::new(Some(rx)), handed: Arc::default(), path, rotate }
    }

    /// Starts the writer's thread (once). Called on a runtime thread, whose blocked signals
    /// the new thread inherits.
    ///
    /// # Errors
    /// When the thread cannot be created: copies then fail with the reason.
    pub fn start(&self) -> io::Result<()> {
        let Some(rx) = self.rx.lock().ok().and_then(|mut r| r.take()) else { return Ok(()) };
        let (handed, path, rotate) = (self.handed.clone(), self.path.clone(), self.rotate);
        std::thread::Builder::new()
            .name("async-mirror-file".into())
            .spawn(move || run(rx, &handed, &path, rotate))
            .map(|_| ())
    }

    /// The file to write to from now on (the nginx thread opened it).
    pub fn hand(&self, file: File) {
        if let Ok(mut h) = self.handed.lock() {
            *h = Some(file);
        }
    }

    /// Appends one record (and its separator); `Ok` once it is written whole.
    ///
    /// # Errors
    /// The write failed (`failed{write}`), or `deadline` passed first (`failed{timeout}`).
    pub async fn write(&self, record: Vec<u8>, deadline: Instant) -> Result<(), Refusal> {
        let (done, written) = oneshot::channel();
        if self.tx.send(Job { bytes: record, done }).is_err() {
            return Err(Refusal::Failed(Failure::new(
                FailReason::Write,
                "the capture file's writer is not running",
            )));
        }
        let written = tokio::time::timeout_at(deadline.into(), written).await;
        match written {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Failure::new(FailReason::Write, format!("{}: {e}", self.path.display()))),
            Ok(Err(_)) => Err(Failure::new(FailReason::Write, "the capture file's writer stopped")),
            Err(_) => Err(Failure::new(
                FailReason::Timeout,
                format!("{} was not written in time", self.path.display()),
            )),
        }
        .map_err(Refusal::Failed)
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o644).open(path)
}

fn run(mut rx: UnboundedReceiver<Job>, handed: &Mutex<Option<File>>, path: &Path, rotate: Option<u64>) {
    let mut file: Option<File> = None;
    let mut torn = false;
    while let Some(first) = rx.blocking_recv() {
        let mut len = first.bytes.len() + SEPARATOR.len();
        let mut jobs = vec![first];
        while len < BATCH_BYTES {
            match rx.try_recv() {
                Ok(j) => {
                    len += j.bytes.len() + SEPARATOR.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        if let Some(f) = handed.lock().ok().and_then(|mut h| h.take()) {
            file = Some(f);
        }
        if let Some(limit) = rotate {
            follow_and_rotate(&mut file, path, limit, len as u64);
        }
        if file.is_none() {
            file = open(path).ok();
        }
        let (done, error) = write_batch(file.as_mut(), &jobs, &mut torn);
        for (job, end) in jobs.into_iter().zip(done) {
            let _ = job.done.send(if end { Ok(()) } else { Err(error.clone()) });
        }
    }
}

/// With `rotate=`: follows the path when another worker rotated (or the file was moved),
/// and renames the file to `PATH.<unix ns>` when `incoming` bytes would take it past `limit`.
fn follow_and_rotate(file: &mut Option<File>, path: &Path, limit: u64, incoming: u64) {
    let on_path = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let mine = file.as_ref().and_then(|f| f.metadata().ok()).map(|m| (m.dev(), m.ino()));
    if on_path.is_none() || on_path != mine {
        *file = open(path).ok();
    }
    let size = file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
    if size > 0 && size + incoming > limit {
        let ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mut to = path.as_os_str().to_owned();
        to.push(format!(".{ns}"));
        if std::fs::rename(path, &to).is_ok() {
            *file = open(path).ok();
        }
    }
}

/// Writes the jobs' records, each followed by the separator; which were written whole, and
/// what went wrong with the others.
fn write_batch(file: Option<&mut File>, jobs: &[Job], torn: &mut bool) -> (Vec<bool>, String) {
    let mut buf = Vec::new();
    if *torn {
        buf.extend_from_slice(SEPARATOR);
    }
    let start = buf.len();
    let mut ends = Vec::with_capacity(jobs.len());
    for j in jobs {
        buf.extend_from_slice(&j.bytes);
        buf.extend_from_slice(SEPARATOR);
        ends.push(buf.len());
    }
    let (mut done, mut error) = (0, String::new());
    match file {
        None => error = "the file is not open".into(),
        Some(f) => {
            while done < buf.len() {
                match f.write(&buf[done..]) {
                    Ok(0) => {
                        error = "nothing was written".into();
                        break;
                    }
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        error = e.to_string();
                        break;
                    }
                }
            }
        }
    }
    *torn = done < buf.len() && if done == 0 { *torn } else { done != start && !ends.contains(&done) };
    (ends.iter().map(|&e| e <= done).collect(), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(bytes: &[u8]) -> (Job, oneshot::Receiver<Result<(), String>>) {
        let (done, rx) = oneshot::channel();
        (Job { bytes: bytes.to_vec(), done }, rx)
    }

    #[test]
    fn batches_end_in_separators_and_a_torn_one_is_closed() {
        let dir = std::env::temp_dir().join(format!("am-fw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.gor");
        let _ = std::fs::remove_file(&path);
        let mut f = open(&path).unwrap();
        let mut torn = false;
        let (a, _) = job(b"1 a 0 0\nGET / HTTP/1.1\r\n\r\n");
        let (b, _) = job(b"1 b 0 0\nGET /b HTTP/1.1\r\n\r\n");
        let (ok, _) = write_batch(Some(&mut f), &[a, b], &mut torn);
        assert_eq!((ok, torn), (vec![true, true], false));
        let full = File::options().append(true).open("/dev/full");
        if let Ok(mut full) = full {
            let (c, _) = job(b"x");
            let (ok, err) = write_batch(Some(&mut full), &[c], &mut torn);
            assert!(!ok[0] && err.contains("No space"), "{err}");
        }
        let text = std::fs::read(&path).unwrap();
        let mut r = super::super::format::PayloadReader::new(&text[..]);
        assert!(r.next_payload().unwrap().unwrap().ends_with(b"HTTP/1.1\r\n\r\n"));
        assert!(r.next_payload().unwrap().is_some() && r.next_payload().unwrap().is_none());
        // Rotation: past the limit the file is renamed and a new one started.
        let mut file = Some(f);
        follow_and_rotate(&mut file, &path, 10, 100);
        let rotated = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(rotated, 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

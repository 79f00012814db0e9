//! Whole lines to a log file that nginx opened: what the nginx thread's timer writes for
//! `async_mirror_log` and `async_mirror_compare_log`. A short write is continued; a write
//! that fails loses the lines it did not finish (counted), and the next write first ends
//! the fragment it left, so every later line starts on a line of its own.

use std::io;

/// One file's state between writes.
#[derive(Debug, Default)]
pub struct LineFile {
    /// The last write stopped inside a line.
    torn: bool,
}

impl LineFile {
    /// Writes `lines` (each gets its `\n`) through `write` (one `write(2)` each call);
    /// returns how many were written whole and how many were lost.
    pub fn write<'a>(
        &mut self,
        lines: impl Iterator<Item = &'a str>,
        mut write: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> (u64, u64) {
        let mut buf = Vec::new();
        if self.torn {
            buf.push(b'\n');
        }
        let mut ends = Vec::new();
        for line in lines {
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            ends.push(buf.len());
        }
        if ends.is_empty() {
            return (0, 0);
        }
        let mut done = 0;
        while done < buf.len() {
            match write(&buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let whole = ends.iter().filter(|&&end| end <= done).count() as u64;
        // Torn when the write stopped inside a line; a fragment left by an earlier write
        // stays torn until its `\n` is written.
        let start = usize::from(self.torn);
        self.torn =
            if done < start { self.torn } else { done < buf.len() && done > start && !ends.contains(&done) };
        (whole, ends.len() as u64 - whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_writes_continue_and_a_failed_one_leaves_no_torn_line_behind() {
        let mut file = LineFile::default();
        let mut disk = Vec::new();
        // A writer that takes at most 7 bytes at a time.
        let (w, l) = file.write(["{\"a\":1}", "{\"b\":2}"].into_iter(), |b| {
            let n = b.len().min(7);
            disk.extend_from_slice(&b[..n]);
            Ok(n)
        });
        assert_eq!((w, l), (2, 0));
        assert_eq!(disk, b"{\"a\":1}\n{\"b\":2}\n");
        // The disk fills up after 10 bytes: one line whole, one torn, one never started.
        let mut room = 10;
        let (w, l) = file.write(["{\"c\":3}", "{\"d\":4}", "{\"e\":5}"].into_iter(), |b| {
            if room == 0 {
                return Err(io::Error::from_raw_os_error(28));
            }
            let n = b.len().min(room);
            room -= n;
            disk.extend_from_slice(&b[..n]);
            Ok(n)
        });
        assert_eq!((w, l), (1, 2));
        // Room again: the fragment is ended first, then the new line is whole.
        let (w, l) = file.write(["{\"f\":6}"].into_iter(), |b| {
            disk.extend_from_slice(b);
            Ok(b.len())
        });
        assert_eq!((w, l), (1, 0));
        let text = String::from_utf8(disk).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}", "{\"", "{\"f\":6}"]);
        assert!(text.ends_with('\n'));
    }
}

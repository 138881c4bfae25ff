//! Segment files: `NNNNNNNNNN.seg` in the data directory, a 16-byte header then framed
//! records (see `codec`). Only the newest segment is ever written to; older ones are
//! read-only and deleted whole once nothing in them is live.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::codec::{check_frame, FRAME_HEADER, MAX_BODY};

pub(crate) const MAGIC: &[u8; 8] = b"IOTSBKL1";
pub(crate) const HEADER: u64 = 16;
const VERSION: u32 = 1;

pub(crate) fn seg_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}

/// Segment files of the directory, oldest first.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u32>().ok())
        {
            v.push((id, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a new empty segment, durable (file and directory entry) when it returns.
pub(crate) fn create(dir: &Path, id: u32) -> io::Result<File> {
    let path = seg_path(dir, id);
    // Owner only: messages can hold device secrets (issue 15).
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    let r = f.write_all_at(&h, 0).and_then(|_| f.sync_all());
    if let Err(e) = r {
        drop(f);
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(f)
}

/// Reads `len` framed bytes at `off` and returns the checked body.
pub(crate) fn read_record(f: &File, off: u32, len: u32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, off as u64)?;
    body_of(&buf).map(|b| b.to_vec())
}

pub(crate) fn body_of(framed: &[u8]) -> io::Result<&[u8]> {
    match check_frame(framed) {
        Some(n) if FRAME_HEADER + n == framed.len() => Ok(&framed[FRAME_HEADER..]),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "record checksum mismatch",
        )),
    }
}

/// A stretch of a file that does not check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRange {
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Damage followed by good records.
    pub damaged: Vec<BadRange>,
    /// Damage running to the end of the file (a torn write if this is the newest file).
    pub tail: Option<BadRange>,
}

fn why_bad(b: &[u8]) -> String {
    if b.len() < FRAME_HEADER {
        return format!("{} stray bytes, shorter than a record header", b.len());
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if len == 0 || len > MAX_BODY {
        format!("implausible record length {len}")
    } else if b.len() < FRAME_HEADER + len {
        format!(
            "record of {len} bytes cut short at {} bytes",
            b.len() - FRAME_HEADER
        )
    } else {
        "record checksum mismatch".to_owned()
    }
}

/// Walks the records of a segment's bytes, calling `f(offset, framed_len, body)` for each
/// one that checks out. After damage, resynchronises on the next offset where a whole
/// record checks out.
pub(crate) fn scan(bytes: &[u8], mut f: impl FnMut(u32, u32, &[u8])) -> Scan {
    let mut out = Scan::default();
    if bytes.len() < HEADER as usize || &bytes[..8] != MAGIC {
        out.damaged.push(BadRange {
            offset: 0,
            len: bytes.len() as u64,
            reason: "not a backlog segment (bad header)".to_owned(),
        });
        return out;
    }
    let mut off = HEADER as usize;
    while off < bytes.len() {
        if let Some(n) = check_frame(&bytes[off..]) {
            let framed = FRAME_HEADER + n;
            f(
                off as u32,
                framed as u32,
                &bytes[off + FRAME_HEADER..off + framed],
            );
            off += framed;
            continue;
        }
        let reason = why_bad(&bytes[off..]);
        let next = (off + 1..bytes.len().saturating_sub(FRAME_HEADER))
            .find(|&o| check_frame(&bytes[o..]).is_some());
        match next {
            Some(n) => {
                out.damaged.push(BadRange {
                    offset: off as u64,
                    len: (n - off) as u64,
                    reason,
                });
                off = n;
            }
            None => {
                out.tail = Some(BadRange {
                    offset: off as u64,
                    len: (bytes.len() - off) as u64,
                    reason,
                });
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Enc;

    fn segment_with_acks(n: u64) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[0u8; 8]);
        let mut e = Enc::default();
        for i in 0..n {
            e.ack(1, 0, i);
        }
        b.extend_from_slice(&e.buf);
        b
    }

    fn count(bytes: &[u8]) -> (usize, Scan) {
        let mut n = 0;
        let s = scan(bytes, |_, _, _| n += 1);
        (n, s)
    }

    #[test]
    fn scan_reads_every_record_of_an_intact_segment() {
        let (n, s) = count(&segment_with_acks(10));
        assert_eq!(n, 10);
        assert!(s.damaged.is_empty() && s.tail.is_none());
    }

    #[test]
    fn scan_reports_a_torn_tail_and_keeps_what_precedes_it() {
        let mut b = segment_with_acks(10);
        b.truncate(b.len() - 5);
        let (n, s) = count(&b);
        assert_eq!(n, 9);
        let t = s.tail.unwrap();
        assert!(t.reason.contains("cut short"), "{}", t.reason);
    }

    #[test]
    fn scan_skips_a_corrupted_record_and_serves_those_after_it() {
        let mut b = segment_with_acks(10);
        let rec = FRAME_HEADER + 14;
        b[HEADER as usize + 3 * rec + 10] ^= 0xFF;
        let (n, s) = count(&b);
        assert_eq!(n, 9);
        assert_eq!(s.damaged.len(), 1);
        assert_eq!(s.damaged[0].offset, HEADER + 3 * rec as u64);
        assert!(s.tail.is_none());
    }

    #[test]
    fn scan_refuses_a_file_without_the_segment_header() {
        let (n, s) = count(b"garbage garbage garbage");
        assert_eq!(n, 0);
        assert!(s.damaged[0].reason.contains("bad header"));
    }
}

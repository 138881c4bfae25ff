//! A project's slots (one per appended message, by `pseq`), kept in chunks of [`CHUNK`]
//! slots. Only a bounded number of chunks is in memory at once (the engine's index
//! budget, shared by all projects through a [`SpillPool`]); colder chunks are written to
//! one spill file in the backlog directory and read back when something touches them.
//! That is what keeps memory flat however many messages are stacked: what stays in
//! memory per chunk that is out is a few bytes of bookkeeping (≈0.04 B per message).
//!
//! The spill file is a cache of the index, not a source of truth: it is never synced,
//! it is removed at open, and a restart rebuilds the index from the log as before.
//!
//! Eviction is a CLOCK sweep over a project's own chunks (the tail chunk, being appended
//! to, and the chunk just touched are never chosen). A project that needs a chunk and
//! finds the pool over budget evicts one of its own; `Index::trim_memory` (run by the
//! engine's tick) evicts from the projects that hold the most, so one project cannot keep
//! memory another needs.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::error;

use super::{Slot, TOMBSTONE};
use crate::types::IndexMemory;

/// Slots per chunk (fewer only for budgets too small to hold eight such chunks).
pub(crate) const CHUNK: u64 = 1024;
const SLOT_BYTES: usize = 40;
#[cfg(test)]
const PAGE_BYTES: usize = CHUNK as usize * SLOT_BYTES;
const NO_PAGE: u32 = u32::MAX;
/// The budget holds at least this many chunks.
const MIN_BUDGET_CHUNKS: usize = 8;
/// A project always keeps this many chunks in memory, whatever the pool says (so a
/// lease scan and an append never evict each other's chunk back and forth).
const MIN_RESIDENT: usize = 2;

/// The memory budget of all projects' slots, and the spill file behind it.
#[derive(Debug)]
pub(crate) struct SpillPool {
    /// `None`: no file, nothing is ever evicted (unit tests of the index).
    path: Option<PathBuf>,
    /// log2 of the slots per chunk.
    shift: u32,
    budget_chunks: usize,
    resident: AtomicUsize,
    file: Mutex<SpillFile>,
}

#[derive(Debug, Default)]
struct SpillFile {
    file: Option<File>,
    /// Encoding buffer of one page, reused.
    scratch: Vec<u8>,
    /// Chunk buffers let go, kept for the next chunk (fewer large allocations: with
    /// glibc's per-thread arenas, that churn showed as RSS growth in long drains).
    spare: Vec<Box<[Slot]>>,
    free: Vec<u32>,
    next: u32,
    /// Pages that could not be written (disk full): counted to stop retrying each time.
    write_failures: u64,
}

impl SpillPool {
    /// A pool whose chunks beyond `budget_bytes` go to `path` (created on first need;
    /// a stale one from a previous run is removed now).
    pub fn new(path: Option<PathBuf>, budget_bytes: usize) -> Self {
        if let Some(p) = &path {
            let _ = std::fs::remove_file(p);
        }
        let per_chunk = (budget_bytes / SLOT_BYTES / MIN_BUDGET_CHUNKS).clamp(4, CHUNK as usize);
        let shift = usize::BITS - 1 - per_chunk.leading_zeros();
        Self {
            path,
            shift,
            budget_chunks: (budget_bytes / (SLOT_BYTES << shift)).max(MIN_BUDGET_CHUNKS),
            resident: AtomicUsize::new(0),
            file: Mutex::new(SpillFile::default()),
        }
    }

    /// No spilling: everything stays in memory.
    #[cfg(test)]
    pub fn unbounded() -> Self {
        Self {
            path: None,
            shift: CHUNK.trailing_zeros(),
            budget_chunks: usize::MAX,
            resident: AtomicUsize::new(0),
            file: Mutex::new(SpillFile::default()),
        }
    }

    pub fn over_budget(&self) -> bool {
        self.path.is_some() && self.resident.load(Ordering::Relaxed) > self.budget_chunks
    }

    /// Slot bytes in memory and in use in the spill file.
    pub fn usage(&self) -> IndexMemory {
        let (chunks, pages) = self.chunks_and_pages();
        IndexMemory {
            resident_bytes: (chunks * self.page_bytes()) as u64,
            spilled_bytes: pages as u64 * self.page_bytes() as u64,
        }
    }

    fn chunks_and_pages(&self) -> (usize, u32) {
        let f = self.lock();
        (
            self.resident.load(Ordering::Relaxed),
            f.next - f.free.len() as u32,
        )
    }

    fn page_bytes(&self) -> usize {
        SLOT_BYTES << self.shift
    }

    fn lock(&self) -> MutexGuard<'_, SpillFile> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, page: u32, data: &[Slot]) -> Option<u32> {
        let path = self.path.as_ref()?;
        let mut f = self.lock();
        if f.file.is_none() {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
            {
                Ok(file) => f.file = Some(file),
                Err(e) => {
                    f.write_failures += 1;
                    error!(path = %path.display(), error = %e, "cannot create the index spill file; keeping the index in memory");
                    return None;
                }
            }
        }
        let fresh = page == NO_PAGE;
        let page = if !fresh {
            page
        } else if let Some(p) = f.free.pop() {
            p
        } else {
            f.next += 1;
            f.next - 1
        };
        let mut buf = std::mem::take(&mut f.scratch);
        buf.resize(self.page_bytes(), 0);
        encode(data, &mut buf);
        let res = match f.file.as_ref() {
            Some(file) => file.write_all_at(&buf, page as u64 * buf.len() as u64),
            None => Err(std::io::Error::other("spill file missing")),
        };
        f.scratch = buf;
        match res {
            Ok(()) => Some(page),
            Err(e) => {
                // The chunk stays in memory; a page it already had stays its own.
                if fresh {
                    f.free.push(page);
                }
                f.write_failures += 1;
                if f.write_failures.is_power_of_two() {
                    error!(path = %path.display(), error = %e, failures = f.write_failures, "cannot write to the index spill file; keeping chunks in memory");
                }
                None
            }
        }
    }

    /// A chunk buffer of tombstones (a recycled one if there is).
    fn buffer(&self) -> Box<[Slot]> {
        match self.lock().spare.pop() {
            Some(mut b) => {
                b.fill(TOMBSTONE);
                b
            }
            None => vec![TOMBSTONE; 1 << self.shift].into_boxed_slice(),
        }
    }

    fn recycle(&self, b: Box<[Slot]>) {
        let mut f = self.lock();
        if f.spare.len() < 16 {
            f.spare.push(b);
        }
    }

    fn read(&self, page: u32) -> Box<[Slot]> {
        let mut out = self.buffer();
        let mut f = self.lock();
        let mut buf = std::mem::take(&mut f.scratch);
        buf.resize(self.page_bytes(), 0);
        let res = match f.file.as_ref() {
            Some(file) => file.read_exact_at(&mut buf, page as u64 * self.page_bytes() as u64),
            None => Err(std::io::Error::other("spill file missing")),
        };
        let res = res.map(|()| decode(&buf, &mut out));
        f.scratch = buf;
        match res {
            Ok(()) => {}
            // Only a failing disk gets here (the page was written by us and is in the
            // page cache or on disk). The chunk's messages are unavailable until the
            // next open rebuilds the index from the log; said loudly.
            Err(e) => {
                error!(page, error = %e, "cannot read the index spill file: a chunk of the index is lost until restart")
            }
        }
        out
    }

    fn free(&self, page: u32) {
        if page != NO_PAGE {
            self.lock().free.push(page);
        }
    }
}

fn encode(slots: &[Slot], buf: &mut [u8]) {
    for (s, b) in slots.iter().zip(buf.chunks_exact_mut(SLOT_BYTES)) {
        let packed = s.meta as u32 | (s.id_hash as u32) << 16;
        for (i, v) in [
            s.seg, s.off, s.len, s.key, s.gen_s, s.owners, s.takers, s.dropped, s.acked_s, packed,
        ]
        .into_iter()
        .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

fn decode(buf: &[u8], slots: &mut [Slot]) {
    for (s, b) in slots.iter_mut().zip(buf.chunks_exact(SLOT_BYTES)) {
        let u = |i: usize| u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        *s = Slot {
            seg: u(0),
            off: u(1),
            len: u(2),
            key: u(3),
            gen_s: u(4),
            owners: u(5),
            takers: u(6),
            dropped: u(7),
            acked_s: u(8),
            meta: u(9) as u16,
            id_hash: (u(9) >> 16) as u16,
        };
    }
}

#[derive(Debug)]
struct Chunk {
    /// `None` and no page: every slot is a tombstone.
    data: Option<Box<[Slot]>>,
    page: u32,
    /// Changed since it was last written to `page`.
    dirty: bool,
    /// Touched since the clock hand last passed.
    used: bool,
    /// No slot of the chunk points into a segment below this (compaction skips it).
    min_seg: u32,
}

impl Chunk {
    fn empty() -> Self {
        Self {
            data: None,
            page: NO_PAGE,
            dirty: false,
            used: true,
            min_seg: u32::MAX,
        }
    }
}

/// The slots of one project: `pseq` in `first .. first + len`.
#[derive(Debug)]
pub(crate) struct Slots {
    first: u64,
    len: u64,
    /// log2 of the slots per chunk (the pool's).
    shift: u32,
    /// Chunk number (`pseq >> shift`) of `chunks[0]`.
    c0: u64,
    chunks: VecDeque<Chunk>,
    resident: usize,
    hand: usize,
    pool: Arc<SpillPool>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Slots {
    pub fn new(pool: Arc<SpillPool>) -> Self {
        Self {
            first: 0,
            len: 0,
            shift: pool.shift,
            c0: 0,
            chunks: VecDeque::new(),
            resident: 0,
            hand: 0,
            pool,
        }
    }

    /// The oldest slot's pseq (the project's base).
    pub fn first(&self) -> u64 {
        self.first
    }

    /// One past the newest slot.
    pub fn next(&self) -> u64 {
        self.first + self.len
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Chunks held in memory by this project.
    pub fn resident(&self) -> usize {
        self.resident
    }

    /// Drops every slot; the store then starts at `first`.
    pub fn reset(&mut self, first: u64) {
        self.clear();
        self.first = first;
        self.c0 = first >> self.shift;
    }

    /// Drops every slot (keeps `first`).
    pub fn clear(&mut self) {
        for c in self.chunks.drain(..) {
            if let Some(d) = c.data {
                self.pool.resident.fetch_sub(1, Ordering::Relaxed);
                self.pool.recycle(d);
            }
            self.pool.free(c.page);
        }
        self.resident = 0;
        self.hand = 0;
        self.len = 0;
        self.c0 = self.first >> self.shift;
    }

    fn mask(&self) -> u64 {
        (1 << self.shift) - 1
    }

    fn locate(&self, pseq: u64) -> Option<(usize, usize)> {
        if pseq < self.first || pseq >= self.next() {
            return None;
        }
        Some((
            ((pseq >> self.shift) - self.c0) as usize,
            (pseq & self.mask()) as usize,
        ))
    }

    /// Makes chunk `ci` resident (reading it back or materialising tombstones).
    fn load(&mut self, ci: usize) -> &mut [Slot] {
        if self.chunks[ci].data.is_none() {
            let page = self.chunks[ci].page;
            let data = if page == NO_PAGE {
                self.pool.buffer()
            } else {
                self.pool.read(page)
            };
            self.chunks[ci].data = Some(data);
            self.resident += 1;
            self.pool.resident.fetch_add(1, Ordering::Relaxed);
            self.evict_over_budget(ci);
        }
        let c = &mut self.chunks[ci];
        c.used = true;
        match c.data.as_deref_mut() {
            Some(d) => d,
            None => &mut [],
        }
    }

    /// The slot of `pseq` (brought into memory if it was out).
    pub fn get(&mut self, pseq: u64) -> Option<&Slot> {
        let (ci, off) = self.locate(pseq)?;
        self.load(ci).get(off).map(|s| s as &Slot)
    }

    /// The slot of `pseq`, to change (brought into memory if it was out).
    pub fn get_mut(&mut self, pseq: u64) -> Option<&mut Slot> {
        let (ci, off) = self.locate(pseq)?;
        self.chunks[ci].dirty = true;
        self.load(ci).get_mut(off)
    }

    /// A copy of the slot of `pseq`, read without bringing its chunk into memory.
    pub fn peek(&self, pseq: u64) -> Option<Slot> {
        let (ci, off) = self.locate(pseq)?;
        let c = &self.chunks[ci];
        match (&c.data, c.page) {
            (Some(d), _) => d.get(off).copied(),
            (None, NO_PAGE) => Some(TOMBSTONE),
            (None, page) => self.pool.read(page).get(off).copied(),
        }
    }

    /// Points the slot of `pseq` at its record (keeps the chunk's segment bound).
    pub fn set_location(&mut self, pseq: u64, seg: u32, off: u32, len: u32) -> Option<&mut Slot> {
        let (ci, _) = self.locate(pseq)?;
        let c = &mut self.chunks[ci];
        c.min_seg = c.min_seg.min(seg);
        let s = self.get_mut(pseq)?;
        s.seg = seg;
        s.off = off;
        s.len = len;
        Some(s)
    }

    /// Appends a slot at `next()`.
    pub fn push_back(&mut self, s: Slot) {
        let pseq = self.next();
        if self.chunks.is_empty() {
            self.c0 = pseq >> self.shift;
        }
        let ci = ((pseq >> self.shift) - self.c0) as usize;
        if ci == self.chunks.len() {
            self.chunks.push_back(Chunk::empty());
        }
        self.len += 1;
        if s != TOMBSTONE {
            self.chunks[ci].min_seg = self.chunks[ci].min_seg.min(s.seg);
            if let Some(slot) = self.get_mut(pseq) {
                *slot = s;
            }
        }
    }

    /// Extends the store with tombstones up to (not including) `next` (replay).
    pub fn grow_back_to(&mut self, next: u64) {
        while self.next() < next {
            let pseq = self.next();
            if self.chunks.is_empty() {
                self.c0 = pseq >> self.shift;
            }
            if ((pseq >> self.shift) - self.c0) as usize == self.chunks.len() {
                self.chunks.push_back(Chunk::empty());
            }
            // Slots past `next()` in the tail chunk are tombstones already.
            let chunk_end = ((pseq >> self.shift) + 1) << self.shift;
            self.len += chunk_end.min(next) - pseq;
        }
    }

    /// Extends the store with tombstones down to `first` (replay meets a relocated copy
    /// of an older message).
    pub fn grow_front_to(&mut self, first: u64) {
        if self.is_empty() {
            self.reset(first);
            return;
        }
        while self.first > first {
            let pseq = self.first - 1;
            if (pseq >> self.shift) < self.c0 {
                self.chunks.push_front(Chunk::empty());
                self.c0 -= 1;
                self.hand += 1;
            }
            self.first = pseq;
            self.len += 1;
            // The position may hold a popped slot's old value: clear it.
            let c = &self.chunks[((pseq >> self.shift) - self.c0) as usize];
            if c.data.is_some() || c.page != NO_PAGE {
                if let Some(s) = self.get_mut(pseq) {
                    *s = TOMBSTONE;
                }
            }
        }
    }

    /// Drops slots from the front while `done` says so.
    pub fn pop_front_while(&mut self, mut done: impl FnMut(&Slot) -> bool) {
        while self.len > 0 {
            let first = self.first;
            match self.get(first) {
                Some(s) if done(s) => {}
                _ => break,
            }
            self.first += 1;
            self.len -= 1;
            if self.first & self.mask() == 0 || self.len == 0 {
                self.drop_front_chunks();
            }
        }
    }

    fn drop_front_chunks(&mut self) {
        if self.len == 0 {
            self.clear();
            return;
        }
        while self.c0 < self.first >> self.shift {
            let Some(c) = self.chunks.pop_front() else {
                break;
            };
            self.c0 += 1;
            self.hand = self.hand.saturating_sub(1);
            if let Some(d) = c.data {
                self.resident -= 1;
                self.pool.resident.fetch_sub(1, Ordering::Relaxed);
                self.pool.recycle(d);
            }
            self.pool.free(c.page);
        }
    }

    /// `pseq`, or — if its chunk holds nothing but tombstones — the first pseq of the
    /// next chunk that may hold something (or `next()`). Walks over a stretch of the
    /// store skip long gaps (e.g. after a replay grew it) without materialising them.
    pub fn skip_empty(&self, pseq: u64) -> u64 {
        let mut p = pseq.max(self.first);
        while let Some((ci, _)) = self.locate(p) {
            let c = &self.chunks[ci];
            if c.data.is_some() || c.page != NO_PAGE {
                return p;
            }
            p = ((p >> self.shift) + 1) << self.shift;
        }
        p.min(self.next()).max(pseq)
    }

    /// Calls `f` on every slot in pseq order, bringing each chunk in as it goes (and
    /// letting the others out); a chunk is marked changed only if `f` changed a slot.
    /// Chunks of nothing but tombstones are skipped (`f` is not called on them).
    pub fn for_each_mut(&mut self, mut f: impl FnMut(u64, &mut Slot)) {
        let (first, next) = (self.first, self.next());
        for ci in 0..self.chunks.len() {
            if self.chunks[ci].data.is_none() && self.chunks[ci].page == NO_PAGE {
                continue;
            }
            let c_first = (self.c0 + ci as u64) << self.shift;
            let lo = first.max(c_first);
            let hi = next.min(c_first + (1 << self.shift));
            let mut changed = false;
            let mask = self.mask();
            let data = self.load(ci);
            for pseq in lo..hi {
                let s = &mut data[(pseq & mask) as usize];
                let before = *s;
                f(pseq, s);
                changed |= *s != before;
            }
            if changed {
                self.chunks[ci].dirty = true;
            }
        }
    }

    /// Calls `f` on a copy of every slot in pseq order, without changing what is in
    /// memory; chunks whose slots all point at segments above `max_seg` are skipped.
    pub fn for_each_upto_seg(&self, max_seg: u32, mut f: impl FnMut(u64, &Slot)) {
        let (first, next) = (self.first, self.next());
        for (ci, c) in self.chunks.iter().enumerate() {
            if c.min_seg > max_seg {
                continue;
            }
            let c_first = (self.c0 + ci as u64) << self.shift;
            let read;
            let data: &[Slot] = match (&c.data, c.page) {
                (Some(d), _) => d,
                (None, NO_PAGE) => continue,
                (None, page) => {
                    read = self.pool.read(page);
                    &read
                }
            };
            for pseq in first.max(c_first)..next.min(c_first + (1 << self.shift)) {
                f(pseq, &data[(pseq & self.mask()) as usize]);
            }
        }
    }

    /// Calls `f` on a copy of every slot (tests and `verify`).
    pub fn for_each(&self, f: impl FnMut(u64, &Slot)) {
        self.for_each_upto_seg(u32::MAX, f)
    }

    fn evict_over_budget(&mut self, protect: usize) {
        while self.pool.over_budget() && self.resident > MIN_RESIDENT {
            if !self.evict_one_except(protect) {
                break;
            }
        }
    }

    /// Writes one cold chunk out and frees its memory. `false` if none could go.
    pub fn evict_one(&mut self) -> bool {
        self.evict_one_except(usize::MAX)
    }

    fn evict_one_except(&mut self, protect: usize) -> bool {
        let n = self.chunks.len();
        if n < 2 || self.resident <= MIN_RESIDENT {
            return false;
        }
        let tail = n - 1;
        // Two sweeps: the first clears `used` bits, the second finds one clear.
        for _ in 0..2 * n {
            let ci = self.hand % n;
            self.hand = (ci + 1) % n;
            if ci == tail || ci == protect {
                continue;
            }
            let c = &mut self.chunks[ci];
            let Some(data) = c.data.as_deref() else {
                continue;
            };
            if c.used {
                c.used = false;
                continue;
            }
            if c.dirty || c.page == NO_PAGE {
                match self.pool.write(c.page, data) {
                    Some(page) => c.page = page,
                    None => return false,
                }
            }
            if let Some(d) = c.data.take() {
                self.pool.recycle(d);
            }
            c.dirty = false;
            self.resident -= 1;
            self.pool.resident.fetch_sub(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(i: u64) -> Slot {
        Slot {
            seg: 1 + (i / 5000) as u32,
            off: i as u32,
            len: 100,
            key: (i % 7) as u32,
            gen_s: 1000 + i as u32,
            owners: 0b11,
            takers: 0b111,
            dropped: 0b100,
            acked_s: 7 + i as u32,
            meta: (i % 1000) as u16,
            id_hash: (i % 65_536) as u16,
        }
    }

    fn spilling(dir: &tempfile::TempDir, budget_chunks: usize) -> Arc<SpillPool> {
        Arc::new(SpillPool::new(
            Some(dir.path().join("index.spill")),
            budget_chunks * PAGE_BYTES,
        ))
    }

    #[test]
    fn slots_beyond_the_budget_go_to_the_spill_file_and_come_back_intact() {
        let dir = tempfile::tempdir().unwrap();
        let pool = spilling(&dir, 8);
        let mut s = Slots::new(pool.clone());
        s.reset(500);
        let n = 100 * CHUNK;
        for i in 0..n {
            s.push_back(slot(i));
        }
        let (resident, pages) = pool.chunks_and_pages();
        assert!(resident <= 8, "{resident} chunks in memory");
        assert!(pages >= 90, "{pages} pages spilled");
        // Random access reads back what was written, and changes survive eviction.
        for i in (0..n).step_by(997) {
            assert_eq!(s.get(500 + i).copied(), Some(slot(i)));
            s.get_mut(500 + i).unwrap().owners = 0b01;
        }
        for i in 0..n {
            let mut want = slot(i);
            if i % 997 == 0 {
                want.owners = 0b01;
            }
            assert_eq!(s.peek(500 + i), Some(want), "pseq {}", 500 + i);
        }
        let mut count = 0;
        s.for_each(|pseq, sl| {
            assert_eq!(sl.off as u64, pseq - 500);
            count += 1;
        });
        assert_eq!(count, n);
        assert!(pool.chunks_and_pages().0 <= 8);
    }

    #[test]
    fn popping_the_front_frees_memory_and_spill_pages() {
        let dir = tempfile::tempdir().unwrap();
        let pool = spilling(&dir, 8);
        let mut s = Slots::new(pool.clone());
        for i in 0..40 * CHUNK {
            s.push_back(slot(i));
        }
        s.pop_front_while(|sl| (sl.off as u64) < 30 * CHUNK + 3);
        assert_eq!(s.first(), 30 * CHUNK + 3);
        assert_eq!(s.len(), 10 * CHUNK - 3);
        let (_, pages) = pool.chunks_and_pages();
        assert!(pages <= 10, "{pages} pages still used");
        s.pop_front_while(|_| true);
        assert!(s.is_empty());
        assert_eq!(pool.chunks_and_pages(), (0, 0));
        // It goes on from where it stopped.
        s.push_back(slot(1));
        assert_eq!(s.first(), 40 * CHUNK);
        assert_eq!(s.peek(40 * CHUNK), Some(slot(1)));
    }

    #[test]
    fn growing_by_tombstones_costs_no_memory() {
        let pool = Arc::new(SpillPool::unbounded());
        let mut s = Slots::new(pool.clone());
        s.reset(10);
        s.push_back(slot(0));
        s.grow_back_to(10 * CHUNK + 5);
        assert_eq!(s.next(), 10 * CHUNK + 5);
        assert_eq!(pool.chunks_and_pages().0, 1);
        assert_eq!(s.peek(5000), Some(TOMBSTONE));
        s.push_back(slot(9));
        assert_eq!(s.get(10 * CHUNK + 5).copied(), Some(slot(9)));
        s.grow_front_to(3);
        assert_eq!(s.first(), 3);
        assert_eq!(s.peek(3), Some(TOMBSTONE));
        assert_eq!(s.peek(10), Some(slot(0)));
    }

    #[test]
    fn front_growth_over_popped_positions_leaves_tombstones() {
        let pool = Arc::new(SpillPool::unbounded());
        let mut s = Slots::new(pool);
        for i in 0..10 {
            s.push_back(slot(i));
        }
        s.pop_front_while(|sl| sl.off < 5);
        s.grow_front_to(2);
        assert_eq!(s.peek(2), Some(TOMBSTONE));
        assert_eq!(s.peek(4), Some(TOMBSTONE));
        assert_eq!(s.peek(5), Some(slot(5)));
    }

    #[test]
    fn an_unwritable_spill_file_keeps_chunks_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: creating it fails.
        std::fs::create_dir(dir.path().join("index.spill")).unwrap();
        let pool = Arc::new(SpillPool {
            path: Some(dir.path().join("index.spill")),
            shift: 10,
            budget_chunks: 8,
            resident: AtomicUsize::new(0),
            file: Mutex::new(SpillFile::default()),
        });
        let mut s = Slots::new(pool.clone());
        for i in 0..20 * CHUNK {
            s.push_back(slot(i));
        }
        assert_eq!(pool.chunks_and_pages().0, 20);
        assert_eq!(s.peek(7), Some(slot(7)));
    }
}

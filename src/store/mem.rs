//! An in-memory `PackBackend` with fault injection, for crash simulation and fault tests.
//!
//! It keeps, per pack, the bytes a reader sees and how many of them are durable (synced), and
//! which pack creations and removals are durable (directory synced). `power_loss` turns that
//! into what a disk could hold after a power cut: unsynced bytes forgotten, the last write torn
//! at any byte, or unsynced pages reordered (a later page kept, an earlier one lost as zeros);
//! undurable creations may vanish and undurable removals may come back. Faults: `fail_sync`
//! (fsync returns EIO), `fail_append` (writes return EIO), `capacity` (writes past it return
//! ENOSPC after writing what fits, as a full disk does), `fail_reads` (reads of one pack return
//! EIO), and `crash_after` (power is cut by itself after N more mutating calls; every call
//! after that fails with EIO, as a machine that lost power answers nothing).
//!
//! Invariant: `truncate` is durable when it returns (the local backend syncs it too).

use super::{PackAppender, PackBackend, PackId};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;

#[derive(Clone, Default)]
struct Pack {
    data: Vec<u8>,
    synced: usize,
    /// Start offsets of the unsynced writes, in order (for tearing at write boundaries).
    writes: Vec<usize>,
}

#[derive(Default)]
struct State {
    packs: BTreeMap<PackId, Pack>,
    /// Packs whose existence is durable.
    durable: BTreeSet<PackId>,
    /// Removed packs whose removal is not yet durable, with their durable content.
    removed: BTreeMap<PackId, Pack>,
    capacity: Option<u64>,
    fail_sync: bool,
    fail_append: bool,
    fail_reads: Option<PackId>,
    crash_after: Option<u64>,
    /// Power is off: every call fails until `power_on`.
    off: bool,
    /// Seed for the power-loss choices of an automatic crash.
    seed: u64,
    mutations: u64,
}

/// How unsynced data is treated at a power cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Everything not synced is lost.
    Forget,
    /// A prefix of the unsynced bytes survives, cut at any byte.
    Tear,
    /// A prefix survives, with some of its 4 KiB pages lost (zeros): writes reordered.
    Reorder,
}

pub struct MemBackend {
    st: Arc<Mutex<State>>,
}

/// A small deterministic generator (splitmix64), so a seed reproduces a crash exactly.
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn missing() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

fn dead() -> io::Error {
    io::Error::other("simulated power loss: device is off")
}

/// A simulated EIO (`what` is for the reader of this code: the errno is what callers see).
fn eio(_what: &str) -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl State {
    fn check(&mut self) -> io::Result<()> {
        if self.off {
            return Err(dead());
        }
        Ok(())
    }

    /// Count a mutating call; cut the power when the countdown ends.
    fn mutate(&mut self) -> io::Result<()> {
        self.check()?;
        self.mutations += 1;
        if let Some(n) = self.crash_after.as_mut() {
            if *n == 0 {
                let mut seed = self.seed;
                let mode = match next(&mut seed) % 3 {
                    0 => Fault::Forget,
                    1 => Fault::Tear,
                    _ => Fault::Reorder,
                };
                self.power_loss(mode, &mut seed);
                self.crash_after = None;
                return Err(dead());
            }
            *n -= 1;
        }
        Ok(())
    }

    fn used(&self) -> u64 {
        self.packs.values().map(|p| p.data.len() as u64).sum()
    }

    fn power_loss(&mut self, mode: Fault, seed: &mut u64) {
        for (_, p) in self.packs.iter_mut() {
            let unsynced = p.data.len() - p.synced;
            let keep = match mode {
                Fault::Forget => 0,
                Fault::Tear | Fault::Reorder if unsynced == 0 => 0,
                // Often at a write boundary (a whole record lost), otherwise at any byte.
                Fault::Tear | Fault::Reorder => {
                    let r = next(seed);
                    if r.is_multiple_of(2) && !p.writes.is_empty() {
                        p.writes[(r / 2) as usize % p.writes.len()] - p.synced
                    } else {
                        (r / 2) as usize % (unsynced + 1)
                    }
                }
            };
            p.data.truncate(p.synced + keep);
            if mode == Fault::Reorder && keep > 0 {
                // Lose some unsynced pages whose successors survived.
                let first = p.synced / 4096;
                let last = (p.data.len() - 1) / 4096;
                for page in first..=last {
                    if next(seed).is_multiple_of(3) {
                        let a = (page * 4096).max(p.synced);
                        let b = ((page + 1) * 4096).min(p.data.len());
                        p.data[a..b].fill(0);
                    }
                }
            }
            p.synced = p.data.len();
            p.writes.clear();
        }
        // Directory changes that were not synced may or may not have happened.
        let created: Vec<PackId> = self
            .packs
            .keys()
            .filter(|id| !self.durable.contains(id))
            .copied()
            .collect();
        for id in created {
            if next(seed).is_multiple_of(2) {
                self.packs.remove(&id);
            } else {
                self.durable.insert(id);
            }
        }
        for (id, p) in std::mem::take(&mut self.removed) {
            if next(seed).is_multiple_of(2) {
                self.packs.insert(id, p);
                self.durable.insert(id);
            }
        }
        self.off = true;
    }
}

impl Default for MemBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemBackend {
    pub fn new() -> MemBackend {
        MemBackend {
            st: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Another handle on the same simulated disk.
    pub fn handle(&self) -> MemBackend {
        MemBackend {
            st: self.st.clone(),
        }
    }

    /// Cut the power now: the disk keeps what `mode` allows of unsynced data.
    pub fn power_loss(&self, mode: Fault, seed: u64) {
        let mut s = seed;
        let mut st = self.st.lock();
        if !st.off {
            st.power_loss(mode, &mut s);
        }
    }

    /// Cut the power by itself after `n` more mutating calls (appends, syncs, creations,
    /// removals, truncations), choosing how with `seed`.
    pub fn crash_after(&self, n: u64, seed: u64) {
        let mut st = self.st.lock();
        st.crash_after = Some(n);
        st.seed = seed;
    }

    /// Whether the power is off (a crash happened).
    pub fn is_off(&self) -> bool {
        self.st.lock().off
    }

    /// Restore power: the disk serves what survived.
    pub fn power_on(&self) {
        let mut st = self.st.lock();
        st.off = false;
        st.crash_after = None;
    }

    /// Mutating calls so far (to pick crash points within a workload's range).
    pub fn mutations(&self) -> u64 {
        self.st.lock().mutations
    }

    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.st.lock().capacity = bytes;
    }

    pub fn used(&self) -> u64 {
        self.st.lock().used()
    }

    pub fn fail_sync(&self, on: bool) {
        self.st.lock().fail_sync = on;
    }

    pub fn fail_append(&self, on: bool) {
        self.st.lock().fail_append = on;
    }

    pub fn fail_reads(&self, pack: Option<PackId>) {
        self.st.lock().fail_reads = pack;
    }
}

impl PackBackend for MemBackend {
    fn list(&self) -> io::Result<Vec<PackId>> {
        let mut st = self.st.lock();
        st.check()?;
        Ok(st.packs.keys().copied().collect())
    }

    fn len(&self, pack: PackId) -> io::Result<u64> {
        let mut st = self.st.lock();
        st.check()?;
        st.packs
            .get(&pack)
            .map(|p| p.data.len() as u64)
            .ok_or_else(missing)
    }

    fn read_at(&self, pack: PackId, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut st = self.st.lock();
        st.check()?;
        if st.fail_reads == Some(pack) {
            return Err(eio("read"));
        }
        let p = st.packs.get(&pack).ok_or_else(missing)?;
        let off =
            usize::try_from(off).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        match off.checked_add(buf.len()) {
            Some(end) if end <= p.data.len() => {
                buf.copy_from_slice(&p.data[off..end]);
                Ok(())
            }
            _ => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }

    fn open_append(&self, pack: PackId) -> io::Result<Box<dyn PackAppender>> {
        let mut st = self.st.lock();
        if !st.packs.contains_key(&pack) {
            st.mutate()?;
            st.packs.insert(pack, Pack::default());
        } else {
            st.check()?;
        }
        Ok(Box::new(MemAppender {
            st: self.st.clone(),
            pack,
        }))
    }

    fn remove(&self, pack: PackId) -> io::Result<()> {
        let mut st = self.st.lock();
        st.mutate()?;
        let p = st.packs.remove(&pack).ok_or_else(missing)?;
        if st.durable.remove(&pack) {
            let durable = Pack {
                data: p.data[..p.synced].to_vec(),
                synced: p.synced,
                writes: Vec::new(),
            };
            st.removed.insert(pack, durable);
        }
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut st = self.st.lock();
        st.mutate()?;
        if st.fail_sync {
            return Err(eio("directory fsync"));
        }
        let ids: Vec<PackId> = st.packs.keys().copied().collect();
        st.durable = ids.into_iter().collect();
        st.removed.clear();
        Ok(())
    }
}

struct MemAppender {
    st: Arc<Mutex<State>>,
    pack: PackId,
}

impl PackAppender for MemAppender {
    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.st.lock();
        st.mutate()?;
        if st.fail_append {
            return Err(eio("write"));
        }
        let room = st
            .capacity
            .map_or(u64::MAX, |c| c.saturating_sub(st.used()));
        let p = st.packs.get_mut(&self.pack).ok_or_else(missing)?;
        let n = (bytes.len() as u64).min(room) as usize;
        p.writes.push(p.data.len());
        p.data.extend_from_slice(&bytes[..n]);
        if n < bytes.len() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = self.st.lock();
        st.mutate()?;
        if st.fail_sync {
            return Err(eio("fsync"));
        }
        let p = st.packs.get_mut(&self.pack).ok_or_else(missing)?;
        p.synced = p.data.len();
        p.writes.clear();
        Ok(())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut st = self.st.lock();
        st.mutate()?;
        let p = st.packs.get_mut(&self.pack).ok_or_else(missing)?;
        let len = (len as usize).min(p.data.len());
        p.data.truncate(len);
        p.synced = len;
        p.writes.retain(|&w| w < len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_bytes_are_lost_and_synced_kept() {
        let b = MemBackend::new();
        let a = b.open_append(1).unwrap_or_else(|e| panic!("{e}"));
        a.append(b"durable").unwrap_or_else(|e| panic!("{e}"));
        a.sync().unwrap_or_else(|e| panic!("{e}"));
        b.sync_dir().unwrap_or_else(|e| panic!("{e}"));
        a.append(b"volatile").unwrap_or_else(|e| panic!("{e}"));
        b.power_loss(Fault::Forget, 1);
        assert!(b.list().is_err(), "off after the cut");
        b.power_on();
        assert_eq!(b.len(1).unwrap_or(0), 7);
        for seed in 0..50 {
            let b = MemBackend::new();
            let a = b.open_append(1).unwrap_or_else(|e| panic!("{e}"));
            a.append(&[1u8; 5000]).unwrap_or_else(|e| panic!("{e}"));
            a.sync().unwrap_or_else(|e| panic!("{e}"));
            a.append(&[2u8; 9000]).unwrap_or_else(|e| panic!("{e}"));
            b.power_loss(Fault::Reorder, seed);
            b.power_on();
            // The pack itself was never made durable in its directory: it may be gone.
            if let Ok(len) = b.len(1) {
                let mut buf = vec![0u8; len as usize];
                b.read_at(1, 0, &mut buf).unwrap_or_else(|e| panic!("{e}"));
                assert!(buf[..5000].iter().all(|&x| x == 1), "synced bytes kept");
                assert!(buf[5000..].iter().all(|&x| x == 2 || x == 0));
            }
        }
    }

    #[test]
    fn full_disk_writes_what_fits_then_enospc() {
        let b = MemBackend::new();
        b.set_capacity(Some(10));
        let a = b.open_append(1).unwrap_or_else(|e| panic!("{e}"));
        let e = a.append(&[0u8; 16]).err().and_then(|e| e.raw_os_error());
        assert_eq!(e, Some(libc::ENOSPC));
        assert_eq!(b.used(), 10);
    }

    #[test]
    fn crash_after_cuts_power_by_itself() {
        let b = MemBackend::new();
        b.crash_after(2, 7);
        let a = b.open_append(1).unwrap_or_else(|e| panic!("{e}"));
        a.append(b"x").unwrap_or_else(|e| panic!("{e}"));
        assert!(a.append(b"y").is_err());
        assert!(b.is_off());
    }
}

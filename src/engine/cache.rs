//! Decoded-block cache: an LRU bounded in bytes, keyed by record location.
//!
//! Invariant: a location names one immutable record, so entries never go stale; an entry is
//! only dropped by eviction (or when compaction deletes its pack, which makes it unreachable).

use crate::store::Loc;
use lru::LruCache;
use parking_lot::Mutex;
use std::sync::Arc;

pub struct BlockCache {
    inner: Mutex<Inner>,
    limit: usize,
}

struct Inner {
    lru: LruCache<Loc, Arc<Vec<u8>>>,
    bytes: usize,
}

impl BlockCache {
    pub fn new(limit_bytes: usize) -> BlockCache {
        BlockCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            limit: limit_bytes,
        }
    }

    pub fn get(&self, loc: &Loc) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().lru.get(loc).cloned()
    }

    pub fn insert(&self, loc: Loc, data: Arc<Vec<u8>>) {
        if data.len() > self.limit {
            return;
        }
        let mut g = self.inner.lock();
        g.bytes += data.len();
        if let Some(old) = g.lru.put(loc, data) {
            g.bytes -= old.len();
        }
        while g.bytes > self.limit {
            match g.lru.pop_lru() {
                Some((_, v)) => g.bytes -= v.len(),
                None => break,
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_by_bytes() {
        let c = BlockCache::new(250);
        for i in 0..5u64 {
            c.insert(
                Loc {
                    pack: 1,
                    off: i,
                    len: 1,
                },
                Arc::new(vec![0; 100]),
            );
        }
        assert!(c.bytes() <= 250);
        assert!(c
            .get(&Loc {
                pack: 1,
                off: 4,
                len: 1
            })
            .is_some());
        assert!(c
            .get(&Loc {
                pack: 1,
                off: 0,
                len: 1
            })
            .is_none());
    }
}

//! Counts the metadata index's keys and bytes per key tag (what each kind of entry costs) and
//! the size of its file.
//! Usage: cargo run --release --example index_census -- STORE/index.redb [COPY]
//! (store not mounted). With COPY: also copy every entry into a fresh, compacted database there
//! (what a defragmented index would take). COMPACT=1 compacts the file in place first (what the
//! mounted store does); BENCH=1 times lookups.
use redb::{Database, ReadableDatabase, TableDefinition};
use std::collections::BTreeMap;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idx");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: index_census STORE/index.redb [COPY]")?;
    let file_bytes = std::fs::metadata(&path)?.len();
    if std::env::var("COMPACT").is_ok() {
        // Compact the file in place first (what the mounted store does when it has doubled).
        let mut db = Database::open(&path)?;
        while db.compact()? {}
        drop(db);
        println!(
            "compacted in place: {file_bytes} -> {} bytes",
            std::fs::metadata(&path)?.len()
        );
    }
    let db = Database::open(&path)?;
    let rt = db.begin_read()?;
    let table = rt.open_table(TABLE)?;
    let mut by: BTreeMap<u8, (u64, u64, u64)> = BTreeMap::new();
    for kv in table.range::<&[u8]>(..)? {
        let (k, v) = kv?;
        let (k, v) = (k.value(), v.value());
        let e = by.entry(k.first().copied().unwrap_or(0)).or_default();
        e.0 += 1;
        e.1 += k.len() as u64;
        e.2 += v.len() as u64;
    }
    let (mut n, mut kb, mut vb) = (0, 0, 0);
    println!("tag  keys  key_bytes  value_bytes");
    for (t, (c, k, v)) in &by {
        println!("{}  {c}  {k}  {v}", *t as char);
        n += c;
        kb += k;
        vb += v;
    }
    println!("all  {n}  {kb}  {vb}  (file {file_bytes} bytes)");
    if std::env::var("BENCH").is_ok() {
        // What a lookup costs with a read transaction of its own (what the index does) and
        // within one long-lived transaction.
        let keys: Vec<Vec<u8>> = table
            .range::<&[u8]>(..)?
            .filter_map(|kv| kv.ok().map(|(k, _)| k.value().to_vec()))
            .collect();
        let rounds = 200_000usize;
        let t = std::time::Instant::now();
        let mut hits = 0;
        for i in 0..rounds {
            let k = &keys[i % keys.len().max(1)];
            let tx = db.begin_read()?;
            let tb = tx.open_table(TABLE)?;
            hits += usize::from(tb.get(k.as_slice())?.is_some());
        }
        let own = t.elapsed().as_nanos() as f64 / rounds as f64;
        let t = std::time::Instant::now();
        for i in 0..rounds {
            let k = &keys[i % keys.len().max(1)];
            hits += usize::from(table.get(k.as_slice())?.is_some());
        }
        let shared = t.elapsed().as_nanos() as f64 / rounds as f64;
        println!(
            "lookup: {own:.0} ns with its own read transaction, {shared:.0} ns in a shared one ({hits} hits)"
        );
    }
    if let Some(out) = std::env::args().nth(2) {
        let _ = std::fs::remove_file(&out);
        let mut fresh = Database::create(&out)?;
        let mut it = table.range::<&[u8]>(..)?;
        loop {
            let w = fresh.begin_write()?;
            let mut done = true;
            {
                let mut t = w.open_table(TABLE)?;
                for kv in it.by_ref().take(2000) {
                    let (k, v) = kv?;
                    t.insert(k.value(), v.value())?;
                    done = false;
                }
            }
            w.commit()?;
            if done {
                break;
            }
        }
        fresh.compact()?;
        drop(fresh);
        println!(
            "fresh copy: {} bytes on disk",
            std::fs::metadata(&out)?.len()
        );
    }
    Ok(())
}

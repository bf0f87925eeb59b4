//! Counts the metadata index's keys and bytes per key tag (what each kind of entry costs).
//! Usage: cargo run --release --example index_census -- STORE/index   (store not mounted)
use std::collections::BTreeMap;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: index_census STORE/index")?;
    let db = sled::Config::new().path(&path).open()?;
    let tree = db.open_tree("idx")?;
    let mut by: BTreeMap<u8, (u64, u64, u64)> = BTreeMap::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
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
    println!(
        "all  {n}  {kb}  {vb}  (on disk {} bytes)",
        db.size_on_disk()?
    );
    // With a second argument: copy every entry into a fresh database there (what a
    // defragmented index would take).
    if let Some(out) = std::env::args().nth(2) {
        let mode = if std::env::var("LOWSPACE").is_ok() {
            sled::Mode::LowSpace
        } else {
            sled::Mode::HighThroughput
        };
        let fresh = sled::Config::new().path(&out).mode(mode).open()?;
        let t = fresh.open_tree("idx")?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in tree.iter() {
            let (k, v) = kv?;
            batch.insert(k, v);
            n += 1;
            if n % 2000 == 0 {
                t.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        t.apply_batch(batch)?;
        fresh.flush()?;
        println!("fresh copy: {} bytes on disk", fresh.size_on_disk()?);
    }
    Ok(())
}

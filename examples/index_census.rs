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
    Ok(())
}

//! Counts what the packs of a store hold, per kind of record: records, metadata bytes and
//! payload bytes, split at the newest complete checkpoint (records before it are needed only
//! for their payloads). Shows where pack space goes besides file data.
//! Usage: cargo run --release --example pack_census -- STORE (store not mounted, not encrypted)
use idcfs::meta::{decode_ops, Op};
use idcfs::store::{LocalDir, PackBackend, PackLog};
use std::collections::BTreeMap;
use std::sync::Arc;

fn kind(ops: &[Op], payload: bool) -> &'static str {
    let first = ops.first();
    match first {
        Some(Op::CheckpointBegin) | Some(Op::CheckpointEnd { .. }) => "checkpoint marker",
        Some(Op::SnapShared { .. }) | Some(Op::SnapBlock { .. }) => "checkpoint",
        _ if ops
            .iter()
            .any(|o| matches!(o, Op::SnapBlock { .. } | Op::SnapShared { .. })) =>
        {
            "checkpoint"
        }
        _ if payload => "with payload",
        Some(Op::PutInode(_)) if ops.len() > 1000 => "checkpoint",
        Some(Op::PutDirent { .. }) if ops.len() > 1000 => "checkpoint",
        _ => "metadata only",
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store =
        std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: pack_census STORE")?);
    let layout = idcfs::store::manifest::open(&store)?;
    let backend: Arc<dyn PackBackend> = Arc::new(LocalDir::open(&layout.packs)?);
    let log = PackLog::open(backend.clone(), 256 << 20, None)?;
    // kind -> (records, header+meta bytes, payload bytes, ops)
    let mut by: BTreeMap<(&str, bool), (u64, u64, u64, u64)> = BTreeMap::new();
    let mut last_begin = None;
    let mut complete = 0u64;
    let mut all = Vec::new();
    let (mut plain_cp, mut packed_cp) = (0u64, 0u64);
    for p in backend.list()? {
        log.scan(p, 0, |loc, rec| {
            let ops = decode_ops(rec.version, &rec.meta).unwrap_or_default();
            for o in &ops {
                match o {
                    Op::CheckpointBegin => last_begin = Some(rec.seq),
                    Op::CheckpointEnd { begin_seq } if Some(*begin_seq) == last_begin => {
                        complete = *begin_seq
                    }
                    _ => {}
                }
            }
            let pl = rec.block.as_ref().map_or(0, |(_, p)| p.len() as u64);
            if kind(&ops, pl > 0) == "checkpoint" {
                // What the same ops take unpacked (before format 2 revision 4).
                plain_cp += idcfs::meta::encode_ops(&ops).len() as u64;
                packed_cp += rec.meta.len() as u64;
            }
            all.push((
                rec.seq,
                kind(&ops, pl > 0),
                loc.len as u64 - pl,
                pl,
                ops.len() as u64,
            ));
            Ok(())
        })?;
    }
    for (seq, k, meta, pl, n) in all {
        let e = by.entry((k, seq >= complete)).or_default();
        e.0 += 1;
        e.1 += meta;
        e.2 += pl;
        e.3 += n;
    }
    println!("newest complete checkpoint begins at seq {complete}");
    println!("checkpoint op lists: {packed_cp} bytes as written, {plain_cp} bytes unpacked");
    println!(
        "{:<20} {:>6} {:>9} {:>12} {:>14} {:>10}",
        "kind", "newer", "records", "meta bytes", "payload bytes", "ops"
    );
    for ((k, newer), (r, m, p, n)) in by {
        println!("{k:<20} {newer:>6} {r:>9} {m:>12} {p:>14} {n:>10}");
    }
    Ok(())
}

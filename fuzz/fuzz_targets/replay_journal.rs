//! Journal replay over a damaged pack: a valid journal of known records is damaged by the
//! fuzzer (bytes overwritten, garbage appended, or cut), then opened. Opening must not panic;
//! when it succeeds, the journal holds exactly a prefix of the original records (a damaged
//! tail is cut at a record boundary, never misapplied) and the index has applied just those.
//! Half the inputs go through a full rebuild (no index yet), half through replay from an
//! index that already holds the first records (damage then only hits the records after them).
#![no_main]

use idcfs::engine::journal::Journal;
use idcfs::meta::{Dirent, Kind, Op};
use idcfs::store::{MemBackend, PackBackend};
use std::sync::{Arc, OnceLock};

/// The original journal: its bytes and the end offset of each record.
fn original() -> &'static (Vec<u8>, Vec<u64>) {
    static J: OnceLock<(Vec<u8>, Vec<u64>)> = OnceLock::new();
    J.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let disk = MemBackend::new();
        let b: Arc<dyn PackBackend> = Arc::new(disk.handle());
        let (j, _) = Journal::open_with(
            b,
            &dir.path().join("index"),
            dir.path(),
            1 << 20,
            1 << 30,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut ends = Vec::new();
        for i in 0..12u64 {
            let ops = vec![
                Op::PutDirent {
                    parent: 1,
                    name: format!("f{i}").into_bytes(),
                    ent: Dirent {
                        ino: 100 + i,
                        kind: Kind::File,
                        cookie: 10 + i,
                    },
                },
                Op::SetXattr {
                    ino: 100 + i,
                    name: b"user.x".to_vec(),
                    value: vec![i as u8; (i * 7) as usize],
                },
            ];
            let loc = j.commit(&ops, None).unwrap_or_else(|e| panic!("{e}"));
            ends.push(loc.off + loc.len as u64);
        }
        j.sync().unwrap_or_else(|e| panic!("{e}"));
        let len = disk.len(1).unwrap_or(0);
        let mut bytes = vec![0u8; len as usize];
        disk.read_at(1, 0, &mut bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        (bytes, ends)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (orig, ends) = original();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let replay = mode & 4 != 0;
    // In replay mode the index already holds the records before `floor`.
    let floor = if replay { ends[2] as usize } else { 0 };
    let mut pack = orig.clone();
    match mode % 3 {
        0 => pack.extend_from_slice(rest),
        1 => {
            for pair in rest.chunks_exact(3) {
                let span = pack.len() - floor;
                let at = floor + u16::from_le_bytes([pair[0], pair[1]]) as usize % span;
                pack[at] = pair[2];
            }
        }
        _ => {
            let span = pack.len() - floor;
            let at = floor + rest.first().map_or(0, |&b| (b as usize * span) / 256);
            pack.truncate(at);
        }
    }
    let disk = MemBackend::new();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let index = dir.path().join("index");
    let a = disk.open_append(1).unwrap_or_else(|e| panic!("{e}"));
    if replay {
        a.append(&pack[..floor]).unwrap_or_else(|e| panic!("{e}"));
        let b: Arc<dyn PackBackend> = Arc::new(disk.handle());
        let opened = Journal::open_with(b, &index, dir.path(), 1 << 20, 1 << 30, None);
        let (j, _) = opened.unwrap_or_else(|e| panic!("undamaged prefix: {e}"));
        j.checkpoint_index().unwrap_or_else(|e| panic!("{e}"));
        drop(j);
        a.append(&pack[floor..]).unwrap_or_else(|e| panic!("{e}"));
    } else {
        a.append(&pack).unwrap_or_else(|e| panic!("{e}"));
    }
    drop(a);
    let b: Arc<dyn PackBackend> = Arc::new(disk.handle());
    let Ok((j, _)) = Journal::open_with(b, &index, dir.path(), 1 << 20, 1 << 30, None) else {
        return;
    };
    // What survived must be a prefix of the original records, cut at a record boundary.
    let len = disk.len(1).unwrap_or(0);
    let kept = ends.iter().position(|&e| e == len).map_or(0, |i| i + 1);
    assert!(
        len == 0 || kept > 0,
        "journal cut at {len}, not at a record boundary"
    );
    let mut now = vec![0u8; len as usize];
    disk.read_at(1, 0, &mut now)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        &now[..],
        &orig[..len as usize],
        "surviving bytes differ from the original"
    );
    // The index applied exactly the kept records.
    for i in 0..ends.len() {
        let name = format!("f{i}");
        let present = j.index.dirent(1, name.as_bytes()).ok().flatten().is_some();
        assert_eq!(
            present,
            i < kept,
            "record {i}: applied={present}, kept {kept}"
        );
    }
});

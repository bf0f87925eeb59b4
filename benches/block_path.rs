//! Criterion benchmarks of the block path: classify, encode, decode, checksum, record framing.
//! Input: 128 KiB blocks of real text (this crate's sources and /usr/share/common-licenses),
//! and of random bytes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use idcfs::classify::classify_block;
use idcfs::codec::{EncodeParams, Registry, ZSTD};
use idcfs::store::{encode, encode_record, raw_hash, BlockHeader, RawHeader, HEADER_LEN};

const BLOCK: usize = 128 * 1024;

fn text_block() -> Vec<u8> {
    let mut v = Vec::new();
    for dir in [
        concat!(env!("CARGO_MANIFEST_DIR"), "/src"),
        "/usr/share/common-licenses",
    ] {
        let mut stack = vec![std::path::PathBuf::from(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(b) = std::fs::read(&p) {
                    v.extend(b);
                }
            }
        }
    }
    while v.len() < BLOCK {
        let again = v.clone();
        v.extend(again);
    }
    v.truncate(BLOCK);
    v
}

fn random_block() -> Vec<u8> {
    let mut x = 0x243f6a8885a308d3u64;
    (0..BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let reg = Registry::default();
    let zstd = reg.get(ZSTD).cloned().unwrap_or_else(|e| panic!("{e}"));
    for (name, data) in [("text", text_block()), ("random", random_block())] {
        let mut g = c.benchmark_group(format!("block/{name}"));
        g.throughput(Throughput::Bytes(BLOCK as u64));
        g.bench_function("classify", |b| b.iter(|| classify_block(&data)));
        g.bench_function("raw_hash", |b| b.iter(|| raw_hash(&data)));
        for level in [1, 3, 9] {
            g.bench_with_input(
                BenchmarkId::new("zstd_encode", level),
                &level,
                |b, &level| {
                    let mut out = Vec::new();
                    b.iter(|| zstd.encode(&data, &EncodeParams::level(level), &mut out))
                },
            );
        }
        let mut payload = Vec::new();
        if zstd
            .encode(&data, &EncodeParams::level(3), &mut payload)
            .is_ok()
        {
            g.bench_function("zstd_decode", |b| {
                let mut out = Vec::new();
                b.iter(|| zstd.decode(&payload, 3, BLOCK, &mut out))
            });
            let hdr = BlockHeader {
                codec: ZSTD,
                params: 3,
                raw_len: BLOCK as u32,
                raw_hash: raw_hash(&data),
            };
            g.bench_function("encode_record", |b| {
                b.iter(|| encode_record(1, b"meta", Some((&hdr, &payload))))
            });
            // Encrypted stores: sealing (AES-256-GCM-SIV, keyed hash) and opening a record.
            let key = idcfs::crypto::StoreKey::from_master(&[7; 32], [1; 16], 1);
            g.bench_function("seal_record", |b| {
                b.iter(|| encode(1, b"meta", Some((&hdr, &payload)), Some(&key), 1, 0))
            });
            if let Ok(sealed) = encode(1, b"meta", Some((&hdr, &payload)), Some(&key), 1, 0) {
                g.bench_function("open_sealed_record", |b| {
                    b.iter(|| {
                        RawHeader::parse(&sealed)
                            .and_then(|h| h.finish(&sealed[HEADER_LEN..], Some(&key), 1, 0))
                    })
                });
            }
            g.bench_function("content_hash_keyed", |b| b.iter(|| key.content_hash(&data)));
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

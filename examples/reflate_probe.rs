//! Probe: re-encodes the deflate stream of one gzip file with deflate-tokens and prints sizes
//! and timings (a development aid for codec 8).
use std::time::Duration;

struct Instant(Duration);
impl Instant {
    fn now() -> Instant {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Instant(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    fn elapsed(&self) -> Duration {
        Instant::now().0.saturating_sub(self.0)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for path in std::env::args().skip(1) {
        let raw = std::fs::read(&path)?;
        let Some(start) = (if raw.starts_with(&[0x1f, 0x8b]) {
            Some(10)
        } else {
            None
        }) else {
            continue;
        };
        let mut at = start;
        if raw[3] & 8 != 0 {
            while raw[at] != 0 {
                at += 1;
            }
            at += 1;
        }
        let data = &raw[at..];
        let t = Instant::now();
        let Some((plain, side, used)) = idcfs::codec::deflate_tokens_analyze(data, 1 << 30) else {
            println!("{path}: refused");
            continue;
        };
        let enc = t.elapsed();
        let t = Instant::now();
        let mut back = Vec::new();
        for _ in 0..5 {
            back = idcfs::codec::deflate_tokens_rebuild(&plain, &side, used)?;
        }
        let dec = t.elapsed() / 5;
        assert!(back == data[..used]);
        let fast = std::env::var_os("NOZ").is_some();
        let z = if fast {
            vec![]
        } else {
            zstd::bulk::compress(&plain, 19)?
        };
        let zs = if fast {
            vec![]
        } else {
            zstd::bulk::compress(&side, 19)?
        };
        println!(
            "{path}: stream {used} plain {} zstd19(plain) {} zstd(side) {} side {} | enc {:.1} MB/s dec {:.1} MB/s",
            plain.len(),
            z.len(),
            zs.len(),
            side.len(),
            used as f64 / 1e6 / enc.as_secs_f64(),
            used as f64 / 1e6 / dec.as_secs_f64()
        );
    }
    Ok(())
}

//! Command line: `mount`, `umount`, `stats`, `fsck`, `compact`.
//!
//! Exit codes: 0 success, 1 problems found (fsck), 2 operational error.

use crate::daemon;
use crate::engine::{Options, Stats};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

pub const EXIT_OK: u8 = 0;
pub const EXIT_PROBLEMS: u8 = 1;
pub const EXIT_ERROR: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "idcfs",
    version,
    about = "Intelligent data compression filesystem"
)]
pub struct Cli {
    /// More log detail (debug level).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Mount a compressed filesystem on MOUNTPOINT (an empty directory).
    Mount {
        mountpoint: PathBuf,
        /// Store directory (default: /var/lib/idcfs/<escaped mount point> for root,
        /// ~/.local/share/idcfs/<escaped mount point> otherwise).
        #[arg(long)]
        store: Option<PathBuf>,
        /// Stay in the foreground (for systemd); otherwise return once the mount is live.
        #[arg(long)]
        foreground: bool,
        /// zstd level of the write path (1..19).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
        zstd_level: i32,
        /// Decoded-block cache size in MiB.
        #[arg(long, default_value_t = 64)]
        cache_mib: usize,
        /// Dirty data held before writers wait, in MiB.
        #[arg(long, default_value_t = 64)]
        dirty_mib: usize,
        /// Size at which pack files are sealed, in MiB (compaction works on sealed packs).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
        pack_mib: u64,
    },
    /// Flush and unmount; returns after the daemon has written everything.
    #[command(alias = "unmount")]
    Umount { mountpoint: PathBuf },
    /// Logical and stored bytes, ratio and savings, per codec (PATH: a mount or a store).
    Stats {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check every reference and checksum of an unmounted store; exit 1 when problems exist.
    Fsck {
        store: PathBuf,
        /// Recreate the metadata index from the pack files alone (the old index is kept
        /// aside as index.old-<time>).
        #[arg(long)]
        rebuild: bool,
        #[arg(long)]
        json: bool,
    },
    /// Reclaim space of overwritten and deleted data now (PATH: a mount or a store).
    Compact { path: PathBuf },
}

pub fn run(cli: Cli) -> Result<u8, String> {
    match cli.cmd {
        Cmd::Mount {
            mountpoint,
            store,
            foreground,
            zstd_level,
            cache_mib,
            dirty_mib,
            pack_mib,
        } => {
            let mp = std::fs::canonicalize(&mountpoint)
                .map_err(|e| format!("mount point {}: {e}", mountpoint.display()))?;
            let store = match store {
                Some(s) => absolute(&s)?,
                None => daemon::default_store(&mp),
            };
            if foreground {
                let opts = Options {
                    zstd_level,
                    cache_bytes: cache_mib << 20,
                    dirty_limit: dirty_mib << 20,
                    pack_max: pack_mib << 20,
                    ..Options::default()
                };
                daemon::run_foreground(&mp, &store, opts)?;
            } else {
                let extra = vec![
                    format!("--zstd-level={zstd_level}"),
                    format!("--cache-mib={cache_mib}"),
                    format!("--dirty-mib={dirty_mib}"),
                    format!("--pack-mib={pack_mib}"),
                ];
                daemon::spawn_background(&mp, &store, &extra)?;
            }
            Ok(EXIT_OK)
        }
        Cmd::Umount { mountpoint } => {
            daemon::unmount(&mountpoint)?;
            Ok(EXIT_OK)
        }
        Cmd::Stats { path, json } => {
            let stats: Stats = match daemon::control_get(&path, "stats") {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| format!("bad stats from the daemon: {e}"))?,
                Err(_) => daemon::open_offline(&path)?
                    .stats()
                    .map_err(|e| e.to_string())?,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&stats).map_err(|e| e.to_string())?
                );
            } else {
                print!("{}", render_stats(&stats));
            }
            Ok(EXIT_OK)
        }
        Cmd::Fsck {
            store,
            rebuild,
            json,
        } => {
            if rebuild {
                let idx = store.join("index");
                if idx.exists() {
                    let t = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let aside = store.join(format!("index.old-{t}"));
                    std::fs::rename(&idx, &aside)
                        .map_err(|e| format!("cannot move the index aside: {e}"))?;
                    eprintln!("idcfs: old index kept at {}", aside.display());
                }
            }
            let engine = daemon::open_offline(&store)?;
            let report = engine.fsck().map_err(|e| e.to_string())?;
            engine.shutdown().map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
                );
            } else {
                println!(
                    "checked {} inodes, {} entries, {} blocks ({} verified)",
                    report.inodes,
                    report.dirents,
                    report.blocks,
                    human(report.bytes_verified)
                );
                for p in &report.problems {
                    println!("PROBLEM: {p}");
                }
                println!(
                    "{}",
                    if report.problems.is_empty() {
                        "clean".to_string()
                    } else {
                        format!("{} problem(s)", report.problems.len())
                    }
                );
            }
            Ok(if report.problems.is_empty() {
                EXIT_OK
            } else {
                EXIT_PROBLEMS
            })
        }
        Cmd::Compact { path } => {
            match daemon::control_set(&path, "compact") {
                Ok(()) => println!("compacted"),
                Err(_) => {
                    let e = daemon::open_offline(&path)?;
                    let r = e.compact(true).map_err(|e| e.to_string())?;
                    e.shutdown().map_err(|e| e.to_string())?;
                    println!(
                        "removed {} pack(s), moved {} block(s), reclaimed {}",
                        r.packs_removed,
                        r.blocks_moved,
                        human(r.bytes_reclaimed)
                    );
                }
            }
            Ok(EXIT_OK)
        }
    }
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir().map_err(|e| e.to_string())?.join(p))
    }
}

pub fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

fn render_stats(s: &Stats) -> String {
    let mut o = String::new();
    o.push_str(&format!("store         {}\n", s.store));
    o.push_str(&format!("logical       {}\n", human(s.logical_bytes)));
    o.push_str(&format!(
        "stored        {}  (packs {}, index {}; {} journal/awaiting compaction)\n",
        human(s.stored_bytes),
        human(s.pack_bytes),
        human(s.index_bytes),
        human(s.unreferenced_bytes)
    ));
    let saved = if s.saved_bytes >= 0 {
        human(s.saved_bytes as u64)
    } else {
        format!("-{}", human(s.saved_bytes.unsigned_abs()))
    };
    o.push_str(&format!("ratio         {:.2}x  saved {saved}\n", s.ratio));
    if s.corrupt_reads > 0 {
        o.push_str(&format!("corrupt reads {}\n", s.corrupt_reads));
    }
    o.push_str(&format!(
        "\n{:<10} {:>10} {:>12} {:>12} {:>7}\n",
        "codec", "blocks", "logical", "stored", "ratio"
    ));
    for c in &s.codecs {
        let r = if c.stored_bytes > 0 {
            c.logical_bytes as f64 / c.stored_bytes as f64
        } else {
            0.0
        };
        o.push_str(&format!(
            "{:<10} {:>10} {:>12} {:>12} {:>6.2}x\n",
            c.codec,
            c.blocks,
            human(c.logical_bytes),
            human(c.stored_bytes),
            r
        ));
    }
    o
}

//! The `idcfs` command: parse arguments, set up logging, run, map failures to exit codes.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = idcfs::cli::Cli::parse();
    let default = if cli.verbose {
        "idcfs=debug"
    } else {
        "idcfs=info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDCFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        // On a write error the default reports it with `eprintln!`, which panics when
        // stderr fails too: a full disk under the daemon's log then killed whichever thread
        // logged (a compression worker holding blocks in flight, so writers and `umount`
        // waited forever).
        .log_internal_errors(false)
        .with_target(false)
        .init();
    match idcfs::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("idcfs: {e}");
            ExitCode::from(idcfs::cli::EXIT_ERROR)
        }
    }
}

/// stderr for the log; a line that cannot be written (the log's disk is full) is dropped,
/// never an error that could stop the daemon.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

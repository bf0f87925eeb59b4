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
        .with_writer(std::io::stderr)
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

//! `qdrant-agent`: the sidecar's gRPC server and a standalone CLI.

use clap::Parser;
use qdrant_agent::cli::{self, Cli, LogFormat};
use std::io::IsTerminal;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    qdrant_agent::upload::Budget::install(cli.memory_budget);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e} [{}]", e.reason());
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QDRANT_AGENT_LOG")
        // The AWS SDK warns at length for each credential and region source
        // it tries (IMDS on a laptop); the failure that matters is reported
        // once, as the agent's own error.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aws_config=error"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

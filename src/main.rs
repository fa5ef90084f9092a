use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use ocisync::cli::Command;

fn main() -> ExitCode {
    let cli = match ocisync::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging();
    // The controller uses every core; a one-shot push or pull is faster on one thread (its
    // file writes still run beside it on the blocking pool).
    let mut builder = match cli.command {
        Command::Controller(_) => tokio::runtime::Builder::new_multi_thread(),
        Command::Agent(_) => agent_runtime(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ocisync::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes, never a backtrace.
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

/// The agent, one per node, runs few tasks at a time: its pass loop runs on the main
/// thread (`block_on`), its two watches and health server on one worker, and its disk work
/// one blocking task at a time (a fetch's writer beside another), whatever the node's cores.
/// With glibc, each thread that allocates gets its own malloc arena, which keeps what it
/// once held: fewer threads keep the agent's memory from growing with the files it writes
/// (the image's static musl build has no arenas; there, fewer threads are just fewer
/// stacks).
fn agent_runtime() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1).max_blocking_threads(2);
    builder
}

/// Structured logs on stderr: JSON when not on a terminal, `RUST_LOG` filters (default info).
/// kube's client logs each failed request at error level; ocisync reports those failures
/// itself (once, with context), so that logger is off unless `RUST_LOG` names kube_client
/// (the chart's `RUST_LOG=info` keeps it off too).
fn init_logging() {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("kube_client") {
        spec
    } else {
        format!("{spec},kube_client::client::builder=off")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

/// Help and version print as clap renders them; a usage error prints its first line only,
/// with a pointer to `--help`, and exits 2.
fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {first} (see 'ocisync --help')");
            ExitCode::from(2)
        }
    }
}

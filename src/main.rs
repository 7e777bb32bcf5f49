//! The `pgferry` command line: parses arguments, sets up logging, and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Moves data between PostgreSQL and Macrometa GDN.
#[derive(Debug, Parser)]
#[command(name = "pgferry", version, about)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` for machines.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check every prerequisite of a PostgreSQL source and print what to fix.
    Check(CheckArgs),
    /// Run a pipeline: copy the selected PostgreSQL tables into GDN collections (FULL_TABLE).
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Pipeline file: {"source": {…}, "destination": {…}, "tables": […], …}.
    #[arg(short, long)]
    config: PathBuf,
    /// Copy workers (overrides "parallelism" in the file; default: the number of cores).
    #[arg(long)]
    parallelism: Option<usize>,
    /// Write nowhere (decode, encode and batch only): measures the source side alone.
    #[arg(long, value_parser = ["null"])]
    destination: Option<String>,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Source config (the old tap's keys) or a pipeline file with a `source` object.
    #[arg(short, long)]
    config: PathBuf,
    /// Output for people (`text`) or machines (`json`).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

/// Exit code for a configuration or usage error: fix the input, do not retry.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failed check or run: the environment needs attention.
const EXIT_FAILURE: u8 = 1;

async fn check(args: CheckArgs) -> ExitCode {
    let config = match pgferry::config::PgSourceConfig::from_file(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let report = pgferry::check::run(&config).await;
    if args.format == "json" {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("error: could not encode the report: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    } else {
        print!("{}", report.to_text());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let mut config = match pgferry::config::PipelineConfig::from_file(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(workers) = args.parallelism {
        if workers == 0 {
            eprintln!("error: --parallelism must be at least 1");
            return ExitCode::from(EXIT_CONFIG);
        }
        config.parallelism = workers;
    }
    if args.destination.is_some() {
        config.destination = pgferry::config::DestinationConfig::Null;
    }
    match pgferry::pipeline::run(&config).await {
        Ok(summary) => {
            print!("{}", summary.to_text());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGFERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::from(70);
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Check(args) => check(args).await,
            Command::Run(args) => run(args).await,
        }
    })
}

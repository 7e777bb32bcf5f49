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
    /// Run a pipeline: PostgreSQL tables into GDN collections (FULL_TABLE or LOG_BASED), or GDN
    /// collections into PostgreSQL tables (source type gdn, destination type postgres).
    Run(RunArgs),
    /// Print the Singer catalog of a PostgreSQL source, as the old source's --discover did.
    Discover(DiscoverArgs),
    /// Compare every selected table of a pipeline with its destination, by key and value,
    /// through the pipeline's own conversion; exit 1 naming what differs.
    ///
    /// PostgreSQL -> GDN: the documents the copy would write now against the stored ones
    /// (without _id and _rev). PostgreSQL -> PostgreSQL: rows as text by key. Rows are hashed
    /// into buckets by key on both sides; only differing buckets are read again. While a
    /// LOG_BASED pipeline streams, differing keys are looked at again once it has confirmed the
    /// source's WAL position (at most --settle-timeout).
    Verify(VerifyArgs),
    /// Run gdnlite, a durable local GDN REST server for development and tests (not a GDN).
    ///
    /// Serves the part of the GDN API that pyC8 and the Macrometa connectors use (collections,
    /// documents, cursors, collection change streams over the Pulsar WebSocket API) over
    /// HTTP/1.1 and h2c on one port, stored in redb under --data-dir. It is a development and
    /// test server: no TLS, one fabric, one API key, no replication. Prints
    /// `gdnlite listening on http://ADDR` on stdout once ready.
    Gdnlite(GdnliteArgs),
    /// Singer target into PostgreSQL (drop-in for macrometa-target-postgres): Singer messages on
    /// stdin, STATE lines on stdout once the data before them is committed.
    Target(TargetArgs),
    /// Singer tap (drop-in for macrometa-source-postgres): SCHEMA, RECORD, STATE and
    /// ACTIVATE_VERSION messages on stdout, logs on stderr.
    Tap(TapArgs),
    /// Singer target into GDN collections (drop-in for macrometa-target-collection): Singer
    /// messages on stdin, STATE lines on stdout once the data before them is durable in GDN.
    #[command(name = "target-gdn")]
    TargetGdn(TargetGdnArgs),
    /// Console interface of the old source: check the config by running discovery.
    Validate(ConsoleArgs),
    /// Console interface of the old source: each stream's attributes and their types.
    Schemas(ConsoleArgs),
    /// Console interface of the old source: each stream's first 10 rows.
    Samples(ConsoleArgs),
}

#[derive(Debug, clap::Args)]
struct ConsoleArgs {
    /// Source config: the old tap's keys (filter_schemas required).
    #[arg(short, long)]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
struct TargetGdnArgs {
    /// Target config: the old target's keys (gdn_host, fabric, api_key, target_collection, …).
    #[arg(short, long)]
    config: PathBuf,
    /// Serve Prometheus metrics on this address (the old target always served 0.0.0.0:8001).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct TapArgs {
    /// Source config: the old tap's keys (host, port, user, password, dbname, filter_schemas, …).
    #[arg(short, long)]
    config: PathBuf,
    /// State file: the last STATE value the target emitted (old tap's format accepted).
    #[arg(short, long)]
    state: Option<PathBuf>,
    /// Singer catalog selecting streams (`selected`, `replication-method` metadata).
    #[arg(long, conflicts_with = "properties")]
    catalog: Option<PathBuf>,
    /// Deprecated alias of --catalog, as in the old tap.
    #[arg(short, long)]
    properties: Option<PathBuf>,
    /// Print the catalog (discovery) and exit.
    #[arg(short, long)]
    discover: bool,
    /// Serve Prometheus metrics on this address (the old tap always served 0.0.0.0:8000).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// Target config: the old target's keys (host, port, user, password, dbname, …).
    #[arg(short, long)]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
struct GdnliteArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8529")]
    listen: std::net::SocketAddr,
    /// Directory of the database; reuse it to keep the data across restarts.
    #[arg(long)]
    data_dir: PathBuf,
    /// API key clients must send as `Authorization: apikey <key>`.
    #[arg(long, env = "GDNLITE_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Tenant name reported by /_api/user and used in stream topics.
    #[arg(long, default_value = "_mm")]
    tenant: String,
    /// The fabric served.
    #[arg(long, default_value = "_system")]
    fabric: String,
    /// Email accepted by POST /_open/auth (needs --password).
    #[arg(long, requires = "password")]
    email: Option<String>,
    /// Password accepted by POST /_open/auth (needs --email).
    #[arg(
        long,
        env = "GDNLITE_PASSWORD",
        hide_env_values = true,
        requires = "email"
    )]
    password: Option<String>,
    /// Largest request body in MiB; larger ones get 413.
    #[arg(long, default_value_t = 64)]
    max_body_mib: usize,
    /// Fault injection: milliseconds added to every fabric request.
    #[arg(long, default_value_t = 0)]
    fault_latency_ms: u64,
    /// Fault injection: share (0..1) of fabric requests answered 503.
    #[arg(long, default_value_t = 0.0)]
    fault_5xx_rate: f64,
    /// Fault injection: share (0..1) of fabric requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    fault_429_rate: f64,
    /// Fault injection: share (0..1) of fabric requests whose connection is dropped.
    #[arg(long, default_value_t = 0.0)]
    fault_reset_rate: f64,
    /// Fault injection: share (0..1) of documents failing with a per-document error.
    #[arg(long, default_value_t = 0.0)]
    fault_document_error_rate: f64,
    /// Seed of the fault generator, for repeatable runs.
    #[arg(long)]
    fault_seed: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct DiscoverArgs {
    /// Source config (the old tap's keys) or a pipeline file with a `source` object.
    #[arg(short, long)]
    config: PathBuf,
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
    /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:8000, the old source's port).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// LOG_BASED: stop once caught up with the WAL position at start (a batch run, like the old
    /// source's break_at_end_lsn); GDN sources: stop after the scan and the stream backlog present
    /// at start. Without it pgferry streams until SIGINT/SIGTERM.
    #[arg(long)]
    once: bool,
    /// LOG_BASED: copy this table again (`schema.table`; repeat the flag for several) while
    /// the others stream, then stream its changes from that copy on.
    #[arg(long, value_name = "SCHEMA.TABLE")]
    resnapshot: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// Pipeline file (the one `pgferry run` uses).
    #[arg(short, long)]
    config: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// LOG_BASED: the longest wait, in seconds, for the pipeline to catch up before differing
    /// keys are looked at again.
    #[arg(long, default_value_t = 60)]
    settle_timeout: u64,
    /// Rows per bucket (from the row estimate): a differing bucket is read again whole.
    #[arg(long, default_value_t = 10_000)]
    bucket_rows: u64,
    /// Most destination rows held in memory while differing buckets are read again.
    #[arg(long, default_value_t = 200_000)]
    detail_rows: u64,
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
    // A pipeline file (with a destination) gets its destination checked too.
    let is_pipeline = pgferry::config::read_json_object(&args.config)
        .map(|object| object.contains_key("destination"))
        .unwrap_or(false);
    let report = if is_pipeline {
        match pgferry::config::Pipeline::from_file(&args.config) {
            Ok(pipeline) => pgferry::check::run_pipeline(&pipeline).await,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    } else {
        match pgferry::config::PgSourceConfig::from_file(&args.config) {
            Ok(config) => pgferry::check::run(&config).await,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    };
    let json = (args.format == "json").then(|| serde_json::to_string_pretty(&report));
    print_report(json, || report.to_text(), report.ok)
}

/// Prints a report as `json` (when asked for, already encoded) or as text, and exits 0 when
/// `ok`, 1 otherwise (also when the JSON could not be encoded).
fn print_report(
    json: Option<serde_json::Result<String>>,
    text: impl FnOnce() -> String,
    ok: bool,
) -> ExitCode {
    match json {
        Some(Ok(json)) => println!("{json}"),
        Some(Err(error)) => {
            eprintln!("error: could not encode the report: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
        None => print!("{}", text()),
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

async fn verify(args: VerifyArgs) -> ExitCode {
    let pipeline = match pgferry::config::Pipeline::from_file(&args.config) {
        Ok(pipeline) => pipeline,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.bucket_rows == 0 || args.detail_rows == 0 {
        eprintln!("error: --bucket-rows and --detail-rows must be at least 1");
        return ExitCode::from(EXIT_CONFIG);
    }
    let options = pgferry::verify::VerifyOptions {
        bucket_rows: args.bucket_rows,
        detail_rows: args.detail_rows,
        settle_timeout: std::time::Duration::from_secs(args.settle_timeout),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = match pgferry::verify::verify(&pipeline, &options).await {
        Ok(report) => report,
        Err(error) => return report_failure(&error, error.is_config()),
    };
    let json = args.json.then(|| serde_json::to_string(&report));
    print_report(json, || report.to_text(), report.equal)
}

async fn gdnlite(args: GdnliteArgs) -> ExitCode {
    use pgferry::gdnlite::{FaultConfig, GdnLite, GdnLiteConfig};
    let mut config = GdnLiteConfig::new(args.data_dir, args.api_key);
    config.listen = args.listen;
    config.tenant = args.tenant;
    config.fabric = args.fabric;
    config.login = args
        .email
        .zip(args.password)
        .map(|(email, password)| (email, pgferry::secret::Secret::new(password)));
    config.max_body_bytes = args.max_body_mib.saturating_mul(1024 * 1024);
    config.faults = FaultConfig {
        latency: std::time::Duration::from_millis(args.fault_latency_ms),
        error_5xx_rate: args.fault_5xx_rate,
        rate_limit_rate: args.fault_429_rate,
        reset_rate: args.fault_reset_rate,
        document_error_rate: args.fault_document_error_rate,
        seed: args.fault_seed,
    };
    let handle = match GdnLite::start(config).await {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    println!("gdnlite listening on {}", handle.url());
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                eprintln!("error: could not watch for SIGTERM: {error}");
                handle.stop().await;
                return ExitCode::from(EXIT_FAILURE);
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    handle.stop().await;
    ExitCode::SUCCESS
}

async fn discover(args: DiscoverArgs) -> ExitCode {
    let config = match pgferry::config::PgSourceConfig::from_file(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match pgferry::source::discover::catalog(&config).await {
        Ok(catalog) => match serde_json::to_string_pretty(&catalog) {
            Ok(text) => {
                // Schema bounds beyond 64 bits with every digit, as `pgferry tap -d` prints them.
                let exact = pgferry::singer::tap::output::exact_integers(text.as_bytes());
                println!("{}", String::from_utf8_lossy(&exact));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: could not encode the catalog: {error}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let mut pipeline = match pgferry::config::Pipeline::from_file(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for warning in pipeline.tls_warnings() {
        tracing::warn!("{warning}");
    }
    if let Some(workers) = args.parallelism {
        if workers == 0 {
            eprintln!("error: --parallelism must be at least 1");
            return ExitCode::from(EXIT_CONFIG);
        }
        if let pgferry::config::Pipeline::FromPostgres(config) = &mut pipeline {
            config.parallelism = workers;
        }
    }
    if args.destination.is_some() {
        match &mut pipeline {
            pgferry::config::Pipeline::FromPostgres(config) => {
                config.destination = pgferry::config::DestinationConfig::Null;
            }
            pgferry::config::Pipeline::GdnToPg(_) => {
                eprintln!("error: --destination null applies to PostgreSQL sources; this pipeline reads GDN\nHINT: drop --destination null");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let metrics = std::sync::Arc::new(pgferry::metrics::Metrics::new(
        pgferry::metrics::Labels::from_env(),
    ));
    let _server = match args.metrics_addr {
        Some(addr) => match pgferry::metrics::serve(addr, std::sync::Arc::clone(&metrics)).await {
            Ok((bound, handle)) => {
                tracing::info!(%bound, "serving Prometheus metrics");
                Some(handle)
            }
            Err(error) => {
                eprintln!("error: cannot serve metrics on {addr}: {error}\nHINT: pick a free port for --metrics-addr");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => None,
    };
    let shutdown = shutdown_signal();
    let control = pgferry::pipeline::RunControl {
        shutdown,
        once: args.once,
        resnapshot: args.resnapshot.clone(),
    };
    match pgferry::pipeline::run_pipeline(&pipeline, metrics, control).await {
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

async fn target(args: TargetArgs) -> ExitCode {
    let config = match pgferry::singer::target_postgres::TargetConfig::from_file(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut stdout = std::io::stdout();
    match pgferry::singer::target_postgres::run(&config, std::io::stdin(), &mut stdout).await {
        Ok(summary) => {
            tracing::info!(
                records = summary.records,
                rows = summary.rows,
                batches = summary.batches,
                states = summary.states,
                "target finished"
            );
            ExitCode::SUCCESS
        }
        Err(error) => report_failure(&error, error.is_config()),
    }
}

/// Serves metrics on `addr` when given; `Err` carries the exit code.
async fn serve_metrics(
    addr: Option<std::net::SocketAddr>,
    metrics: &std::sync::Arc<pgferry::metrics::Metrics>,
) -> Result<Option<tokio::task::JoinHandle<()>>, ExitCode> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    match pgferry::metrics::serve(addr, std::sync::Arc::clone(metrics)).await {
        Ok((bound, handle)) => {
            tracing::info!(%bound, "serving Prometheus metrics");
            Ok(Some(handle))
        }
        Err(error) => {
            eprintln!("error: cannot serve metrics on {addr}: {error}\nHINT: pick a free port for --metrics-addr");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// A channel that turns true on SIGINT/SIGTERM.
fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
        tracing::info!("stopping: flushing what is pending and confirming it");
        let _ = stop.send(true);
        // Keep the sender alive so the receivers see the request.
        std::future::pending::<()>().await;
    });
    shutdown
}

async fn tap(args: TapArgs) -> ExitCode {
    let metrics = std::sync::Arc::new(pgferry::metrics::Metrics::new(
        pgferry::metrics::Labels::from_env(),
    ));
    let _server = match serve_metrics(args.metrics_addr, &metrics).await {
        Ok(server) => server,
        Err(code) => return code,
    };
    let options = pgferry::singer::tap::TapOptions {
        config: args.config,
        state: args.state,
        catalog: args.catalog.or(args.properties),
        discover: args.discover,
    };
    match pgferry::singer::tap::run(&options, std::io::stdout(), &metrics, shutdown_signal()).await
    {
        Ok(summary) => {
            tracing::info!(
                records = summary.records,
                streams = summary.streams,
                "tap finished"
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            metrics
                .ingest_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            report_failure(&error, error.is_input())
        }
    }
}

async fn target_gdn(args: TargetGdnArgs) -> ExitCode {
    let config = match pgferry::singer::target_gdn::TargetGdnConfig::from_file(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let metrics = std::sync::Arc::new(pgferry::metrics::Metrics::new(
        pgferry::metrics::Labels::from_env(),
    ));
    let _server = match serve_metrics(args.metrics_addr, &metrics).await {
        Ok(server) => server,
        Err(code) => return code,
    };
    let mut stdout = std::io::stdout();
    match pgferry::singer::target_gdn::run(
        &config,
        std::io::stdin(),
        &mut stdout,
        std::sync::Arc::clone(&metrics),
    )
    .await
    {
        Ok(summary) => {
            tracing::info!(
                records = summary.records,
                flushes = summary.flushes,
                states = summary.states,
                "target-gdn finished"
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            metrics
                .ingest_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            report_failure(&error, error.is_config())
        }
    }
}

/// Prints a command's error and picks its exit code: `2` when the input (config, catalog,
/// state, arguments) is at fault, `1` for a failure while running.
fn report_failure(error: &dyn std::fmt::Display, input_at_fault: bool) -> ExitCode {
    eprintln!("error: {error}");
    if input_at_fault {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// Which console command runs.
enum Console {
    Validate,
    Schemas,
    Samples,
}

async fn console(args: ConsoleArgs, which: Console) -> ExitCode {
    let result = match pgferry::singer::tap::read_config(&args.config) {
        Err(error) => Err(error),
        Ok(config) => match which {
            Console::Validate => pgferry::console::validate(&config)
                .await
                .map(|value| value.to_string()),
            Console::Schemas => pgferry::console::schemas(&config)
                .await
                .map(|value| value.to_string()),
            Console::Samples => pgferry::console::samples(&config).await,
        },
    };
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => report_failure(&error, error.is_input()),
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
            Command::Discover(args) => discover(args).await,
            Command::Verify(args) => verify(args).await,
            Command::Gdnlite(args) => gdnlite(args).await,
            Command::Target(args) => target(args).await,
            Command::Tap(args) => tap(args).await,
            Command::TargetGdn(args) => target_gdn(args).await,
            Command::Validate(args) => console(args, Console::Validate).await,
            Command::Schemas(args) => console(args, Console::Schemas).await,
            Command::Samples(args) => console(args, Console::Samples).await,
        }
    })
}

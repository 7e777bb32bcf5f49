//! `pgferry-relay`: a TCP relay that adds a round trip (and optionally a bandwidth cap) between
//! pgferry and gdnlite, so benches and tests see a link that behaves like a network
//! (`pgferry::gdnlite::relay`). Test and bench support, not for production traffic.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pgferry::gdnlite::relay::{LinkConfig, Relay};

/// Relays TCP from --listen to --upstream through a link with a round trip and a bandwidth.
#[derive(Debug, Parser)]
#[command(name = "pgferry-relay", version)]
struct Args {
    /// Address to listen on (port 0 picks one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address every connection is relayed to (gdnlite's).
    #[arg(long)]
    upstream: SocketAddr,
    /// Round trip the link adds, in milliseconds (half each way).
    #[arg(long, default_value_t = 0)]
    rtt_ms: u64,
    /// Bandwidth of each direction in megabits per second (0 = no cap).
    #[arg(long, default_value_t = 0)]
    bandwidth_mbit: u64,
    /// Bytes each direction buffers before it stops reading, in MiB.
    #[arg(long, default_value_t = 64)]
    queue_mib: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let link = LinkConfig {
        round_trip: Duration::from_millis(args.rtt_ms),
        bandwidth: (args.bandwidth_mbit > 0).then(|| args.bandwidth_mbit * 1_000_000 / 8),
        queue_bytes: args.queue_mib * 1024 * 1024,
    };
    let relay = match Relay::start(args.listen, args.upstream, link).await {
        Ok(relay) => relay,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    println!("relay listening on {}", relay.addr());
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}

//! A TCP relay that behaves like a network link, for tests and benches: every byte is held
//! for half a round trip in each direction, a direction can be capped to a bandwidth, and the
//! connections can be cut on demand.
//!
//! ```text
//!   pgferry ──TCP──▶ relay ─(queue: release at arrival + rtt/2, paced to the bandwidth)─▶ gdnlite
//!           ◀──TCP──       ◀─(the same queue the other way)─────────────────────────────
//! ```
//!
//! gdnlite's `--fault-latency-ms` delays an answer while the bytes of the request and the
//! answer cross at once, so HTTP/2 flow-control windows and window updates never wait. Through
//! the relay they do: a stream's window update reaches the sender half a round trip after the
//! receiver sent it, so a window smaller than the bandwidth-delay product stalls the sender, as
//! on a real long link. Each direction's queue holds at most [`LinkConfig::queue_bytes`]; when it
//! is full the relay stops reading, so the sender's TCP window closes (a bottleneck's buffer).
//!
//! What it does not model: the kernel acknowledges the loopback hop to the relay at once, so
//! TCP's own congestion window and slow start on the sender see no delay (use `tc netem` on a
//! real interface for that); there is no loss or reordering.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The most one read takes off a socket (and so the most one queued chunk holds).
const CHUNK_BYTES: usize = 64 * 1024;

/// How the link behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// The round trip the link adds (half of it each way).
    pub round_trip: Duration,
    /// Bytes per second each direction carries at most; `None` = as fast as the host copies.
    pub bandwidth: Option<u64>,
    /// Bytes a direction holds in flight before the relay stops reading (the link's buffer).
    pub queue_bytes: usize,
}

impl Default for LinkConfig {
    /// No delay, no cap, 64 MiB of buffer.
    fn default() -> LinkConfig {
        LinkConfig {
            round_trip: Duration::ZERO,
            bandwidth: None,
            queue_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The listening address could not be bound.
    #[error("the relay cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// A running relay; dropping it stops it and cuts every connection.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    connections: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on `listen` and relays every connection to `upstream` through a link like
    /// `link`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        link: LinkConfig,
    ) -> Result<Relay, RelayError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| RelayError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| RelayError::Bind {
            addr: listen,
            source,
        })?;
        let connections: Arc<Mutex<JoinSet<()>>> = Arc::default();
        let accepted = Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let link = link.clone();
                let mut set = accepted.lock().unwrap_or_else(|e| e.into_inner());
                // Reap finished connections so the set does not grow with them.
                while set.try_join_next().is_some() {}
                set.spawn(async move {
                    if let Err(error) = relay_connection(client, upstream, link).await {
                        tracing::debug!(%error, "relay connection ended");
                    }
                });
            }
        });
        Ok(Relay {
            addr,
            connections,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every open connection at once (both sockets closed with data still queued): what
    /// a client sees when a middlebox or the network drops its connection.
    pub fn reset_connections(&self) -> usize {
        let mut set = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let open = set.len();
        set.abort_all();
        open
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_connections();
    }
}

async fn relay_connection(
    client: TcpStream,
    upstream: SocketAddr,
    link: LinkConfig,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = direction(client_read, server_write, link.clone());
    let down = direction(server_read, client_write, link);
    let _ = tokio::try_join!(up, down)?;
    Ok(())
}

/// One direction: read as bytes arrive, stamp each chunk with the time it leaves the far end
/// of the link, write it then.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    link: LinkConfig,
) -> std::io::Result<()> {
    let room = Arc::new(Semaphore::new(link.queue_bytes.max(CHUNK_BYTES)));
    let (queue, mut arrivals) = mpsc::unbounded_channel::<(Bytes, Instant)>();
    let writer_room = Arc::clone(&room);
    let writer = async move {
        while let Some((chunk, at)) = arrivals.recv().await {
            tokio::time::sleep_until(at).await;
            to.write_all(&chunk).await?;
            writer_room.add_permits(chunk.len());
        }
        to.shutdown().await
    };
    let reader = async move {
        // When the last byte of what was read has left the sender's end at the capped rate.
        let mut line_free = Instant::now();
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            let read = from.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            let chunk = Bytes::copy_from_slice(&buffer[..read]);
            // The link's buffer: wait for room before reading more (the sender's TCP window
            // closes meanwhile).
            let Ok(permit) = Arc::clone(&room)
                .acquire_many_owned(u32::try_from(chunk.len()).unwrap_or(u32::MAX))
                .await
            else {
                break;
            };
            permit.forget();
            let (at, free) = release_time(Instant::now(), line_free, chunk.len(), &link);
            line_free = free;
            if queue.send((chunk, at)).is_err() {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let (read, written) = tokio::join!(reader, writer);
    read.and(written)
}

/// When a chunk of `len` bytes read at `now` leaves the far end of the link, and when the
/// sender's end of the line is free again: it waits for the line (`line_free`), takes
/// `len ÷ bandwidth` to go out, then half the round trip to cross.
fn release_time(
    now: Instant,
    line_free: Instant,
    len: usize,
    link: &LinkConfig,
) -> (Instant, Instant) {
    let sent = match link.bandwidth {
        Some(rate) if rate > 0 => {
            line_free.max(now) + Duration::from_secs_f64(len as f64 / rate as f64)
        }
        _ => now,
    };
    (sent + link.round_trip / 2, sent.max(line_free))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    #[test]
    fn a_chunk_crosses_in_half_a_round_trip_after_the_line_is_free() {
        let link = LinkConfig {
            round_trip: Duration::from_millis(100),
            ..LinkConfig::default()
        };
        let now = Instant::now();
        let (at, free) = release_time(now, now, 1_000_000, &link);
        assert_eq!(at, now + Duration::from_millis(50));
        assert_eq!(free, now, "an uncapped line is free at once");
    }

    #[test]
    fn a_capped_line_serializes_chunks_one_after_another() {
        let link = LinkConfig {
            round_trip: Duration::from_millis(20),
            bandwidth: Some(1_000_000),
            ..LinkConfig::default()
        };
        let now = Instant::now();
        // 100 kB at 1 MB/s: 100 ms on the line, then 10 ms across.
        let (first, free) = release_time(now, now, 100_000, &link);
        assert_eq!(free, now + Duration::from_millis(100));
        assert_eq!(first, now + Duration::from_millis(110));
        // Read while the line is busy: it waits its turn.
        let (second, free) = release_time(now, free, 50_000, &link);
        assert_eq!(free, now + Duration::from_millis(150));
        assert_eq!(second, now + Duration::from_millis(160));
        // Read after the line went idle: no credit for the idle time.
        let later = now + Duration::from_secs(1);
        let (third, _) = release_time(later, free, 10_000, &link);
        assert_eq!(third, later + Duration::from_millis(20));
    }

    #[tokio::test]
    async fn bytes_cross_a_delayed_capped_link_unchanged_both_ways() {
        let upstream = echo_server().await;
        let relay = Relay::start(
            "127.0.0.1:0".parse().unwrap(),
            upstream,
            LinkConfig {
                round_trip: Duration::from_millis(4),
                bandwidth: Some(50_000_000),
                queue_bytes: 64 * 1024,
            },
        )
        .await
        .unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut read, mut write) = stream.split();
        let writing = async {
            write.write_all(&payload).await.unwrap();
        };
        let mut back = vec![0u8; payload.len()];
        let reading = async {
            read.read_exact(&mut back).await.unwrap();
        };
        tokio::join!(writing, reading);
        assert!(back == payload, "the bytes came back in order, unchanged");
    }

    #[tokio::test]
    async fn cut_connections_are_closed_and_new_ones_still_relay() {
        let upstream = echo_server().await;
        let relay = Relay::start(
            "127.0.0.1:0".parse().unwrap(),
            upstream,
            LinkConfig::default(),
        )
        .await
        .unwrap();
        let mut first = TcpStream::connect(relay.addr()).await.unwrap();
        first.write_all(b"a").await.unwrap();
        let mut byte = [0u8; 1];
        first.read_exact(&mut byte).await.unwrap();
        assert_eq!(relay.reset_connections(), 1);
        let mut rest = Vec::new();
        // The cut connection ends (EOF or an error), never hangs.
        let _ = first.read_to_end(&mut rest).await;
        let mut second = TcpStream::connect(relay.addr()).await.unwrap();
        second.write_all(b"b").await.unwrap();
        second.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"b");
    }
}

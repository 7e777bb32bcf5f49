//! Replication stream frames (XLogData, primary keepalive) and standby status updates.
//!
//! Once `START_REPLICATION` succeeds, the server wraps everything in CopyData messages whose
//! payload starts with a one-byte kind (see "Streaming Replication Protocol" in the PostgreSQL
//! docs):
//!
//! ```text
//! 'w' XLogData          Int64 walStart, Int64 walEnd, Int64 sendTime, Byte[n] data
//! 'k' PrimaryKeepalive  Int64 walEnd, Int64 sendTime, Byte1 replyRequested
//! 'r' StandbyStatus     Int64 written, Int64 flushed, Int64 applied, Int64 clientTime, Byte1 reply
//! ```
//!
//! Decoding is pure and zero-copy: the XLogData payload is a slice of the received `Bytes`.
//! Every frame is checked for its exact length; a short, long or unknown frame is a typed error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use crate::pg::lsn::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Tag of an XLogData frame.
pub const XLOG_DATA_TAG: u8 = b'w';
/// Tag of a primary keepalive frame.
pub const PRIMARY_KEEPALIVE_TAG: u8 = b'k';
/// Tag of a standby status update frame (client to server).
pub const STANDBY_STATUS_UPDATE_TAG: u8 = b'r';

const XLOG_DATA_HEADER_LEN: usize = 1 + 8 + 8 + 8;
const PRIMARY_KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
/// Length of an encoded standby status update, tag included.
pub const STANDBY_STATUS_UPDATE_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

/// A timestamp as the replication protocol sends it: microseconds since 2000-01-01 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// The current time, for the `clientTime` of status updates.
    pub fn now() -> PgTimestamp {
        let since_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let micros = i64::try_from(since_unix.as_micros()).unwrap_or(i64::MAX);
        PgTimestamp(micros.saturating_sub(PG_EPOCH_OFFSET_MICROS))
    }

    /// The same instant as a `SystemTime`, for lag metrics; `None` if out of range.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let unix_micros = self.0.checked_add(PG_EPOCH_OFFSET_MICROS)?;
        let unix_micros = u64::try_from(unix_micros).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_micros(unix_micros))
    }
}

/// One decoded frame of the server's replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// A chunk of WAL data: for logical replication, one message of the output plugin.
    XLogData(XLogData),
    /// A keepalive carrying the server's current WAL end.
    PrimaryKeepalive(PrimaryKeepalive),
}

/// A chunk of WAL data; `data` is a slice of the received frame, not a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// Where this data starts in the WAL.
    pub wal_start: Lsn,
    /// The server's current end of WAL when it sent this.
    pub wal_end: Lsn,
    /// When the server sent this.
    pub server_time: PgTimestamp,
    /// The output plugin's message (wal2json JSON, pgoutput binary, …).
    pub data: Bytes,
}

/// The server's heartbeat; when `reply_requested` it wants a status update at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// When the server sent this.
    pub server_time: PgTimestamp,
    /// Whether the server disconnects us unless we answer soon (`wal_sender_timeout`).
    pub reply_requested: bool,
}

/// Why a replication frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame had no bytes at all.
    #[error("empty replication frame: the server sent a CopyData message with no payload")]
    Empty,
    /// The frame's first byte is not a kind this protocol version defines.
    #[error(
        "unknown replication frame kind {tag:#04x}: expected 'w' (XLogData) or 'k' (keepalive)"
    )]
    UnknownKind {
        /// The offending first byte.
        tag: u8,
    },
    /// The frame is shorter or longer than its kind requires.
    #[error("malformed replication frame '{kind}': {len} bytes, expected {expected}")]
    BadLength {
        /// The frame kind, as a character.
        kind: char,
        /// The length received.
        len: usize,
        /// What the kind requires, e.g. "at least 25".
        expected: &'static str,
    },
}

fn read_u64(frame: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&frame[at..at + 8]);
    u64::from_be_bytes(raw)
}

impl ReplicationMessage {
    /// Decodes one CopyData payload of a replication stream.
    pub fn parse(frame: Bytes) -> Result<ReplicationMessage, FrameError> {
        let tag = *frame.first().ok_or(FrameError::Empty)?;
        match tag {
            XLOG_DATA_TAG => {
                if frame.len() < XLOG_DATA_HEADER_LEN {
                    return Err(FrameError::BadLength {
                        kind: 'w',
                        len: frame.len(),
                        expected: "at least 25",
                    });
                }
                Ok(ReplicationMessage::XLogData(XLogData {
                    wal_start: Lsn::from_u64(read_u64(&frame, 1)),
                    wal_end: Lsn::from_u64(read_u64(&frame, 9)),
                    server_time: PgTimestamp(read_u64(&frame, 17) as i64),
                    data: frame.slice(XLOG_DATA_HEADER_LEN..),
                }))
            }
            PRIMARY_KEEPALIVE_TAG => {
                if frame.len() != PRIMARY_KEEPALIVE_LEN {
                    return Err(FrameError::BadLength {
                        kind: 'k',
                        len: frame.len(),
                        expected: "exactly 18",
                    });
                }
                Ok(ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                    wal_end: Lsn::from_u64(read_u64(&frame, 1)),
                    server_time: PgTimestamp(read_u64(&frame, 9) as i64),
                    reply_requested: frame[17] != 0,
                }))
            }
            tag => Err(FrameError::UnknownKind { tag }),
        }
    }
}

/// What we tell the server we have: written, flushed (durable) and applied WAL positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last WAL position received and written locally.
    pub written: Lsn,
    /// Last WAL position durably stored: the server may recycle WAL and advance the slot to here.
    pub flushed: Lsn,
    /// Last WAL position applied.
    pub applied: Lsn,
    /// When this update was made.
    pub client_time: PgTimestamp,
    /// Asks the server to answer with a keepalive at once.
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Appends the encoded frame (the CopyData payload, without the CopyData header) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(STANDBY_STATUS_UPDATE_LEN);
        out.put_u8(STANDBY_STATUS_UPDATE_TAG);
        out.put_u64(self.written.as_u64());
        out.put_u64(self.flushed.as_u64());
        out.put_u64(self.applied.as_u64());
        out.put_i64(self.client_time.0);
        out.put_u8(u8::from(self.reply_requested));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlog_frame(start: u64, end: u64, time: i64, data: &[u8]) -> Bytes {
        let mut frame = BytesMut::new();
        frame.put_u8(b'w');
        frame.put_u64(start);
        frame.put_u64(end);
        frame.put_i64(time);
        frame.put_slice(data);
        frame.freeze()
    }

    #[test]
    fn xlog_data_slices_the_payload_without_copying() {
        let frame = xlog_frame(0x1_0000_0010, 0x1_0000_0020, 42, br#"{"action":"B"}"#);
        let ReplicationMessage::XLogData(xlog) = ReplicationMessage::parse(frame.clone()).unwrap()
        else {
            panic!("expected XLogData");
        };
        assert_eq!(xlog.wal_start.to_string(), "1/10");
        assert_eq!(xlog.wal_end.to_string(), "1/20");
        assert_eq!(xlog.server_time, PgTimestamp(42));
        assert_eq!(&xlog.data[..], br#"{"action":"B"}"#);
        assert_eq!(
            xlog.data.as_ptr(),
            frame[25..].as_ptr(),
            "payload must borrow the frame"
        );
    }

    #[test]
    fn xlog_data_may_carry_an_empty_payload() {
        let frame = xlog_frame(1, 2, 3, b"");
        let ReplicationMessage::XLogData(xlog) = ReplicationMessage::parse(frame).unwrap() else {
            panic!("expected XLogData");
        };
        assert!(xlog.data.is_empty());
    }

    #[test]
    fn keepalive_carries_wal_end_and_the_reply_flag() {
        let mut frame = BytesMut::new();
        frame.put_u8(b'k');
        frame.put_u64(0x2_0000_0100);
        frame.put_i64(-5);
        frame.put_u8(1);
        let message = ReplicationMessage::parse(frame.freeze()).unwrap();
        assert_eq!(
            message,
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: "2/100".parse().unwrap(),
                server_time: PgTimestamp(-5),
                reply_requested: true,
            })
        );
    }

    #[test]
    fn truncated_and_malformed_frames_are_typed_errors() {
        assert_eq!(
            ReplicationMessage::parse(Bytes::new()),
            Err(FrameError::Empty)
        );
        assert_eq!(
            ReplicationMessage::parse(Bytes::from_static(b"x123")),
            Err(FrameError::UnknownKind { tag: b'x' })
        );
        for len in 1..25 {
            let frame = xlog_frame(1, 2, 3, b"").slice(..len);
            assert!(
                matches!(ReplicationMessage::parse(frame), Err(FrameError::BadLength { kind: 'w', len: l, .. }) if l == len),
                "XLogData of {len} bytes"
            );
        }
        for len in [1usize, 9, 17, 19, 40] {
            let mut frame = vec![0u8; len];
            frame[0] = b'k';
            let error = ReplicationMessage::parse(Bytes::from(frame)).unwrap_err();
            assert!(error.to_string().contains("exactly 18"), "{error}");
        }
    }

    #[test]
    fn status_update_encodes_the_documented_layout() {
        let update = StandbyStatusUpdate {
            written: Lsn::from_u64(0x0102_0304_0506_0708),
            flushed: Lsn::from_u64(9),
            applied: Lsn::from_u64(10),
            client_time: PgTimestamp(11),
            reply_requested: true,
        };
        let mut out = BytesMut::new();
        update.encode(&mut out);
        let mut expected = vec![b'r', 1, 2, 3, 4, 5, 6, 7, 8];
        expected.extend_from_slice(&9u64.to_be_bytes());
        expected.extend_from_slice(&10u64.to_be_bytes());
        expected.extend_from_slice(&11i64.to_be_bytes());
        expected.push(1);
        assert_eq!(&out[..], &expected[..]);
        assert_eq!(out.len(), STANDBY_STATUS_UPDATE_LEN);
    }

    #[test]
    fn timestamps_convert_from_the_postgres_epoch() {
        let epoch = PgTimestamp(0).to_system_time().unwrap();
        assert_eq!(
            epoch.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_secs(946_684_800)
        );
        let now = PgTimestamp::now();
        assert!(now.0 > 800_000_000_000_000, "after 2025: {now:?}");
        assert!(PgTimestamp(i64::MIN).to_system_time().is_none());
    }
}

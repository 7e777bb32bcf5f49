//! Collection change streams: the stored message format, subscription positions, and the Apache
//! Pulsar WebSocket consumer API subset that pyC8's consumers speak.
//!
//! WebSocket framing uses tokio-tungstenite over hyper's upgraded connection: RFC 6455 has
//! enough corner cases (fragmentation, control frames between fragments, masking, close
//! handshake) that a well-tested crate is the leaner choice over hand-rolled framing.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::doclog::Ptr;

/// The kind of change a message carries (the `op` property).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOp {
    /// A new document.
    Insert,
    /// A replaced or patched document.
    Update,
    /// A removed document.
    Delete,
}

impl StreamOp {
    /// The `op` property value.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamOp::Insert => "INSERT",
            StreamOp::Update => "UPDATE",
            StreamOp::Delete => "DELETE",
        }
    }

    fn code(self) -> u8 {
        match self {
            StreamOp::Insert => 1,
            StreamOp::Update => 2,
            StreamOp::Delete => 3,
        }
    }

    fn from_code(code: u8) -> Option<StreamOp> {
        match code {
            1 => Some(StreamOp::Insert),
            2 => Some(StreamOp::Update),
            3 => Some(StreamOp::Delete),
            _ => None,
        }
    }
}

/// Stored message: op code, publish time (µs since the epoch, little endian), a body kind
/// (0: the payload follows inline; 1: a document-log pointer follows), then the body.
pub fn encode_message(op: StreamOp, publish_micros: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + payload.len());
    out.push(op.code());
    out.extend_from_slice(&publish_micros.to_le_bytes());
    out.push(0);
    out.extend_from_slice(payload);
    out
}

/// A stored message whose payload is a document body in the document log.
pub fn encode_logged_message(op: StreamOp, publish_micros: u64, ptr: Ptr) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + super::doclog::PTR_LEN);
    out.push(op.code());
    out.extend_from_slice(&publish_micros.to_le_bytes());
    out.push(1);
    out.extend_from_slice(&ptr.encode());
    out
}

/// Where a stored message's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageBody<'a> {
    /// In the message itself.
    Inline(&'a [u8]),
    /// In the document log.
    Logged(Ptr),
}

/// The parts of a stored message, or `None` if it is corrupt.
pub fn decode_stored(bytes: &[u8]) -> Option<(StreamOp, u64, MessageBody<'_>)> {
    let op = StreamOp::from_code(*bytes.first()?)?;
    let micros = u64::from_le_bytes(bytes.get(1..9)?.try_into().ok()?);
    let body = match *bytes.get(9)? {
        0 => MessageBody::Inline(bytes.get(10..)?),
        1 => MessageBody::Logged(Ptr::decode(bytes.get(10..)?)?),
        _ => return None,
    };
    Some((op, micros, body))
}

/// The parts of a message with an inline payload, or `None`.
pub fn decode_message(bytes: &[u8]) -> Option<(StreamOp, u64, &[u8])> {
    match decode_stored(bytes)? {
        (op, micros, MessageBody::Inline(payload)) => Some((op, micros, payload)),
        (_, _, MessageBody::Logged(_)) => None,
    }
}

/// A subscription's acknowledged position: everything up to `through` is acknowledged, and
/// so are the sequence numbers in `acked` (individual acks above the contiguous prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionState {
    /// Every message with a sequence number `<= through` is acknowledged.
    pub through: u64,
    /// Acknowledged messages above `through`.
    pub acked: BTreeSet<u64>,
}

impl SubscriptionState {
    /// Records an acknowledgement and advances the contiguous prefix (sequence numbers of a
    /// stream are contiguous, so the prefix catches up once the gaps are acknowledged).
    pub fn ack(&mut self, seq: u64) {
        if seq > self.through {
            self.acked.insert(seq);
        }
        while self.acked.remove(&(self.through + 1)) {
            self.through += 1;
        }
    }

    /// Whether a message still needs delivering.
    pub fn is_acked(&self, seq: u64) -> bool {
        seq <= self.through || self.acked.contains(&seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = encode_message(StreamOp::Delete, 42, b"{\"_key\":\"a\"}");
        assert_eq!(
            decode_message(&m),
            Some((StreamOp::Delete, 42, &b"{\"_key\":\"a\"}"[..]))
        );
        assert_eq!(decode_message(&m[..5]), None);
        assert_eq!(decode_message(&[9; 12]), None);
        let ptr = Ptr { offset: 7, len: 3 };
        let l = encode_logged_message(StreamOp::Insert, 1, ptr);
        assert_eq!(
            decode_stored(&l),
            Some((StreamOp::Insert, 1, MessageBody::Logged(ptr)))
        );
        assert_eq!(decode_message(&l), None);
    }

    #[test]
    fn acks_advance_the_contiguous_prefix() {
        let mut s = SubscriptionState::default();
        s.ack(2);
        assert_eq!(s.through, 0);
        assert!(s.is_acked(2) && !s.is_acked(1));
        s.ack(1);
        assert_eq!(s.through, 2);
        assert!(s.acked.is_empty());
        s.ack(1);
        s.ack(4);
        assert_eq!((s.through, s.acked.len()), (2, 1));
    }
}

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::error::{self, ApiError};
use super::http::{empty_response, json_response, Resp};
use super::params::Query;
use super::store::{self, Op};
use super::State;

/// Messages read and sent per round when the consumer does not say (Pulsar's
/// `receiverQueueSize`).
pub const DEFAULT_RECEIVER_QUEUE: u64 = 1000;
/// Most messages delivered and not yet acknowledged; delivery pauses beyond (Pulsar's
/// `maxUnackedMessagesPerConsumer` default).
pub const MAX_UNACKED: u64 = 50_000;

/// `GET /_fabric/{f}/_api/streams`: one entry per collection with a change stream.
pub fn list(state: &State, _query: &Query) -> Result<Resp, ApiError> {
    let read = state.store.read()?;
    let result: Vec<serde_json::Value> = store::collections(&read)?
        .into_iter()
        .filter(|c| c.stream)
        .map(|c| {
            serde_json::json!({
                "topic": c.name,
                "local": true,
                "db": state.fabric,
                "tenant": state.tenant,
                "type": 4,
                "name": format!("persistent://{}/c8local.{}/{}", state.tenant, state.fabric, c.name),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"error": false, "code": 200, "result": result}),
    ))
}

/// `GET /_fabric/{f}/_api/streams/{stream}/stats`: Pulsar's topic stats, stringified in
/// `result` as the OpenAPI says, with `msgBacklog` (messages not yet acknowledged) per
/// subscription, saved or attached. `{stream}` is `c8locals.<collection>` (or the bare name).
pub fn stats(state: &State, stream: &str) -> Result<Resp, ApiError> {
    let name = stream.strip_prefix("c8locals.").unwrap_or(stream);
    let read = state.store.read()?;
    match store::collection(&read, name)? {
        Some(meta) if meta.stream => {}
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                error::DATA_SOURCE_NOT_FOUND,
                format!("stream not found: '{stream}'"),
            ))
        }
    }
    let last = store::last_message_seq(&read, name)?;
    let mut subscriptions: std::collections::BTreeMap<String, SubscriptionState> =
        store::subscriptions_of(&read, name)?.into_iter().collect();
    for attached in state.attached_subscriptions(name) {
        subscriptions.entry(attached).or_default();
    }
    let subscriptions: serde_json::Map<String, serde_json::Value> = subscriptions
        .into_iter()
        .map(|(sub_name, sub)| {
            let backlog = last
                .saturating_sub(sub.through)
                .saturating_sub(sub.acked.range(sub.through + 1..=last).count() as u64);
            (
                sub_name,
                serde_json::json!({"msgBacklog": backlog, "type": "Exclusive"}),
            )
        })
        .collect();
    let stats = serde_json::json!({
        "msgInCounter": last,
        "subscriptions": subscriptions,
    });
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"error": false, "code": 200, "result": stats.to_string()}),
    ))
}

/// The Pulsar WebSocket consumer endpoint
/// `/_ws/ws/v2/consumer/persistent/<tenant>/c8local.<fabric>/<stream>/<subscription>`.
///
/// Subscriptions are exclusive: a new consumer of a subscription takes it over from the one
/// attached (which is closed after its acknowledgements are persisted), then receives every
/// message not yet acknowledged.
pub fn consumer(
    state: &Arc<State>,
    mut parts: hyper::http::request::Parts,
    tenant: String,
    namespace: String,
    stream: String,
    subscription: String,
    query: &Query,
) -> Result<Resp, ApiError> {
    if tenant != state.tenant && tenant != "_mm" {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            error::NOT_FOUND,
            format!("unknown tenant '{tenant}'"),
        ));
    }
    if namespace != format!("c8local.{}", state.fabric) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            error::NOT_FOUND,
            format!(
                "unknown namespace '{namespace}': gdnlite serves c8local.{}",
                state.fabric
            ),
        ));
    }
    let read = state.store.read()?;
    match store::collection(&read, &stream)? {
        Some(meta) if meta.stream => {}
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                error::DATA_SOURCE_NOT_FOUND,
                format!("stream not found: '{stream}' (a collection with a change stream)"),
            ))
        }
    }
    drop(read);
    let upgrade = parts
        .headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = parts.headers.get(SEC_WEBSOCKET_KEY).filter(|_| upgrade) else {
        return Err(ApiError::bad_parameter(
            "this is a WebSocket endpoint: send an Upgrade: websocket request",
        ));
    };
    let accept = derive_accept_key(key.as_bytes());
    // The subscription exists from the handshake on (stats list it), as in Pulsar.
    state.subscription_slot(&stream, &subscription);
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(ApiError::bad_parameter(
            "this connection cannot be upgraded to a WebSocket (use HTTP/1.1)",
        ));
    };
    let queue = match query.get("receiverQueueSize") {
        Some(v) => v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::bad_parameter("receiverQueueSize must be a positive integer")
        })?,
        None => DEFAULT_RECEIVER_QUEUE,
    };
    let task_state = Arc::clone(state);
    state.spawn_task(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
                if let Err(e) = run_consumer(&task_state, ws, &stream, &subscription, queue).await {
                    tracing::warn!(stream, subscription, error = %e.message, "gdnlite: stream consumer ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "gdnlite: WebSocket upgrade failed"),
        }
    });
    let mut response = empty_response(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(response)
}

/// The frame for one message, in the Pulsar WebSocket API's shape.
pub fn frame(seq: u64, stored: &[u8]) -> Option<String> {
    frame_with_count(seq, stored, 0)
}

/// The frame for one message delivered `redeliveries` times before.
pub fn frame_with_count(seq: u64, stored: &[u8], redeliveries: u32) -> Option<String> {
    let (op, micros, payload) = decode_message(stored)?;
    Some(
        serde_json::json!({
            "messageId": seq.to_string(),
            "payload": STANDARD.encode(payload),
            "properties": {"op": op.as_str()},
            "publishTime": iso8601(micros),
            "redeliveryCount": redeliveries,
        })
        .to_string(),
    )
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for microseconds since the Unix epoch.
pub fn iso8601(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let millis = (micros / 1000) % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = crate::decode::civil::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A frame a consumer sends (Pulsar WebSocket API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerCommand {
    /// `{"messageId": id}`: acknowledge.
    Ack(u64),
    /// `{"type": "negativeAcknowledge", "messageId": id}`: deliver again.
    Nack(u64),
    /// `{"type": "isEndOfTopic"}`: answered `{"endOfTopic": false}`.
    IsEndOfTopic,
    /// Anything else (permits, unknown or malformed frames): ignored.
    Ignored,
}

/// Reads one consumer frame.
pub fn parse_command(text: &str) -> ConsumerCommand {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return ConsumerCommand::Ignored;
    };
    let id = match value.get("messageId") {
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    match (value.get("type").and_then(serde_json::Value::as_str), id) {
        (None | Some("ack"), Some(id)) => ConsumerCommand::Ack(id),
        (Some("negativeAcknowledge"), Some(id)) => ConsumerCommand::Nack(id),
        (Some("isEndOfTopic"), _) => ConsumerCommand::IsEndOfTopic,
        _ => ConsumerCommand::Ignored,
    }
}

async fn persist(
    state: &State,
    stream: &str,
    subscription: &str,
    sub: &SubscriptionState,
) -> Result<(), ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.store.submit(
        true,
        Op::SaveSubscription {
            stream: stream.to_string(),
            subscription: subscription.to_string(),
            state: sub.clone(),
            reply: tx,
        },
    )?;
    rx.await
        .map_err(|_| ApiError::storage("the writer stopped before answering"))?
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// How long a frame may wait for a consumer that does not read before it is dropped (so a
/// half-open connection cannot hold its subscription forever).
pub const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends one text frame; false when the consumer is gone or stalled.
async fn send_text(ws: &mut Ws, text: String) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::text(text))).await,
        Ok(Ok(()))
    )
}

async fn run_consumer(
    state: &Arc<State>,
    mut ws: Ws,
    stream: &str,
    subscription: &str,
    queue: u64,
) -> Result<(), ApiError> {
    let slot = state.subscription_slot(stream, subscription);
    let mut takeover = slot.takeover.subscribe();
    let mut generation = 0;
    slot.takeover.send_modify(|g| {
        *g += 1;
        generation = *g;
    });
    takeover.borrow_and_update();
    // The attached consumer (if any) sees the new generation, persists and lets go.
    let _exclusive = slot.lock.lock().await;
    if *takeover.borrow_and_update() != generation {
        let _ = ws.close(None).await;
        return Ok(());
    }
    let mut sub = {
        let read = state.store.read()?;
        store::subscription(&read, stream, subscription)?.unwrap_or_default()
    };
    let mut commits = state.store.commits();
    let mut next = sub.through + 1;
    let mut in_flight = std::collections::BTreeSet::new();
    let result = async {
        loop {
            let mut maybe_more = false;
            if (in_flight.len() as u64) < MAX_UNACKED {
                commits.borrow_and_update();
                let room = (MAX_UNACKED - in_flight.len() as u64).min(queue);
                let batch = {
                    let read = state.store.read()?;
                    store::messages_from(&read, stream, next, room as usize)?
                };
                maybe_more = batch.len() as u64 == room;
                for (seq, stored) in batch {
                    next = seq + 1;
                    if sub.is_acked(seq) {
                        continue;
                    }
                    let Some(text) = frame(seq, &stored) else {
                        continue;
                    };
                    if !send_text(&mut ws, text).await {
                        return Ok(());
                    }
                    in_flight.insert(seq);
                }
            }
            let room = (in_flight.len() as u64) < MAX_UNACKED;
            let incoming = tokio::select! {
                biased;
                incoming = ws.next() => incoming,
                changed = takeover.changed() => {
                    if changed.is_err() || *takeover.borrow_and_update() != generation {
                        return Ok(()); // taken over; acknowledgements are already persisted
                    }
                    continue;
                }
                changed = commits.changed(), if room => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                () = std::future::ready(()), if room && maybe_more => continue,
            };
            let mut dirty = false;
            let mut redeliver = Vec::new();
            let mut end_of_topic_asked = false;
            let mut incoming = incoming;
            loop {
                match incoming {
                    Some(Ok(Message::Text(text))) => match parse_command(text.as_str()) {
                        ConsumerCommand::Ack(seq) => {
                            if in_flight.remove(&seq) || (seq < next && !sub.is_acked(seq)) {
                                sub.ack(seq);
                                dirty = true;
                            }
                        }
                        ConsumerCommand::Nack(seq) => {
                            if in_flight.contains(&seq) {
                                redeliver.push(seq);
                            }
                        }
                        ConsumerCommand::IsEndOfTopic => end_of_topic_asked = true,
                        ConsumerCommand::Ignored => {}
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        if dirty {
                            persist(state, stream, subscription, &sub).await?;
                        }
                        return Ok(());
                    }
                    Some(Ok(_)) => {}
                }
                match ws.next().now_or_never() {
                    Some(more) => incoming = more,
                    None => break,
                }
            }
            if dirty {
                persist(state, stream, subscription, &sub).await?;
            }
            // Answers go out after the acknowledgements are persisted.
            if end_of_topic_asked && !send_text(&mut ws, r#"{"endOfTopic":false}"#.into()).await {
                return Ok(());
            }
            for seq in redeliver {
                let stored = {
                    let read = state.store.read()?;
                    store::messages_from(&read, stream, seq, 1)?
                };
                if let Some((found, bytes)) = stored.into_iter().next().filter(|(f, _)| *f == seq) {
                    if let Some(text) = frame_with_count(found, &bytes, 1) {
                        if !send_text(&mut ws, text).await {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
    .await;
    let _ = ws.close(None).await;
    result
}

#[cfg(test)]
mod consumer_tests {
    use super::*;

    #[test]
    fn publish_times_are_iso_8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_123_456), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso8601(1_796_083_199_999_000), "2026-11-30T23:59:59.999Z");
    }

    #[test]
    fn consumer_commands() {
        use ConsumerCommand::*;
        assert_eq!(parse_command(r#"{"messageId":"17"}"#), Ack(17));
        assert_eq!(parse_command(r#"{"messageId":17}"#), Ack(17));
        assert_eq!(
            parse_command(r#"{"type":"negativeAcknowledge","messageId":"3"}"#),
            Nack(3)
        );
        assert_eq!(parse_command(r#"{"type":"isEndOfTopic"}"#), IsEndOfTopic);
        assert_eq!(
            parse_command(r#"{"type":"permit","permitMessages":10}"#),
            Ignored
        );
        assert_eq!(parse_command(r#"{"messageId":"x"}"#), Ignored);
        assert_eq!(parse_command("not json"), Ignored);
    }
}

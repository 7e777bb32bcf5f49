//! A collection's change stream, consumed over the Apache Pulsar WebSocket consumer API as
//! GDN serves it (and pyC8's `on_change` uses it):
//!
//! ```text
//! ws(s)://<api host>/_ws/ws/v2/consumer/persistent/<tenant>/c8local.<fabric>/<collection>/<subscription>
//!   ◀── {"messageId": "…", "payload": "<base64 of the document JSON>", "properties": {"op": "INSERT"|"UPDATE"|"DELETE"}, "publishTime": "…"}
//!   ──▶ {"messageId": "…"}                       (the acknowledgement)
//! ```
//!
//! Authentication is the `Authorization` header of the upgrade request (never the URL).
//! The subscription is durable on the server: messages not acknowledged are delivered again to
//! the next consumer of the same subscription, in order. So a message is acknowledged only once
//! what it carries is durable where it goes; a crash before that means it comes again.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use hyper::header::AUTHORIZATION;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::gdn::client::{encode_path_segment, GdnClient, GdnError};

/// The kind of change a stream message carries (its `op` property).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// A document was created or replaced: the payload is the whole document.
    Upsert,
    /// A document was removed: the payload holds its `_key`.
    Delete,
}

/// One message of a collection's change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMessage {
    /// The opaque id to acknowledge it with.
    pub id: String,
    /// What happened.
    pub op: ChangeOp,
    /// The document (or, for a delete, its key) as JSON text.
    pub payload: Vec<u8>,
}

/// Why the change stream cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// No connection could be made, or it broke.
    #[error("cannot reach the GDN change stream at {url}: {detail}\nHINT: check gdn_host / gdn_url and the network; messages not acknowledged are delivered again after a restart")]
    Unreachable {
        /// The URL (no credentials in it).
        url: String,
        /// The transport's reason.
        detail: String,
    },
    /// The server refused the subscription.
    #[error("GDN refused the change stream subscription at {url} with HTTP {status}{}", stream_hint(*status))]
    Refused {
        /// The URL.
        url: String,
        /// The HTTP status of the upgrade answer.
        status: u16,
    },
    /// A frame the Pulsar WebSocket API does not send.
    #[error("unexpected frame on the GDN change stream {url}: {detail}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
}

fn stream_hint(status: u16) -> &'static str {
    match status {
        401 | 403 => "\nHINT: the API key or login is not accepted for streams; check api_key (or email/password)",
        404 => "\nHINT: the collection has no change stream (or the tenant/fabric is wrong); pgferry turns it on with PUT …/properties {\"hasStream\": true}, check that the key may change collection properties",
        _ => "",
    }
}

impl StreamError {
    /// Whether reconnecting may help (the connection broke, as opposed to a refusal).
    pub fn is_retryable(&self) -> bool {
        match self {
            StreamError::Unreachable { .. } => true,
            StreamError::Refused { status, .. } => *status == 429 || *status >= 500,
            StreamError::Protocol { .. } => false,
        }
    }
}

/// Reads one frame of the consumer API: `Ok(None)` for frames that carry no message (answers
/// to control requests), an error for a message frame that is malformed.
pub fn parse_frame(text: &str) -> Result<Option<StreamMessage>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
    let id = match value.get("messageId") {
        None => return Ok(None),
        Some(serde_json::Value::String(id)) => id.clone(),
        Some(serde_json::Value::Number(id)) => id.to_string(),
        Some(_) => return Err("\"messageId\" is neither a string nor a number".into()),
    };
    let op = match value.pointer("/properties/op").and_then(|op| op.as_str()) {
        Some(op) if op.eq_ignore_ascii_case("DELETE") => ChangeOp::Delete,
        Some(op) if op.eq_ignore_ascii_case("INSERT") || op.eq_ignore_ascii_case("UPDATE") => {
            ChangeOp::Upsert
        }
        Some(other) => return Err(format!("message {id} has the unknown op {other:?}")),
        None => return Err(format!("message {id} has no \"properties\": {{\"op\"}}")),
    };
    let payload = match value.get("payload").and_then(|payload| payload.as_str()) {
        Some(encoded) => STANDARD
            .decode(encoded)
            .map_err(|error| format!("message {id}: payload is not base64: {error}"))?,
        None => return Err(format!("message {id} has no \"payload\"")),
    };
    Ok(Some(StreamMessage { id, op, payload }))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A consumer attached to one subscription of one collection's stream.
pub struct StreamConsumer {
    ws: WebSocketStream<Box<dyn Io>>,
    url: String,
}

impl std::fmt::Debug for StreamConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConsumer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The consumer URL of `collection`'s stream for `subscription`.
pub fn consumer_url(
    base_url: &str,
    tenant: &str,
    fabric: &str,
    collection: &str,
    subscription: &str,
) -> String {
    let base = base_url
        .strip_prefix("https://")
        .map(|rest| format!("wss://{rest}"))
        .or_else(|| {
            base_url
                .strip_prefix("http://")
                .map(|rest| format!("ws://{rest}"))
        })
        .unwrap_or_else(|| base_url.to_owned());
    format!(
        "{base}/_ws/ws/v2/consumer/persistent/{}/c8local.{}/{}/{}?subscriptionType=Exclusive&receiverQueueSize=1000",
        encode_path_segment(tenant),
        encode_path_segment(fabric),
        encode_path_segment(collection),
        encode_path_segment(subscription)
    )
}

async fn connect_transport(
    url: &str,
    timeout: std::time::Duration,
) -> Result<Box<dyn Io>, StreamError> {
    let unreachable = |detail: String| StreamError::Unreachable {
        url: url.to_owned(),
        detail,
    };
    let uri: hyper::Uri = url
        .parse()
        .map_err(|error| unreachable(format!("not a URL: {error}")))?;
    let tls = uri.scheme_str() == Some("wss");
    let host = uri
        .host()
        .ok_or_else(|| unreachable("no host in the URL".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| unreachable(format!("no connection within {timeout:?}")))?
    .map_err(|error| unreachable(error.to_string()))?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(Box::new(tcp));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| unreachable(error.to_string()))?
    .with_root_certificates(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|error| unreachable(format!("bad TLS server name {host:?}: {error}")))?;
    let stream = tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| unreachable(format!("no TLS handshake within {timeout:?}")))?
    .map_err(|error| unreachable(format!("TLS: {error}")))?;
    Ok(Box::new(stream))
}

impl StreamConsumer {
    /// Attaches to `subscription` of `collection`'s stream (creating the subscription on the
    /// server if it is new), authenticated as `client` is.
    pub async fn subscribe(
        client: &GdnClient,
        tenant: &str,
        collection: &str,
        subscription: &str,
        timeout: std::time::Duration,
    ) -> Result<StreamConsumer, StreamError> {
        let url = consumer_url(
            client.base_url(),
            tenant,
            client.fabric(),
            collection,
            subscription,
        );
        let transport = connect_transport(&url, timeout).await?;
        let mut request =
            url.as_str()
                .into_client_request()
                .map_err(|error| StreamError::Unreachable {
                    url: url.clone(),
                    detail: error.to_string(),
                })?;
        request
            .headers_mut()
            .insert(AUTHORIZATION, client.authorization().clone());
        let handshake = tokio_tungstenite::client_async(request, transport);
        let (ws, _) = match tokio::time::timeout(timeout, handshake).await {
            Err(_) => {
                return Err(StreamError::Unreachable {
                    url,
                    detail: format!("no WebSocket handshake within {timeout:?}"),
                })
            }
            Ok(Err(tungstenite::Error::Http(response))) => {
                return Err(StreamError::Refused {
                    url,
                    status: response.status().as_u16(),
                })
            }
            Ok(Err(error)) => {
                return Err(StreamError::Unreachable {
                    url,
                    detail: error.to_string(),
                })
            }
            Ok(Ok(connected)) => connected,
        };
        Ok(StreamConsumer { ws, url })
    }

    /// The next message; waits until one arrives. An error when the connection ends.
    pub async fn next(&mut self) -> Result<StreamMessage, StreamError> {
        loop {
            let frame = match self.ws.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    return Err(StreamError::Unreachable {
                        url: self.url.clone(),
                        detail: error.to_string(),
                    })
                }
                None => {
                    return Err(StreamError::Unreachable {
                        url: self.url.clone(),
                        detail: "the server closed the stream".into(),
                    })
                }
            };
            let text = match frame {
                Message::Text(text) => text,
                Message::Close(_) => {
                    return Err(StreamError::Unreachable {
                        url: self.url.clone(),
                        detail: "the server closed the stream".into(),
                    })
                }
                // Pings are answered by the WebSocket layer; other frames carry nothing.
                _ => continue,
            };
            match parse_frame(text.as_str()) {
                Ok(Some(message)) => return Ok(message),
                Ok(None) => continue,
                Err(detail) => {
                    return Err(StreamError::Protocol {
                        url: self.url.clone(),
                        detail,
                    })
                }
            }
        }
    }

    /// Acknowledges a message: the server will not deliver it to this subscription again.
    pub async fn ack(&mut self, id: &str) -> Result<(), StreamError> {
        let frame = serde_json::json!({ "messageId": id }).to_string();
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|error| StreamError::Unreachable {
                url: self.url.clone(),
                detail: format!("sending an acknowledgement: {error}"),
            })
    }

    /// Closes the connection cleanly (acknowledgements sent before are delivered first).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server's close frame, so the acknowledgements are processed.
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
    }
}

/// The number of messages of `collection`'s stream not yet acknowledged by `subscription`
/// (Pulsar's `msgBacklog` in `GET /_fabric/{f}/_api/streams/c8locals.<collection>/stats`);
/// `None` when the stats do not list the subscription.
pub async fn subscription_backlog(
    client: &GdnClient,
    collection: &str,
    subscription: &str,
) -> Result<Option<u64>, GdnError> {
    let rest = format!(
        "streams/{}/stats",
        encode_path_segment(&format!("c8locals.{collection}"))
    );
    let body = client.fabric_call(hyper::Method::GET, &rest, None).await?;
    let bad = |detail: String| GdnError::BadResponse {
        method: "GET".into(),
        url: format!(
            "{}/_fabric/{}/_api/{rest}",
            client.base_url(),
            client.fabric()
        ),
        detail,
    };
    let answer: serde_json::Value =
        serde_json::from_slice(&body).map_err(|error| bad(error.to_string()))?;
    // The OpenAPI: `result` is the stringified Pulsar topic stats; accept an object too.
    let stats = match answer.get("result") {
        Some(serde_json::Value::String(text)) => {
            serde_json::from_str(text).map_err(|error| bad(format!("result: {error}")))?
        }
        Some(object @ serde_json::Value::Object(_)) => object.clone(),
        _ => return Err(bad("no \"result\" with the stream's stats".into())),
    };
    Ok(stats
        .get("subscriptions")
        .and_then(|subscriptions| subscriptions.get(subscription))
        .and_then(|entry| entry.get("msgBacklog"))
        .and_then(serde_json::Value::as_u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_the_consumer_api() {
        let frame = r#"{"messageId":"7","payload":"eyJfa2V5IjoiYSJ9","properties":{"op":"INSERT"},"publishTime":"2026-01-01T00:00:00.000Z"}"#;
        assert_eq!(
            parse_frame(frame).unwrap(),
            Some(StreamMessage {
                id: "7".into(),
                op: ChangeOp::Upsert,
                payload: br#"{"_key":"a"}"#.to_vec()
            })
        );
        let delete = r#"{"messageId":"CAEQAQ==","payload":"e30=","properties":{"op":"DELETE"}}"#;
        assert_eq!(parse_frame(delete).unwrap().unwrap().op, ChangeOp::Delete);
        assert_eq!(parse_frame(r#"{"endOfTopic":false}"#).unwrap(), None);
        assert!(parse_frame("nope").is_err());
        assert!(parse_frame(r#"{"messageId":"1","payload":"e30="}"#).is_err());
        assert!(
            parse_frame(r#"{"messageId":"1","payload":"!!","properties":{"op":"INSERT"}}"#)
                .is_err()
        );
        assert!(
            parse_frame(r#"{"messageId":"1","payload":"e30=","properties":{"op":"MOVE"}}"#)
                .is_err()
        );
    }

    #[test]
    fn consumer_urls_follow_the_base_urls_scheme() {
        assert_eq!(
            consumer_url("http://127.0.0.1:8529", "_mm", "_system", "orders", "pgferry-a b"),
            "ws://127.0.0.1:8529/_ws/ws/v2/consumer/persistent/_mm/c8local._system/orders/pgferry-a%20b?subscriptionType=Exclusive&receiverQueueSize=1000"
        );
        assert!(consumer_url("https://api-x.io", "t", "f", "c", "s").starts_with("wss://api-x.io/"));
    }
}

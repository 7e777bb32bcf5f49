//! Collections: create, list, get, properties, count, truncate, drop.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::error::{self, ApiError};
use super::http::{json_response, Resp};
use super::keys::is_valid_collection_name;
use super::params::Query;
use super::store::{self, CollectionMeta, Op};
use super::State;

/// The collection description GDN returns (and pyC8's listing needs every field of).
pub fn describe(meta: &CollectionMeta) -> Value {
    json!({
        "id": meta.id.to_string(),
        "name": meta.name,
        "globallyUniqueId": format!("c{}", meta.id),
        "isSystem": meta.name.starts_with('_'),
        "status": 3,
        "type": if meta.edge { 3 } else { 2 },
        "collectionModel": "DOCUMENT",
        "isSpot": false,
        "isLocal": false,
        "strongConsistency": false,
        "hasStream": meta.stream,
        "waitForSync": meta.wait_for_sync,
        "searchEnabled": false,
    })
}

fn with_envelope(mut body: Value, code: u16) -> Value {
    if let Value::Object(map) = &mut body {
        map.insert("error".into(), Value::Bool(false));
        map.insert("code".into(), Value::from(code));
    }
    body
}

async fn submit(
    state: &State,
    sync: bool,
    make: impl FnOnce(oneshot::Sender<Result<CollectionMeta, ApiError>>) -> Op,
) -> Result<CollectionMeta, ApiError> {
    let (tx, rx) = oneshot::channel();
    state.store.submit(sync, make(tx))?;
    rx.await
        .map_err(|_| ApiError::storage("the writer stopped before answering"))?
}

fn bool_field(body: &Value, name: &str) -> Result<Option<bool>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad_parameter(format!(
            "'{name}' must be a boolean"
        ))),
    }
}

/// Serves `/_fabric/{f}/_api/collection[/{name}[/{action}]]`.
pub async fn handle(
    state: &State,
    method: &Method,
    name: Option<&str>,
    action: Option<&str>,
    query: &Query,
    body: &Bytes,
) -> Result<Resp, ApiError> {
    match (method, name, action) {
        (&Method::GET, None, None) => {
            let read = state.store.read()?;
            let exclude_system = query.flag("excludeSystem", false)?;
            let list: Vec<Value> = store::collections(&read)?
                .iter()
                .filter(|m| !(exclude_system && m.name.starts_with('_')))
                .map(describe)
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"error": false, "code": 200, "result": list}),
            ))
        }
        (&Method::POST, None, None) => {
            let body = super::json::parse_body(body)?;
            let Some(name) = body.get("name").and_then(Value::as_str) else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    error::ILLEGAL_NAME,
                    "illegal name: 'name' must be a string",
                ));
            };
            if !is_valid_collection_name(name) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    error::ILLEGAL_NAME,
                    format!("illegal name: '{name}'"),
                ));
            }
            let edge = match body.get("type") {
                None | Some(Value::Null) => false,
                Some(t) if t.as_u64() == Some(2) => false,
                Some(t) if t.as_u64() == Some(3) => true,
                Some(_) => {
                    return Err(ApiError::bad_parameter(
                        "'type' must be 2 (document) or 3 (edge)",
                    ))
                }
            };
            let meta = CollectionMeta {
                id: 0,
                name: name.to_string(),
                stream: bool_field(&body, "stream")?
                    .or(bool_field(&body, "hasStream")?)
                    .unwrap_or(false),
                wait_for_sync: bool_field(&body, "waitForSync")?.unwrap_or(false),
                edge,
            };
            let meta = submit(state, true, |tx| Op::CreateCollection(meta, tx)).await?;
            Ok(json_response(
                StatusCode::OK,
                &with_envelope(describe(&meta), 200),
            ))
        }
        (&Method::GET, Some(name), None | Some("properties") | Some("count") | Some("figures")) => {
            let read = state.store.read()?;
            let Some(meta) = store::collection(&read, name)? else {
                return Err(ApiError::collection_not_found(name));
            };
            let mut body = describe(&meta);
            if matches!(action, Some("count") | Some("figures")) {
                let count = store::count(&read, name)?;
                if let Value::Object(map) = &mut body {
                    map.insert("count".into(), Value::from(count));
                }
            }
            Ok(json_response(StatusCode::OK, &with_envelope(body, 200)))
        }
        (&Method::PUT, Some(name), Some("properties")) => {
            let body = super::json::parse_body(body)?;
            if !body.is_object() {
                return Err(ApiError::bad_parameter("the body must be a JSON object"));
            }
            let stream = bool_field(&body, "hasStream")?.or(bool_field(&body, "stream")?);
            let wait_for_sync = bool_field(&body, "waitForSync")?;
            let name = name.to_string();
            let meta = submit(state, true, |reply| Op::SetProperties {
                name,
                stream,
                wait_for_sync,
                reply,
            })
            .await?;
            Ok(json_response(
                StatusCode::OK,
                &with_envelope(describe(&meta), 200),
            ))
        }
        (&Method::PUT, Some(name), Some("truncate")) => {
            // No message on the collection's stream, as far as GDN's documentation says: the
            // OpenAPI and the client surface describe none (no delete per document, no
            // truncate event), so a consumer only sees the documents vanish.
            let name = name.to_string();
            let meta = submit(state, true, |tx| Op::Truncate(name, tx)).await?;
            Ok(json_response(
                StatusCode::OK,
                &with_envelope(describe(&meta), 200),
            ))
        }
        (&Method::PUT, Some(name), Some("load") | Some("reload")) => {
            let read = state.store.read()?;
            let Some(meta) = store::collection(&read, name)? else {
                return Err(ApiError::collection_not_found(name));
            };
            Ok(json_response(
                StatusCode::OK,
                &with_envelope(describe(&meta), 200),
            ))
        }
        (&Method::DELETE, Some(name), None) => {
            let name = name.to_string();
            let meta = submit(state, true, |tx| Op::DropCollection(name, tx)).await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"error": false, "code": 200, "id": meta.id.to_string()}),
            ))
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            error::METHOD_NOT_ALLOWED,
            format!("{method} is not supported on this collection path"),
        )),
    }
}

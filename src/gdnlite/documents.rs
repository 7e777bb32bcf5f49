//! Document writes and reads: preparing a batch (validation happens here, before anything is
//! queued, so a document that fails validation never causes a partial write), PATCH merge
//! semantics, and the answers in GDN's shape.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::error::{self, ApiError};
use super::http::{empty_response, json_bytes_response, Resp};
use super::keys::is_valid_key;
use super::params::Query;
use super::store::{self, Op};
use super::State;

/// What a batch does to each document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteKind {
    /// POST: insert; with `overwrite`, replace an existing document.
    Insert {
        /// Replace instead of failing with 1210.
        overwrite: bool,
    },
    /// PUT: replace an existing document.
    Replace,
    /// PATCH: merge into an existing document.
    Update {
        /// Keep attributes set to null instead of removing them.
        keep_null: bool,
        /// Merge nested objects instead of replacing them.
        merge_objects: bool,
    },
    /// DELETE.
    Remove,
}

/// A validated document write, ready for the writer.
#[derive(Debug, Clone)]
pub struct PreparedDoc {
    /// The document key.
    pub key: String,
    /// The revision the write creates.
    pub rev: String,
    /// The full new document as stored (insert / replace); empty otherwise.
    pub body: Vec<u8>,
    /// The attributes to merge (update only).
    pub patch: Option<Map<String, Value>>,
    /// The `_rev` the stored document must have (`ignoreRevs=false` or `If-Match`).
    pub expected_rev: Option<String>,
}

/// One entry of a batch: ready, or already failed validation.
#[derive(Debug, Clone)]
pub enum DocItem {
    /// Valid; the writer applies it.
    Ready(PreparedDoc),
    /// Invalid; its error is reported in place.
    Failed(u32, String),
}

/// A batch of document writes on one collection.
#[derive(Debug, Clone)]
pub struct DocBatch {
    /// Collection name.
    pub collection: String,
    /// The operation.
    pub kind: WriteKind,
    /// One entry per input document, in input order.
    pub items: Vec<DocItem>,
    /// Keep the previous document for the answer.
    pub return_old: bool,
    /// Keep the new document for the answer.
    pub return_new: bool,
}

/// The result of one document write.
#[derive(Debug, Clone)]
pub enum DocOutcome {
    /// Applied.
    Ok(DocResult),
    /// Failed with this error number and message.
    Err(u32, String),
}

/// What an applied write reports.
#[derive(Debug, Clone)]
pub struct DocResult {
    /// The key.
    pub key: String,
    /// The new revision (for a removal: the removed revision).
    pub rev: String,
    /// The previous revision, if there was a document.
    pub old_rev: Option<String>,
    /// The previous document (when `returnOld`).
    pub old: Option<Vec<u8>>,
    /// The new document (when `returnNew`).
    pub new: Option<Vec<u8>>,
}

/// Merges `patch` into `base` as GDN's PATCH does: `null` removes an attribute unless
/// `keep_null`; nested objects merge when `merge_objects`, else they replace.
pub fn merge_patch(
    base: &mut Map<String, Value>,
    patch: Map<String, Value>,
    keep_null: bool,
    merge_objects: bool,
) {
    for (name, value) in patch {
        match value {
            Value::Null if !keep_null => {
                base.remove(&name);
            }
            Value::Object(inner) if merge_objects => match base.get_mut(&name) {
                Some(Value::Object(existing)) => {
                    merge_patch(existing, inner, keep_null, merge_objects)
                }
                _ => {
                    base.insert(name, strip_nulls(Value::Object(inner), keep_null));
                }
            },
            other => {
                base.insert(name, strip_nulls(other, keep_null));
            }
        }
    }
}

fn strip_nulls(value: Value, keep_null: bool) -> Value {
    match value {
        Value::Object(map) if !keep_null => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v, keep_null)))
                .collect(),
        ),
        other => other,
    }
}

/// The `X-C8-Error-Codes` value for a batch (`1202:1,1210:2`, codes ascending), or `None`
/// when every document succeeded.
pub fn error_codes_header(outcomes: &[DocOutcome]) -> Option<String> {
    let mut counts = std::collections::BTreeMap::new();
    for outcome in outcomes {
        if let DocOutcome::Err(num, _) = outcome {
            *counts.entry(*num).or_insert(0u64) += 1;
        }
    }
    if counts.is_empty() {
        return None;
    }
    Some(
        counts
            .iter()
            .map(|(num, n)| format!("{num}:{n}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// A revision string for a clock value (GDN's revisions are opaque short strings).
pub fn rev_string(tick: u64) -> String {
    use base64::Engine;
    format!(
        "_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tick.to_be_bytes())
    )
}

/// The status of a single-document failure.
fn status_of(error_num: u32) -> StatusCode {
    match error_num {
        error::UNIQUE_CONSTRAINT_VIOLATED => StatusCode::CONFLICT,
        error::DOCUMENT_NOT_FOUND => StatusCode::NOT_FOUND,
        error::CONFLICT => StatusCode::PRECONDITION_FAILED,
        error::INJECTED_FAULT => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Key rules broken by a `_key` value, as a per-document error.
fn key_of(value: Option<&Value>, required: bool) -> Result<Option<String>, (u32, String)> {
    match value {
        None if required => Err((error::DOCUMENT_KEY_MISSING, "document key missing".into())),
        None => Ok(None),
        Some(Value::String(k)) if is_valid_key(k) => Ok(Some(k.clone())),
        Some(_) => Err((error::DOCUMENT_KEY_BAD, "illegal document key".into())),
    }
}

/// The `If-Match` / `If-None-Match` revisions of a request.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    /// The revision the document must have.
    pub if_match: Option<String>,
    /// Answer 304 when the document has this revision.
    pub if_none_match: Option<String>,
}

/// Options of a document write taken from the query string.
struct WriteOptions {
    wait_for_sync: bool,
    return_new: bool,
    return_old: bool,
    silent: bool,
    ignore_revs: bool,
}

/// Serves `/_fabric/{f}/_api/document/{collection}[/{key}]`.
pub async fn handle(
    state: &State,
    method: &Method,
    collection: &str,
    key: Option<&str>,
    query: &Query,
    preconditions: Preconditions,
    body: &Bytes,
) -> Result<Resp, ApiError> {
    let Preconditions {
        if_match,
        if_none_match,
    } = preconditions;
    let read = state.store.read()?;
    let Some(meta) = store::collection(&read, collection)? else {
        return Err(ApiError::collection_not_found(collection));
    };
    if *method == Method::GET || *method == Method::HEAD {
        let Some(key) = key else {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                error::METHOD_NOT_ALLOWED,
                "reading all documents needs a cursor: POST /_api/cursor",
            ));
        };
        return read_one(
            &read,
            collection,
            key,
            if_match,
            if_none_match,
            *method == Method::HEAD,
        );
    }
    drop(read);
    let options = WriteOptions {
        wait_for_sync: query.flag("waitForSync", meta.wait_for_sync)?,
        return_new: query.flag("returnNew", false)?,
        return_old: query.flag("returnOld", false)?,
        silent: query.flag("silent", false)?,
        ignore_revs: query.flag("ignoreRevs", true)?,
    };
    let kind = match *method {
        Method::POST if key.is_none() => WriteKind::Insert {
            overwrite: query.flag("overwrite", false)?,
        },
        Method::PUT => WriteKind::Replace,
        Method::PATCH => WriteKind::Update {
            keep_null: query.flag("keepNull", true)?,
            merge_objects: query.flag("mergeObjects", true)?,
        },
        Method::DELETE => WriteKind::Remove,
        _ => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                error::METHOD_NOT_ALLOWED,
                format!("method {method} is not supported on this document path"),
            ))
        }
    };
    let ignore_revs = options.ignore_revs && if_match.is_none();
    let (items, single) = match (key, &kind) {
        // The hot path: whole documents re-encoded in one pass, no `Value` tree.
        (None, WriteKind::Insert { .. } | WriteKind::Replace) => {
            match super::json::transcode_batch(body)? {
                super::json::TranscodedBody::Array(docs) => {
                    let mut ticks = state.store.reserve(2 * docs.len() as u64);
                    (
                        docs.into_iter()
                            .map(|doc| {
                                prepare_transcoded(
                                    state,
                                    collection,
                                    &kind,
                                    doc,
                                    ignore_revs,
                                    &mut ticks,
                                )
                            })
                            .collect::<Vec<_>>(),
                        false,
                    )
                }
                super::json::TranscodedBody::Single(super::json::TranscodedDoc::NotObject) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        error::DOCUMENT_TYPE_INVALID,
                        "invalid document type: the body must be a JSON object or an array",
                    ))
                }
                super::json::TranscodedBody::Single(doc) => (
                    vec![prepare_transcoded(
                        state,
                        collection,
                        &kind,
                        doc,
                        ignore_revs,
                        &mut state.store.reserve(2),
                    )],
                    true,
                ),
            }
        }
        _ => {
            let (inputs, single) = match key {
                Some(key) => {
                    let value = if kind == WriteKind::Remove {
                        Value::String(key.to_string())
                    } else {
                        let mut value = super::json::parse_body(body)?;
                        let Value::Object(map) = &mut value else {
                            return Err(ApiError::new(
                                StatusCode::BAD_REQUEST,
                                error::DOCUMENT_TYPE_INVALID,
                                "invalid document type: the body must be a JSON object",
                            ));
                        };
                        map.insert("_key".into(), Value::String(key.to_string()));
                        if let Some(rev) = &if_match {
                            map.insert("_rev".into(), Value::String(rev.clone()));
                        }
                        value
                    };
                    (vec![value], true)
                }
                None => match super::json::parse_body(body)? {
                    Value::Array(items) => (items, false),
                    Value::Object(map) => (vec![Value::Object(map)], true),
                    other if kind == WriteKind::Remove && other.is_string() => (vec![other], true),
                    _ => {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            error::DOCUMENT_TYPE_INVALID,
                            "invalid document type: the body must be a JSON object or an array",
                        ))
                    }
                },
            };
            let mut ticks = state.store.reserve(2 * inputs.len() as u64);
            let items: Vec<DocItem> = inputs
                .into_iter()
                .map(|doc| prepare(state, collection, &kind, doc, ignore_revs, &mut ticks))
                .collect();
            (items, single)
        }
    };
    let batch = DocBatch {
        collection: collection.to_string(),
        kind: kind.clone(),
        items,
        return_old: options.return_old,
        return_new: options.return_new,
    };
    let (tx, rx) = oneshot::channel();
    state
        .store
        .submit(options.wait_for_sync, Op::Documents(batch, tx))?;
    let outcomes = rx
        .await
        .map_err(|_| ApiError::storage("the writer stopped before answering"))??;
    // Removals answer 200 when synced (the OpenAPI's DELETE), other writes 201.
    let status = if !options.wait_for_sync {
        StatusCode::ACCEPTED
    } else if kind == WriteKind::Remove {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    if single {
        let Some(outcome) = outcomes.into_iter().next() else {
            return Err(ApiError::storage("the writer returned no result"));
        };
        return match outcome {
            DocOutcome::Err(num, message) => Err(ApiError::new(status_of(num), num, message)),
            DocOutcome::Ok(result) => {
                if options.silent {
                    return Ok(json_bytes_response(status, b"{}".to_vec()));
                }
                let mut out = Vec::with_capacity(128);
                write_result(&mut out, collection, &result, &kind);
                Ok(json_bytes_response(status, out))
            }
        };
    }
    let header = error_codes_header(&outcomes);
    let mut out = Vec::with_capacity(outcomes.len() * 80 + 2);
    out.push(b'[');
    let mut first = true;
    for outcome in &outcomes {
        if options.silent && matches!(outcome, DocOutcome::Ok(_)) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        match outcome {
            DocOutcome::Ok(result) => write_result(&mut out, collection, result, &kind),
            DocOutcome::Err(num, message) => {
                let entry = ApiError::document_entry(*num, message);
                out.extend_from_slice(entry.to_string().as_bytes());
            }
        }
    }
    out.push(b']');
    let mut response = json_bytes_response(status, out);
    if let Some(header) = header {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&header) {
            response.headers_mut().insert("x-c8-error-codes", value);
        }
    }
    Ok(response)
}

fn read_one(
    read: &store::Snapshot,
    collection: &str,
    key: &str,
    if_match: Option<String>,
    if_none_match: Option<String>,
    head: bool,
) -> Result<Resp, ApiError> {
    if !is_valid_key(key) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            error::DOCUMENT_KEY_BAD,
            "illegal document key",
        ));
    }
    let Some(doc) = store::document(read, collection, key)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            error::DOCUMENT_NOT_FOUND,
            "document not found",
        ));
    };
    let rev = store::stored_rev(&doc).unwrap_or_default();
    if if_match
        .as_deref()
        .is_some_and(|m| m.trim_matches('"') != rev)
    {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            error::CONFLICT,
            "conflict, _rev values do not match",
        ));
    }
    if if_none_match
        .as_deref()
        .is_some_and(|m| m.trim_matches('"') == rev)
    {
        return Ok(empty_response(StatusCode::NOT_MODIFIED));
    }
    let mut response = json_bytes_response(StatusCode::OK, if head { Vec::new() } else { doc });
    if let Ok(value) = hyper::header::HeaderValue::from_str(&format!("\"{rev}\"")) {
        response.headers_mut().insert(hyper::header::ETAG, value);
    }
    Ok(response)
}

/// Validates one transcoded insert/replace document and closes it with `_key`, `_id`, `_rev`.
fn prepare_transcoded(
    state: &State,
    collection: &str,
    kind: &WriteKind,
    doc: super::json::TranscodedDoc,
    ignore_revs: bool,
    ticks: &mut store::Ticks<'_>,
) -> DocItem {
    if state.faults.document_fails() {
        return DocItem::Failed(
            error::INJECTED_FAULT,
            "injected per-document fault (gdnlite fault injection); retry".into(),
        );
    }
    let super::json::TranscodedDoc::Object {
        open_body,
        key,
        rev,
    } = doc
    else {
        return DocItem::Failed(error::DOCUMENT_TYPE_INVALID, "invalid document type".into());
    };
    let key = match key_of(key.as_ref(), *kind == WriteKind::Replace) {
        Ok(Some(key)) => key,
        Ok(None) => ticks.take().to_string(),
        Err((num, message)) => return DocItem::Failed(num, message),
    };
    let expected_rev = match rev {
        Some(Value::String(rev)) if !ignore_revs => Some(rev),
        _ => None,
    };
    let rev = rev_string(ticks.take());
    let body = super::json::TranscodedDoc::finish(&open_body, &key, collection, &rev);
    DocItem::Ready(PreparedDoc {
        key,
        rev,
        body,
        patch: None,
        expected_rev,
    })
}

/// Validates one input document and builds what the writer stores.
fn prepare(
    state: &State,
    collection: &str,
    kind: &WriteKind,
    doc: Value,
    ignore_revs: bool,
    ticks: &mut store::Ticks<'_>,
) -> DocItem {
    if state.faults.document_fails() {
        return DocItem::Failed(
            error::INJECTED_FAULT,
            "injected per-document fault (gdnlite fault injection); retry".into(),
        );
    }
    let mut map = match (kind, doc) {
        (_, Value::Object(map)) => map,
        (WriteKind::Remove, Value::String(selector)) => {
            // A key, or a document handle `collection/key`.
            let key = match selector.split_once('/') {
                None => selector,
                Some((coll, key)) if coll == collection => key.to_string(),
                Some(_) => {
                    return DocItem::Failed(
                        error::DOCUMENT_HANDLE_BAD,
                        "illegal document handle: it names another collection".into(),
                    )
                }
            };
            if !is_valid_key(&key) {
                return DocItem::Failed(error::DOCUMENT_KEY_BAD, "illegal document key".into());
            }
            return DocItem::Ready(PreparedDoc {
                key,
                rev: rev_string(ticks.take()),
                body: Vec::new(),
                patch: None,
                expected_rev: None,
            });
        }
        _ => return DocItem::Failed(error::DOCUMENT_TYPE_INVALID, "invalid document type".into()),
    };
    let key = match key_of(map.get("_key"), !matches!(kind, WriteKind::Insert { .. })) {
        Ok(Some(key)) => key,
        Ok(None) => ticks.take().to_string(),
        Err((num, message)) => return DocItem::Failed(num, message),
    };
    let expected_rev = if ignore_revs {
        None
    } else {
        match map.get("_rev") {
            Some(Value::String(rev)) => Some(rev.clone()),
            _ => None,
        }
    };
    let rev = rev_string(ticks.take());
    match kind {
        WriteKind::Remove => DocItem::Ready(PreparedDoc {
            key,
            rev,
            body: Vec::new(),
            patch: None,
            expected_rev,
        }),
        WriteKind::Update { .. } => {
            map.remove("_key");
            map.remove("_id");
            map.remove("_rev");
            DocItem::Ready(PreparedDoc {
                key,
                rev,
                body: Vec::new(),
                patch: Some(map),
                expected_rev,
            })
        }
        WriteKind::Insert { .. } | WriteKind::Replace => {
            map.insert("_key".into(), Value::String(key.clone()));
            map.insert("_id".into(), Value::String(format!("{collection}/{key}")));
            map.insert("_rev".into(), Value::String(rev.clone()));
            match serde_json::to_vec(&map) {
                Ok(body) => DocItem::Ready(PreparedDoc {
                    key,
                    rev,
                    body,
                    patch: None,
                    expected_rev,
                }),
                Err(e) => DocItem::Failed(
                    error::DOCUMENT_TYPE_INVALID,
                    format!("document cannot be stored: {e}"),
                ),
            }
        }
    }
}

/// Writes `{"_id":…,"_key":…,"_rev":…[,"_oldRev":…][,"new":…][,"old":…]}`. Keys, collection
/// names and revisions are validated ASCII without quotes or backslashes, so no escaping is needed.
fn write_result(out: &mut Vec<u8>, collection: &str, r: &DocResult, kind: &WriteKind) {
    out.extend_from_slice(b"{\"_id\":\"");
    out.extend_from_slice(collection.as_bytes());
    out.push(b'/');
    out.extend_from_slice(r.key.as_bytes());
    out.extend_from_slice(b"\",\"_key\":\"");
    out.extend_from_slice(r.key.as_bytes());
    out.extend_from_slice(b"\",\"_rev\":\"");
    out.extend_from_slice(r.rev.as_bytes());
    out.push(b'"');
    if *kind != WriteKind::Remove {
        if let Some(old_rev) = &r.old_rev {
            out.extend_from_slice(b",\"_oldRev\":\"");
            out.extend_from_slice(old_rev.as_bytes());
            out.push(b'"');
        }
    }
    if let Some(new) = &r.new {
        out.extend_from_slice(b",\"new\":");
        out.extend_from_slice(new);
    }
    if let Some(old) = &r.old {
        out.extend_from_slice(b",\"old\":");
        out.extend_from_slice(old);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn patch_merges_objects_and_keeps_nulls_by_default() {
        let mut base = obj(json!({"a": 1, "n": {"x": 1, "y": 2}, "z": 0}));
        merge_patch(
            &mut base,
            obj(json!({"a": null, "n": {"y": 3, "w": null}, "b": 2})),
            true,
            true,
        );
        assert_eq!(
            Value::Object(base),
            json!({"a": null, "n": {"x": 1, "y": 3, "w": null}, "z": 0, "b": 2})
        );
    }

    #[test]
    fn patch_without_keep_null_removes_attributes_at_every_level() {
        let mut base = obj(json!({"a": 1, "n": {"x": 1, "y": 2}}));
        merge_patch(
            &mut base,
            obj(json!({"a": null, "n": {"x": null}, "m": {"q": null, "r": 1}})),
            false,
            true,
        );
        assert_eq!(Value::Object(base), json!({"n": {"y": 2}, "m": {"r": 1}}));
    }

    #[test]
    fn patch_without_merge_objects_replaces_them() {
        let mut base = obj(json!({"n": {"x": 1, "y": 2}}));
        merge_patch(&mut base, obj(json!({"n": {"y": 3}})), true, false);
        assert_eq!(Value::Object(base), json!({"n": {"y": 3}}));
    }

    #[test]
    fn error_codes_are_counted_in_code_order() {
        let outcomes = vec![
            DocOutcome::Err(1210, String::new()),
            DocOutcome::Ok(DocResult {
                key: "k".into(),
                rev: "r".into(),
                old_rev: None,
                old: None,
                new: None,
            }),
            DocOutcome::Err(1202, String::new()),
            DocOutcome::Err(1210, String::new()),
        ];
        assert_eq!(
            error_codes_header(&outcomes).as_deref(),
            Some("1202:1,1210:2")
        );
        assert_eq!(error_codes_header(&outcomes[1..2]), None);
    }

    #[test]
    fn revisions_are_distinct_json_safe_strings() {
        let a = rev_string(1);
        let b = rev_string(2);
        assert_ne!(a, b);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn key_rules_for_inputs() {
        assert_eq!(key_of(None, false), Ok(None));
        assert_eq!(
            key_of(None, true).unwrap_err().0,
            error::DOCUMENT_KEY_MISSING
        );
        assert_eq!(
            key_of(Some(&json!(5)), false).unwrap_err().0,
            error::DOCUMENT_KEY_BAD
        );
        assert_eq!(
            key_of(Some(&json!("a b")), false).unwrap_err().0,
            error::DOCUMENT_KEY_BAD
        );
        assert_eq!(key_of(Some(&json!("ok")), true), Ok(Some("ok".into())));
    }
}

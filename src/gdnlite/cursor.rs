//! Query cursors for the query shapes the connectors send: a full scan of a collection,
//! optionally with `LIMIT [offset,] count`, in key order; and pgferry's keyset page,
//! `FILTER d._key > @after SORT d._key LIMIT @count`, returning `d` or `d._key`. Each cursor reads from the redb
//! snapshot taken when it was created, so its pages are consistent with each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;

use serde_json::{Map, Value};

use super::error::{self, ApiError};
use super::http::{json_bytes_response, json_response, Resp};
use super::store;
use super::State;

/// Documents per page when the request does not say (pyC8's discovery needs at least 50).
pub const DEFAULT_BATCH_SIZE: u64 = 1000;
/// Largest page served.
pub const MAX_BATCH_SIZE: u64 = 100_000;
/// Idle seconds before an abandoned cursor is dropped, when the request does not say.
pub const DEFAULT_TTL_SECS: f64 = 30.0;

const SUPPORTED: &str = "gdnlite supports only 'FOR d IN @@collection RETURN d' and 'FOR d IN <name> RETURN d', with an optional 'FILTER d._key > @after', 'SORT d._key' and 'LIMIT [offset,] count' before RETURN, and 'RETURN d._key'";

/// A parsed supported query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanQuery {
    /// The collection to scan.
    pub collection: String,
    /// Documents skipped first.
    pub offset: u64,
    /// Most documents returned.
    pub limit: Option<u64>,
    /// Only documents whose key sorts after this one (`FILTER d._key > @after`).
    pub after: Option<String>,
    /// Answer the keys (`RETURN d._key`) instead of the documents.
    pub keys_only: bool,
}

fn parse_error(detail: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        error::QUERY_PARSE,
        format!("syntax error, {detail}; {SUPPORTED}"),
    )
}

fn tokens(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in query.chars() {
        if c.is_whitespace() || c == ',' {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            if c == ',' {
                out.push(",".into());
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn number(token: &str, bind_vars: &Map<String, Value>) -> Result<u64, ApiError> {
    if let Some(name) = token.strip_prefix('@') {
        match bind_vars.get(name) {
            Some(v) => v.as_u64().ok_or_else(|| {
                parse_error(&format!(
                    "bind parameter '@{name}' must be a non-negative integer"
                ))
            }),
            None => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                error::QUERY_PARSE,
                format!("bind parameter '@{name}' is not declared in bindVars"),
            )),
        }
    } else {
        token.parse().map_err(|_| {
            parse_error(&format!(
                "LIMIT expects a non-negative integer, got '{token}'"
            ))
        })
    }
}

/// Parses one of the supported query forms (keywords in any case, any whitespace).
pub fn parse(query: &str, bind_vars: &Map<String, Value>) -> Result<ScanQuery, ApiError> {
    let t = tokens(query);
    let t: Vec<&str> = t.iter().map(String::as_str).collect();
    let kw = |i: usize, word: &str| t.get(i).is_some_and(|x| x.eq_ignore_ascii_case(word));
    if !kw(0, "FOR") || !kw(2, "IN") || t.len() < 6 {
        return Err(parse_error("the query is not a collection scan"));
    }
    let var = t[1];
    if !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || var.is_empty() {
        return Err(parse_error(&format!("'{var}' is not a variable name")));
    }
    let source = t[3];
    let collection = if let Some(name) = source.strip_prefix("@@") {
        match bind_vars.get(&format!("@{name}")) {
            Some(Value::String(c)) => c.clone(),
            Some(_) => {
                return Err(parse_error(&format!(
                    "bind parameter '@@{name}' must be a collection name string"
                )))
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    error::QUERY_PARSE,
                    format!("bind parameter '@@{name}' is not declared in bindVars"),
                ))
            }
        }
    } else {
        source.trim_matches('`').to_string()
    };
    let mut i = 4;
    let (mut offset, mut limit) = (0, None);
    let key_of_var = format!("{var}._key");
    let mut after = None;
    if kw(i, "FILTER") {
        if t.get(i + 1) != Some(&key_of_var.as_str()) || t.get(i + 2) != Some(&">") {
            return Err(parse_error(&format!(
                "only 'FILTER {key_of_var} > @name' is supported"
            )));
        }
        let operand = t.get(i + 3).copied().unwrap_or("");
        after = Some(match operand.strip_prefix('@') {
            Some(name) => match bind_vars.get(name) {
                Some(Value::String(key)) => key.clone(),
                _ => {
                    return Err(parse_error(&format!(
                        "bind parameter '@{name}' must be a string"
                    )))
                }
            },
            None => match serde_json::from_str::<String>(operand) {
                Ok(key) => key,
                Err(_) => return Err(parse_error("FILTER compares with a string")),
            },
        });
        i += 4;
    }
    if kw(i, "SORT") {
        if t.get(i + 1) != Some(&key_of_var.as_str()) {
            return Err(parse_error(&format!(
                "only 'SORT {key_of_var}' is supported"
            )));
        }
        i += 2;
        if kw(i, "ASC") {
            i += 1;
        }
    }
    if kw(i, "LIMIT") {
        let first = number(t.get(i + 1).copied().unwrap_or(""), bind_vars)?;
        if t.get(i + 2) == Some(&",") {
            offset = first;
            limit = Some(number(t.get(i + 3).copied().unwrap_or(""), bind_vars)?);
            i += 4;
        } else {
            limit = Some(first);
            i += 2;
        }
    }
    let keys_only = t.get(i + 1) == Some(&key_of_var.as_str());
    if !kw(i, "RETURN") || !(t.get(i + 1) == Some(&var) || keys_only) || t.len() != i + 2 {
        return Err(parse_error(&format!("expected 'RETURN {var}' at the end")));
    }
    Ok(ScanQuery {
        collection,
        offset,
        limit,
        after,
        keys_only,
    })
}

struct Cursor {
    snapshot: store::Snapshot,
    collection: String,
    last_key: Option<String>,
    remaining: Option<u64>,
    batch_size: u64,
    ttl: Duration,
    expires: Instant,
    count: Option<u64>,
    keys_only: bool,
}

/// Open cursors by id.
#[derive(Default)]
pub struct Cursors {
    open: Mutex<HashMap<String, Cursor>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Cursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursors").finish_non_exhaustive()
    }
}

impl Cursors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cursor>> {
        match self.open.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Drops cursors whose ttl has passed since their last use.
    pub fn expire(&self, now: Instant) {
        self.lock().retain(|_, c| c.expires > now);
    }

    /// Drops every cursor (at shutdown, so their snapshots are released).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Number of open cursors.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no cursor is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The next page of an answer with status `code`: the answer's text up to and including its
/// documents (joined as JSON array elements), how many there are, and whether more follow.
fn page(cursor: &mut Cursor, code: StatusCode) -> Result<(Vec<u8>, usize, bool), ApiError> {
    let want = cursor
        .remaining
        .map_or(cursor.batch_size, |r| r.min(cursor.batch_size));
    if cursor.keys_only {
        let (keys, more) = store::keys_after(
            &cursor.snapshot,
            &cursor.collection,
            cursor.last_key.as_deref(),
            want as usize,
        )?;
        let mut out =
            format!("{{\"error\":false,\"code\":{},\"result\":", code.as_u16()).into_bytes();
        let listed =
            serde_json::to_vec(&keys).map_err(|error| ApiError::storage(error.to_string()))?;
        // The array without its closing bracket: `answer` closes it.
        out.extend_from_slice(&listed[..listed.len() - 1]);
        if let Some(last) = keys.last() {
            cursor.last_key = Some(last.clone());
        }
        if let Some(r) = cursor.remaining.as_mut() {
            *r -= keys.len() as u64;
        }
        let has_more = more && cursor.remaining != Some(0);
        return Ok((out, keys.len(), has_more));
    }
    let page = store::document_ptrs_after(
        &cursor.snapshot,
        &cursor.collection,
        cursor.last_key.as_deref(),
        want as usize,
    )?;
    let mut out = Vec::with_capacity(
        page.ptrs
            .iter()
            .map(|ptr| ptr.len as usize + 1)
            .sum::<usize>()
            + 256,
    );
    out.extend_from_slice(
        format!("{{\"error\":false,\"code\":{},\"result\":[", code.as_u16()).as_bytes(),
    );
    store::read_documents_joined(&cursor.snapshot, &page.ptrs, &mut out)?;
    if page.last_key.is_some() {
        cursor.last_key = page.last_key;
    }
    if let Some(r) = cursor.remaining.as_mut() {
        *r -= page.ptrs.len() as u64;
    }
    let has_more = page.more && cursor.remaining != Some(0);
    Ok((out, page.ptrs.len(), has_more))
}

/// Completes the answer `page` began.
fn answer(
    code: StatusCode,
    (mut out, count_in_page): (Vec<u8>, usize),
    has_more: bool,
    id: Option<&str>,
    count: Option<u64>,
) -> Resp {
    out.extend_from_slice(format!("],\"hasMore\":{has_more},\"cached\":false").as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(format!(",\"id\":\"{id}\"").as_bytes());
    }
    if let Some(count) = count {
        out.extend_from_slice(format!(",\"count\":{count}").as_bytes());
    }
    out.extend_from_slice(
        format!(
            ",\"extra\":{{\"warnings\":[],\"stats\":{{\"scannedFull\":{count_in_page},\"filtered\":0}}}}}}"
        )
        .as_bytes(),
    );
    json_bytes_response(code, out)
}

/// `POST /_fabric/{f}/_api/cursor`.
pub fn create(state: &State, body: &Bytes) -> Result<Resp, ApiError> {
    state.cursors.expire(Instant::now());
    let body = super::json::parse_body(body)?;
    let Value::Object(body) = body else {
        return Err(ApiError::bad_parameter(
            "the body must be a JSON object with a 'query' string",
        ));
    };
    let Some(query) = body.get("query").and_then(Value::as_str) else {
        return Err(ApiError::bad_parameter(
            "the body must have a 'query' string",
        ));
    };
    let empty = Map::new();
    let bind_vars = match body.get("bindVars") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::bad_parameter("'bindVars' must be an object")),
    };
    let batch_size = match body.get("batchSize") {
        None | Some(Value::Null) => DEFAULT_BATCH_SIZE,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_BATCH_SIZE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_parameter(format!(
                    "'batchSize' must be an integer from 1 to {MAX_BATCH_SIZE}"
                )))
            }
        },
    };
    let ttl = match body.get("ttl") {
        None | Some(Value::Null) => DEFAULT_TTL_SECS,
        Some(v) => match v.as_f64() {
            Some(t) if t > 0.0 && t <= 86_400.0 => t,
            _ => {
                return Err(ApiError::bad_parameter(
                    "'ttl' must be a number of seconds from 0 to 86400",
                ))
            }
        },
    };
    let want_count = match body.get("count") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_parameter("'count' must be a boolean")),
    };
    let scan = parse(query, bind_vars)?;
    let snapshot = state.store.read()?;
    if store::collection(&snapshot, &scan.collection)?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            error::DATA_SOURCE_NOT_FOUND,
            format!("collection or view not found: {}", scan.collection),
        ));
    }
    let count = if want_count {
        let total = store::count(&snapshot, &scan.collection)?.saturating_sub(scan.offset);
        Some(scan.limit.map_or(total, |l| l.min(total)))
    } else {
        None
    };
    let mut last_key = scan.after.clone();
    let mut to_skip = scan.offset;
    while to_skip > 0 {
        let skipped = store::document_ptrs_after(
            &snapshot,
            &scan.collection,
            last_key.as_deref(),
            to_skip.min(10_000) as usize,
        )?;
        if skipped.ptrs.is_empty() {
            break;
        }
        to_skip -= skipped.ptrs.len() as u64;
        last_key = skipped.last_key;
    }
    let ttl = Duration::from_secs_f64(ttl);
    let mut cursor = Cursor {
        snapshot,
        collection: scan.collection,
        last_key,
        remaining: scan.limit,
        batch_size,
        ttl,
        expires: Instant::now() + ttl,
        count,
        keys_only: scan.keys_only,
    };
    let (docs, in_page, has_more) = page(&mut cursor, StatusCode::CREATED)?;
    let id = if has_more {
        let id = (state.cursors.next_id.fetch_add(1, Ordering::Relaxed) + 1).to_string();
        state.cursors.lock().insert(id.clone(), cursor);
        Some(id)
    } else {
        None
    };
    Ok(answer(
        StatusCode::CREATED,
        (docs, in_page),
        has_more,
        id.as_deref(),
        count,
    ))
}

fn cursor_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        error::CURSOR_NOT_FOUND,
        format!("cursor not found: '{id}' (exhausted, deleted or expired)"),
    )
}

/// `PUT /_fabric/{f}/_api/cursor/{id}`: the next page.
pub fn next(state: &State, id: &str) -> Result<Resp, ApiError> {
    let now = Instant::now();
    state.cursors.expire(now);
    let Some(mut cursor) = state.cursors.lock().remove(id) else {
        return Err(cursor_not_found(id));
    };
    let (docs, in_page, has_more) = page(&mut cursor, StatusCode::OK)?;
    let count = cursor.count;
    if has_more {
        cursor.expires = now + cursor.ttl;
        state.cursors.lock().insert(id.to_string(), cursor);
    }
    Ok(answer(
        StatusCode::OK,
        (docs, in_page),
        has_more,
        has_more.then_some(id),
        count,
    ))
}

/// `DELETE /_fabric/{f}/_api/cursor/{id}`.
pub fn delete(state: &State, id: &str) -> Result<Resp, ApiError> {
    match state.cursors.lock().remove(id) {
        Some(_) => Ok(json_response(
            StatusCode::ACCEPTED,
            &serde_json::json!({"error": false, "code": 202, "id": id}),
        )),
        None => Err(cursor_not_found(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn the_connector_forms_parse() {
        let b = vars(json!({"@collection": "orders", "count": 50}));
        assert_eq!(
            parse("FOR d IN @@collection RETURN d", &b).unwrap(),
            ScanQuery {
                collection: "orders".into(),
                offset: 0,
                limit: None,
                after: None,
                keys_only: false
            }
        );
        assert_eq!(
            parse("FOR d IN @@collection LIMIT 0, @count RETURN d", &b).unwrap(),
            ScanQuery {
                collection: "orders".into(),
                offset: 0,
                limit: Some(50),
                after: None,
                keys_only: false
            }
        );
        assert_eq!(
            parse("  for x\n in   items limit 5 return x ", &b).unwrap(),
            ScanQuery {
                collection: "items".into(),
                offset: 0,
                limit: Some(5),
                after: None,
                keys_only: false
            }
        );
        assert_eq!(
            parse("FOR d IN items LIMIT 2,3 RETURN d", &b).unwrap(),
            ScanQuery {
                collection: "items".into(),
                offset: 2,
                limit: Some(3),
                after: None,
                keys_only: false
            }
        );
    }

    #[test]
    fn pgferrys_keyset_page_parses() {
        let b = vars(json!({"@collection": "orders", "after": "k9", "count": 7}));
        let page = |query| parse(query, &b).unwrap();
        assert_eq!(
            page("FOR d IN @@collection FILTER d._key > @after SORT d._key LIMIT @count RETURN d"),
            ScanQuery {
                collection: "orders".into(),
                offset: 0,
                limit: Some(7),
                after: Some("k9".into()),
                keys_only: false
            }
        );
        let keys = page(
            "FOR d IN @@collection FILTER d._key > @after SORT d._key LIMIT @count RETURN d._key",
        );
        assert!(keys.keys_only && keys.after.as_deref() == Some("k9"));
        for wrong in [
            "FOR d IN @@collection FILTER d._key < @after RETURN d",
            "FOR d IN @@collection FILTER d._key > @count RETURN d",
            "FOR d IN @@collection SORT d.a RETURN d",
        ] {
            assert!(parse(wrong, &b).is_err(), "{wrong}");
        }
    }

    #[test]
    fn everything_else_is_a_1501() {
        let b = vars(json!({"@collection": 5}));
        for q in [
            "",
            "RETURN 1",
            "FOR d IN items FILTER d.a == 1 RETURN d",
            "FOR d IN items RETURN e",
            "FOR d IN items RETURN d.a",
            "FOR d IN items LIMIT x RETURN d",
            "FOR d IN items LIMIT -1 RETURN d",
            "FOR d IN @@collection RETURN d",
            "INSERT {} INTO items",
        ] {
            let e = parse(q, &b).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.error_num),
                (400, error::QUERY_PARSE),
                "{q}"
            );
        }
        let e = parse("FOR d IN @@c RETURN d", &Map::new()).unwrap_err();
        assert_eq!(e.error_num, error::QUERY_PARSE);
    }
}

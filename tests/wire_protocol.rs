//! The wire client against scripted fake servers: every backend message the client decodes,
//! built byte by byte as the protocol documentation lays it out, plus truncated, malformed and
//! hostile input. No PostgreSQL needed.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use pgferry::decode::replication::ReplicationMessage;
use pgferry::pg::replication::ReplicationClient;
use pgferry::pg::{ConnectOptions, Connection, PgError, SslMode};
use pgferry::secret::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend message: tag, length, body.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(text: &str) -> Vec<u8> {
    let mut out = text.as_bytes().to_vec();
    out.push(0);
    out
}

fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(extra);
    msg(b'R', &body)
}

fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    msg(b'S', &[cstr(name), cstr(value)].concat())
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn accept_session() -> Vec<u8> {
    [
        auth(0, &[]),
        parameter_status("server_version", "15.18 (Debian 15.18-0+deb12u1)"),
        msg(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]),
        ready(),
    ]
    .concat()
}

fn error_response(fields: &[(u8, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (kind, value) in fields {
        body.push(*kind);
        body.extend_from_slice(&cstr(value));
    }
    body.push(0);
    msg(b'E', &body)
}

/// Reads the untagged startup (or SSLRequest) packet.
async fn read_startup(stream: &mut TcpStream) -> Vec<u8> {
    let len = stream.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    stream.read_exact(&mut body).await.unwrap();
    body
}

/// Reads one tagged frontend message.
async fn read_frontend(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let tag = stream.read_u8().await.unwrap();
    let len = stream.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    stream.read_exact(&mut body).await.unwrap();
    (tag, body)
}

async fn fake_server<F, Fut>(script: F) -> (u16, tokio::task::JoinHandle<()>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        script(stream).await;
    });
    (port, handle)
}

fn options(port: u16) -> ConnectOptions {
    let mut options = ConnectOptions::new("127.0.0.1", port, "alice", "shop");
    options.sslmode = SslMode::Disable;
    options.connect_timeout = Duration::from_secs(3);
    options
}

#[tokio::test]
async fn md5_handshake_then_a_query_decodes_rows_as_text() {
    let (port, server) = fake_server(|mut stream| async move {
        let startup = read_startup(&mut stream).await;
        assert_eq!(&startup[..4], &196_608u32.to_be_bytes(), "protocol 3.0");
        let text = String::from_utf8_lossy(&startup[4..]);
        assert!(
            text.contains("user\0alice\0") && text.contains("database\0shop\0"),
            "{text}"
        );
        stream.write_all(&auth(5, &[1, 2, 3, 4])).await.unwrap();
        let (tag, body) = read_frontend(&mut stream).await;
        assert_eq!(tag, b'p');
        let expected = postgres_protocol_md5("alice", "pw", [1, 2, 3, 4]);
        assert_eq!(body, cstr(&expected));
        stream.write_all(&accept_session()).await.unwrap();
        let (tag, body) = read_frontend(&mut stream).await;
        assert_eq!((tag, body), (b'Q', cstr("SELECT a, b")));
        let mut row_description = 2u16.to_be_bytes().to_vec();
        for name in ["a", "b"] {
            row_description.extend_from_slice(&cstr(name));
            row_description.extend_from_slice(&[0; 18]);
        }
        let mut data_row = 2u16.to_be_bytes().to_vec();
        data_row.extend_from_slice(&3i32.to_be_bytes());
        data_row.extend_from_slice("ü1".as_bytes());
        data_row.extend_from_slice(&(-1i32).to_be_bytes());
        let reply = [
            msg(b'T', &row_description),
            msg(
                b'N',
                &[
                    b'S', b'N', b'O', b'T', b'I', b'C', b'E', 0, b'C', b'0', b'0', b'0', b'0',
                    b'0', 0, b'M', b'h', b'i', 0, 0,
                ],
            ),
            msg(b'D', &data_row),
            msg(b'C', &cstr("SELECT 1")),
            ready(),
        ]
        .concat();
        stream.write_all(&reply).await.unwrap();
        let (tag, _) = read_frontend(&mut stream).await;
        assert_eq!(tag, b'X', "Terminate on close");
    })
    .await;
    let mut options = options(port);
    options.password = Some(Secret::new("pw"));
    let mut connection = Connection::connect(&options).await.unwrap();
    assert_eq!(connection.server_version_num(), Some(150_018));
    assert_eq!(connection.backend_key().unwrap().process_id, 42);
    let rows = connection.query("SELECT a, b").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].columns(), ["a", "b"]);
    assert_eq!(rows[0].get(0), Some("ü1"));
    assert_eq!(rows[0].get_named("b"), None);
    connection.close().await;
    server.await.unwrap();
}

fn postgres_protocol_md5(user: &str, password: &str, salt: [u8; 4]) -> String {
    // md5(md5(password || user) || salt), hex, prefixed "md5": written out from the docs.
    use std::fmt::Write;
    fn md5_hex(data: &[u8]) -> String {
        let digest = md5_digest(data);
        digest.iter().fold(String::new(), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
    }
    let inner = md5_hex(format!("{password}{user}").as_bytes());
    let mut outer_input = inner.into_bytes();
    outer_input.extend_from_slice(&salt);
    format!("md5{}", md5_hex(&outer_input))
}

/// A straightforward MD5 (RFC 1321), so the test does not trust the code under test.
fn md5_digest(input: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut message = input.to_vec();
    let bit_len = (input.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bit_len.to_le_bytes());
    let (mut a0, mut b0, mut c0, mut d0) =
        (0x67452301u32, 0xefcdab89u32, 0x98badcfeu32, 0x10325476u32);
    for chunk in message.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut out = [0u8; 16];
    for (i, word) in [a0, b0, c0, d0].iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
    }
    out
}

#[tokio::test]
async fn server_errors_carry_every_field_and_never_the_password() {
    let (port, server) = fake_server(|mut stream| async move {
        read_startup(&mut stream).await;
        stream.write_all(&auth(3, &[])).await.unwrap();
        let (tag, _) = read_frontend(&mut stream).await;
        assert_eq!(tag, b'p');
        stream
            .write_all(&error_response(&[
                (b'S', "FATAL"),
                (b'V', "FATAL"),
                (b'C', "28P01"),
                (b'M', "password authentication failed for user \"alice\""),
                (b'D', "Role has no valid password."),
                (b'P', "12"),
            ]))
            .await
            .unwrap();
    })
    .await;
    let mut options = options(port);
    options.password = Some(Secret::new("topsecret-123"));
    let error = Connection::connect(&options).await.unwrap_err();
    let db = error.as_db_error().expect("a server error");
    assert_eq!(db.code, "28P01");
    assert_eq!(db.severity, "FATAL");
    assert_eq!(db.detail.as_deref(), Some("Role has no valid password."));
    assert_eq!(db.position, Some(12));
    assert!(db.hint.as_deref().unwrap().contains("password"));
    let text = format!("{error} {error:?}");
    assert!(!text.contains("topsecret-123"), "{text}");
    assert!(!error.is_transient());
    server.await.unwrap();
}

#[tokio::test]
async fn a_password_request_without_password_is_a_clear_auth_error() {
    let (port, server) = fake_server(|mut stream| async move {
        read_startup(&mut stream).await;
        stream
            .write_all(&auth(10, &[cstr("SCRAM-SHA-256"), vec![0]].concat()))
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    })
    .await;
    let error = Connection::connect(&options(port)).await.unwrap_err();
    assert!(matches!(error, PgError::Auth { .. }), "{error:?}");
    assert!(error.to_string().contains("\"password\""), "{error}");
    server.await.unwrap();
}

#[tokio::test]
async fn garbage_instead_of_the_protocol_is_named_at_once() {
    let (port, server) = fake_server(|mut stream| async move {
        read_startup(&mut stream).await;
        stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    })
    .await;
    let started = Instant::now();
    let error = Connection::connect(&options(port)).await.unwrap_err();
    assert!(matches!(error, PgError::Protocol { .. }), "{error:?}");
    assert!(error.to_string().contains("HTTP/1.1"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no waiting for a body that will not come"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn an_impossible_length_is_rejected_without_allocating_it() {
    let (port, server) = fake_server(|mut stream| async move {
        read_startup(&mut stream).await;
        stream
            .write_all(&[b'R', 0x7f, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    })
    .await;
    let error = Connection::connect(&options(port)).await.unwrap_err();
    assert!(error.to_string().contains("impossible length"), "{error}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_server_closing_mid_message_is_connection_loss() {
    let (port, server) = fake_server(|mut stream| async move {
        read_startup(&mut stream).await;
        let frame = auth(5, &[1, 2, 3, 4]);
        stream.write_all(&frame[..7]).await.unwrap();
    })
    .await;
    let error = Connection::connect(&options(port)).await.unwrap_err();
    assert!(matches!(error, PgError::Closed { .. }), "{error:?}");
    assert!(error.is_transient());
    server.await.unwrap();
}

#[tokio::test]
async fn a_silent_server_times_out_at_connect_timeout() {
    let (port, server) = fake_server(|mut stream| async move {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    })
    .await;
    let mut options = options(port);
    options.connect_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let error = Connection::connect(&options).await.unwrap_err();
    assert!(matches!(error, PgError::Timeout { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(error.to_string().contains("connect_timeout"), "{error}");
    server.abort();
}

#[tokio::test]
async fn a_refused_port_is_a_connect_error_naming_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let error = Connection::connect(&options(port)).await.unwrap_err();
    assert!(matches!(error, PgError::Connect { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
}

#[tokio::test]
async fn tls_demanded_but_refused_by_the_server() {
    let (port, server) = fake_server(|mut stream| async move {
        let request = read_startup(&mut stream).await;
        assert_eq!(request, 80_877_103u32.to_be_bytes(), "SSLRequest code");
        stream.write_all(b"N").await.unwrap();
    })
    .await;
    let mut options = options(port);
    options.sslmode = SslMode::Require;
    let error = Connection::connect(&options).await.unwrap_err();
    assert!(matches!(error, PgError::Tls { .. }), "{error:?}");
    assert!(error.to_string().contains("sslmode=require"), "{error}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_garbled_ssl_answer_is_a_protocol_error() {
    let (port, server) = fake_server(|mut stream| async move {
        read_startup(&mut stream).await;
        stream.write_all(b"E").await.unwrap();
    })
    .await;
    let mut options = options(port);
    options.sslmode = SslMode::Prefer;
    let error = Connection::connect(&options).await.unwrap_err();
    assert!(error.to_string().contains("SSLRequest"), "{error}");
    server.await.unwrap();
}

#[tokio::test]
async fn malformed_rows_are_errors_not_panics() {
    let (port, server) = fake_server(|mut stream| async move {
        read_startup(&mut stream).await;
        stream.write_all(&accept_session()).await.unwrap();
        read_frontend(&mut stream).await;
        let mut row_description = 1u16.to_be_bytes().to_vec();
        row_description.extend_from_slice(&cstr("a"));
        row_description.extend_from_slice(&[0; 18]);
        // DataRow claims one value of 100 bytes but carries 2.
        let mut data_row = 1u16.to_be_bytes().to_vec();
        data_row.extend_from_slice(&100i32.to_be_bytes());
        data_row.extend_from_slice(b"xy");
        stream
            .write_all(&[msg(b'T', &row_description), msg(b'D', &data_row)].concat())
            .await
            .unwrap();
    })
    .await;
    let mut connection = Connection::connect(&options(port)).await.unwrap();
    let error = connection.query("SELECT a").await.unwrap_err();
    assert!(matches!(error, PgError::Protocol { .. }), "{error:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_query_error_leaves_the_connection_usable() {
    let (port, server) = fake_server(|mut stream| async move {
        read_startup(&mut stream).await;
        stream.write_all(&accept_session()).await.unwrap();
        read_frontend(&mut stream).await;
        let reply = [
            error_response(&[
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', "42P01"),
                (b'M', "relation \"nope\" does not exist"),
                (b'P', "15"),
            ]),
            ready(),
        ]
        .concat();
        stream.write_all(&reply).await.unwrap();
        read_frontend(&mut stream).await;
        stream
            .write_all(&[msg(b'C', &cstr("SET")), ready()].concat())
            .await
            .unwrap();
    })
    .await;
    let mut connection = Connection::connect(&options(port)).await.unwrap();
    let error = connection.query("SELECT * FROM nope").await.unwrap_err();
    assert_eq!(error.code(), Some("42P01"));
    assert!(error.to_string().contains("POSITION: 15"), "{error}");
    assert_eq!(connection.execute("SET x = 1").await.unwrap(), 0);
    server.await.unwrap();
}

#[tokio::test]
async fn replication_stream_decodes_frames_and_answers_keepalives() {
    let (port, server) = fake_server(|mut stream| async move {
        let startup = read_startup(&mut stream).await;
        assert!(String::from_utf8_lossy(&startup).contains("replication\0database\0"));
        stream.write_all(&accept_session()).await.unwrap();
        let (_, command) = read_frontend(&mut stream).await;
        assert_eq!(
            command,
            cstr("START_REPLICATION SLOT \"s\" LOGICAL 0/10 (\"format-version\" '2')")
        );
        let mut xlog = vec![b'w'];
        xlog.extend_from_slice(&0x20u64.to_be_bytes());
        xlog.extend_from_slice(&0x30u64.to_be_bytes());
        xlog.extend_from_slice(&0i64.to_be_bytes());
        xlog.extend_from_slice(br#"{"action":"B"}"#);
        let mut keepalive = vec![b'k'];
        keepalive.extend_from_slice(&0x40u64.to_be_bytes());
        keepalive.extend_from_slice(&0i64.to_be_bytes());
        keepalive.push(1);
        let reply = [
            msg(b'W', &[0, 0, 0]),
            msg(b'd', &xlog),
            msg(b'd', &keepalive),
        ]
        .concat();
        stream.write_all(&reply).await.unwrap();
        // The keepalive asked for a reply: a standby status update must come at once.
        let (tag, body) = read_frontend(&mut stream).await;
        assert_eq!(tag, b'd');
        assert_eq!(body[0], b'r');
        assert_eq!(
            u64::from_be_bytes(body[1..9].try_into().unwrap()),
            0x20,
            "written = received"
        );
        assert_eq!(
            u64::from_be_bytes(body[9..17].try_into().unwrap()),
            0x10,
            "flushed = confirmed only"
        );
        // A malformed frame ends the stream with a typed error.
        stream.write_all(&msg(b'd', b"k\x00")).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
    })
    .await;
    let client = ReplicationClient::connect(&options(port)).await.unwrap();
    let mut stream = client
        .start_logical(
            "s",
            "0/10".parse().unwrap(),
            &[("format-version".into(), "2".into())],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    match stream.next().await.unwrap() {
        Some(ReplicationMessage::XLogData(xlog)) => {
            assert_eq!(xlog.wal_start.to_string(), "0/20");
            assert_eq!(&xlog.data[..], br#"{"action":"B"}"#);
        }
        other => panic!("expected XLogData, got {other:?}"),
    }
    match stream.next().await.unwrap() {
        Some(ReplicationMessage::PrimaryKeepalive(keepalive)) => assert!(keepalive.reply_requested),
        other => panic!("expected a keepalive, got {other:?}"),
    }
    let error = stream.next().await.unwrap_err();
    assert!(
        error.to_string().contains("malformed replication frame"),
        "{error}"
    );
    drop(stream);
    server.await.unwrap();
}

#[test]
fn frame_builder_matches_the_documented_layout() {
    let mut expected = BytesMut::new();
    expected.put_u8(b'Z');
    expected.put_u32(5);
    expected.put_u8(b'I');
    assert_eq!(ready(), expected.to_vec());
}

#[tokio::test]
async fn copy_out_and_copy_in_follow_the_message_flow() {
    let (port, server) = fake_server(|mut stream| async move {
        read_startup(&mut stream).await;
        stream.write_all(&accept_session()).await.unwrap();
        // COPY TO STDOUT: CopyOutResponse (binary, 1 column), two CopyData, CopyDone, tag, ready.
        let (_, query) = read_frontend(&mut stream).await;
        assert_eq!(query, cstr("COPY t TO STDOUT"));
        let reply = [
            msg(b'H', &[1, 0, 1, 0, 1]),
            msg(b'd', b"row-1"),
            msg(b'd', b"row-2"),
            msg(b'c', &[]),
            msg(b'C', &cstr("COPY 2")),
            ready(),
        ]
        .concat();
        stream.write_all(&reply).await.unwrap();
        // COPY FROM STDIN: CopyInResponse (text), then the client's CopyData x2 and CopyDone.
        let (_, query) = read_frontend(&mut stream).await;
        assert_eq!(query, cstr("COPY t FROM STDIN"));
        stream.write_all(&msg(b'G', &[0, 0, 0])).await.unwrap();
        assert_eq!(read_frontend(&mut stream).await, (b'd', b"a\n".to_vec()));
        assert_eq!(read_frontend(&mut stream).await, (b'd', b"b\n".to_vec()));
        assert_eq!(read_frontend(&mut stream).await, (b'c', vec![]));
        stream
            .write_all(&[msg(b'C', &cstr("COPY 2")), ready()].concat())
            .await
            .unwrap();
        // An empty query.
        read_frontend(&mut stream).await;
        stream
            .write_all(&[msg(b'I', &[]), ready()].concat())
            .await
            .unwrap();
        // COPY FROM STDIN aborted by the client: CopyFail, then the server's error and ready.
        read_frontend(&mut stream).await;
        stream.write_all(&msg(b'G', &[0, 0, 0])).await.unwrap();
        let (tag, reason) = read_frontend(&mut stream).await;
        assert_eq!((tag, reason), (b'f', cstr("changed my mind")));
        let reply = [
            error_response(&[
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', "57014"),
                (b'M', "COPY from stdin failed: changed my mind"),
            ]),
            ready(),
        ]
        .concat();
        stream.write_all(&reply).await.unwrap();
        read_frontend(&mut stream).await;
    })
    .await;
    let mut connection = Connection::connect(&options(port)).await.unwrap();
    let mut out = connection.copy_out("COPY t TO STDOUT").await.unwrap();
    assert_eq!(out.format(), pgferry::pg::copy::CopyFormat::Binary);
    assert_eq!(out.next().await.unwrap().as_deref(), Some(&b"row-1"[..]));
    assert_eq!(out.next().await.unwrap().as_deref(), Some(&b"row-2"[..]));
    assert_eq!(out.next().await.unwrap(), None);
    assert_eq!(out.rows(), Some(2));
    let mut input = connection.copy_in("COPY t FROM STDIN").await.unwrap();
    input.send(b"a\n").await.unwrap();
    input.send(b"b\n").await.unwrap();
    assert_eq!(input.finish().await.unwrap(), 2);
    assert!(connection.query("").await.unwrap().is_empty());
    let input = connection.copy_in("COPY t FROM STDIN").await.unwrap();
    input.abort("changed my mind").await.unwrap();
    connection.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn an_invalid_scram_challenge_is_an_auth_error() {
    let (port, server) = fake_server(|mut stream| async move {
        read_startup(&mut stream).await;
        stream
            .write_all(&auth(10, &[cstr("SCRAM-SHA-256"), vec![0]].concat()))
            .await
            .unwrap();
        let (tag, body) = read_frontend(&mut stream).await;
        assert_eq!(tag, b'p');
        assert!(
            String::from_utf8_lossy(&body).contains("n,,n=,r="),
            "client-first without channel binding"
        );
        stream
            .write_all(&auth(11, b"r=not-our-nonce,s=c2FsdA==,i=4096"))
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    })
    .await;
    let mut options = options(port);
    options.password = Some(Secret::new("pw"));
    let error = Connection::connect(&options).await.unwrap_err();
    assert!(matches!(error, PgError::Auth { .. }), "{error:?}");
    assert!(error.to_string().contains("SCRAM"), "{error}");
    server.await.unwrap();
}

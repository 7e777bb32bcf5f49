//! The wire client against a real PostgreSQL 15: every authentication method, TLS verification,
//! server errors, and a logical replication round trip with wal2json.

mod support;

use std::time::Duration;

use pgferry::pg::replication::{ReplicationClient, SlotSnapshot};
use pgferry::pg::{Connection, Lsn, PgError, SslMode};
use pgferry::secret::Secret;
use support::{PgCluster, TlsFixture};

const PASSWORD: &str = "correct horse battery staple";
const WRONG_PASSWORD: &str = "wrong-password-7f3a9c";

/// A cluster where each role must use one authentication method over TCP.
fn cluster_with_auth_methods() -> PgCluster {
    let cluster = PgCluster::builder()
        .hba("host all md5_user 127.0.0.1/32 md5")
        .hba("host all scram_user 127.0.0.1/32 scram-sha-256")
        .hba("host all plain_user 127.0.0.1/32 password")
        .hba("host all trust_user 127.0.0.1/32 trust")
        .start();
    cluster.psql(&format!(
        "SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD '{PASSWORD}';"
    ));
    cluster.psql(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE scram_user LOGIN PASSWORD '{PASSWORD}'; CREATE ROLE plain_user LOGIN PASSWORD '{PASSWORD}'; CREATE ROLE trust_user LOGIN;"
    ));
    cluster
}

async fn connect_as(
    cluster: &PgCluster,
    user: &str,
    password: Option<&str>,
) -> Result<Connection, PgError> {
    let mut options = cluster.options(user);
    options.password = password.map(Secret::new);
    Connection::connect(&options).await
}

#[tokio::test]
async fn each_authentication_method_succeeds_with_the_right_password() {
    let cluster = cluster_with_auth_methods();
    for (user, password, method) in [
        ("trust_user", None, "trust"),
        ("plain_user", Some(PASSWORD), "password"),
        ("md5_user", Some(PASSWORD), "md5"),
        ("scram_user", Some(PASSWORD), "SCRAM-SHA-256"),
    ] {
        let mut connection = connect_as(&cluster, user, password)
            .await
            .unwrap_or_else(|error| panic!("{user} should log in with {method}: {error}"));
        assert_eq!(
            connection.authentication(),
            method,
            "method used for {user}"
        );
        let row = connection
            .query_one("SELECT current_user")
            .await
            .expect("query after login")
            .expect("one row");
        assert_eq!(row.get(0), Some(user));
        connection.close().await;
    }
}

#[tokio::test]
async fn a_wrong_password_fails_clearly_without_echoing_the_password() {
    let cluster = cluster_with_auth_methods();
    for user in ["plain_user", "md5_user", "scram_user"] {
        let error = connect_as(&cluster, user, Some(WRONG_PASSWORD))
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} must not log in with a wrong password"));
        assert_eq!(error.code(), Some("28P01"), "SQLSTATE for {user}: {error}");
        let text = format!("{error} {error:?}");
        assert!(
            text.contains("password authentication failed"),
            "error says what failed: {text}"
        );
        assert!(
            !text.contains(WRONG_PASSWORD),
            "error must not contain the password: {text}"
        );
        assert!(
            !error.is_transient(),
            "a wrong password is not worth retrying"
        );
    }
}

#[tokio::test]
async fn a_missing_password_is_reported_before_talking_to_the_server_about_it() {
    let cluster = cluster_with_auth_methods();
    let error = connect_as(&cluster, "scram_user", None)
        .await
        .expect_err("no password, no login");
    let text = error.to_string();
    assert!(
        text.contains("password"),
        "names the missing password: {text}"
    );
}

#[tokio::test]
async fn a_wrong_database_names_the_database() {
    let cluster = PgCluster::start_default();
    let mut options = cluster.options("postgres");
    options.dbname = "no_such_db".into();
    let error = Connection::connect(&options)
        .await
        .expect_err("unknown database");
    assert_eq!(error.code(), Some("3D000"), "{error}");
    assert!(error.to_string().contains("no_such_db"), "{error}");
}

fn tls_cluster(fixture: &TlsFixture) -> PgCluster {
    let cluster = PgCluster::builder()
        .hba("hostssl all scram_user 127.0.0.1/32 scram-sha-256")
        .tls(fixture.clone())
        .start();
    cluster.psql(&format!(
        "CREATE ROLE scram_user LOGIN PASSWORD '{PASSWORD}'"
    ));
    cluster
}

fn tls_options(
    cluster: &PgCluster,
    host: &str,
    mode: SslMode,
    ca: &str,
) -> pgferry::pg::ConnectOptions {
    let mut options = cluster.options("scram_user");
    options.host = host.to_owned();
    options.password = Some(Secret::new(PASSWORD));
    options.sslmode = mode;
    options.tls.root_ca_pem = Some(ca.to_owned());
    options
}

#[tokio::test]
async fn verify_full_succeeds_with_the_right_ca_and_host_and_binds_the_channel() {
    let fixture = TlsFixture::generate();
    let cluster = tls_cluster(&fixture);
    let options = tls_options(&cluster, "localhost", SslMode::VerifyFull, &fixture.ca_pem);
    let mut connection = Connection::connect(&options)
        .await
        .expect("verify-full with the signing CA and the certificate's host name");
    assert!(connection.is_tls());
    assert_eq!(connection.authentication(), "SCRAM-SHA-256-PLUS");
    let row = connection
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .expect("query over TLS")
        .expect("a row");
    assert_eq!(row.get(0), Some("t"));
}

#[tokio::test]
async fn a_pem_whose_newlines_became_spaces_still_loads() {
    let fixture = TlsFixture::generate();
    let cluster = tls_cluster(&fixture);
    let flattened = fixture.ca_pem.replace('\n', " ");
    let options = tls_options(&cluster, "localhost", SslMode::VerifyFull, &flattened);
    Connection::connect(&options)
        .await
        .expect("a CA pasted on one line, as the old connector's configs had it");
}

#[tokio::test]
async fn verify_full_fails_with_a_wrong_ca() {
    let fixture = TlsFixture::generate();
    let cluster = tls_cluster(&fixture);
    let options = tls_options(
        &cluster,
        "localhost",
        SslMode::VerifyFull,
        &fixture.other_ca_pem,
    );
    let error = Connection::connect(&options)
        .await
        .expect_err("an unrelated CA must not verify the server");
    assert!(matches!(error, PgError::Tls { .. }), "TLS error: {error:?}");
    let text = error.to_string();
    assert!(
        text.contains("certificate") && text.contains("ssl_root_ca_cert"),
        "says the certificate is not trusted and what to fix: {text}"
    );
}

#[tokio::test]
async fn verify_full_fails_with_a_host_name_not_in_the_certificate_but_verify_ca_accepts_it() {
    let fixture = TlsFixture::generate();
    let cluster = tls_cluster(&fixture);
    let options = tls_options(&cluster, "127.0.0.1", SslMode::VerifyFull, &fixture.ca_pem);
    let error = Connection::connect(&options)
        .await
        .expect_err("the certificate names localhost only");
    assert!(matches!(error, PgError::Tls { .. }), "TLS error: {error:?}");
    assert!(error.to_string().contains("127.0.0.1"), "{error}");

    let options = tls_options(&cluster, "127.0.0.1", SslMode::VerifyCa, &fixture.ca_pem);
    Connection::connect(&options)
        .await
        .expect("verify-ca checks the chain, not the name");
}

#[tokio::test]
async fn a_pem_that_is_not_a_certificate_is_a_config_error() {
    let fixture = TlsFixture::generate();
    let cluster = tls_cluster(&fixture);
    let options = tls_options(
        &cluster,
        "localhost",
        SslMode::VerifyFull,
        "this is not a certificate",
    );
    let error = Connection::connect(&options)
        .await
        .expect_err("garbage PEM");
    let text = error.to_string();
    assert!(text.contains("ssl_root_ca_cert"), "names the key: {text}");
}

#[tokio::test]
async fn require_without_a_ca_encrypts_without_verifying() {
    let fixture = TlsFixture::generate();
    let cluster = tls_cluster(&fixture);
    let mut options = cluster.options("scram_user");
    options.password = Some(Secret::new(PASSWORD));
    options.sslmode = SslMode::Require;
    let connection = Connection::connect(&options)
        .await
        .expect("sslmode=require");
    assert!(connection.is_tls());
}

#[tokio::test]
async fn server_errors_carry_sqlstate_position_and_leave_the_connection_usable() {
    let cluster = PgCluster::start_default();
    let mut connection = Connection::connect(&cluster.options("postgres"))
        .await
        .expect("connect");
    let error = connection
        .query("SELECT * FROM no_such_table")
        .await
        .expect_err("unknown table");
    let db = error.as_db_error().expect("a server error");
    assert_eq!(db.code, "42P01");
    assert!(db.message.contains("no_such_table"));
    assert_eq!(db.position, Some(15));
    let row = connection
        .query_one("SELECT 1 + 1")
        .await
        .expect("usable after an error")
        .expect("row");
    assert_eq!(row.get(0), Some("2"));
}

fn replication_options(cluster: &PgCluster) -> pgferry::pg::ConnectOptions {
    let mut options = cluster.options("postgres");
    options.replication = true;
    options
}

fn slot_confirmed_flush(cluster: &PgCluster, slot: &str) -> Lsn {
    cluster
        .psql(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .parse()
        .expect("confirmed_flush_lsn is an LSN")
}

#[tokio::test]
async fn replication_round_trip_moves_confirmed_flush_lsn_to_exactly_what_was_sent() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    cluster.psql("CREATE TABLE public.items (id int PRIMARY KEY, name text)");

    let mut client = ReplicationClient::connect(&replication_options(&cluster))
        .await
        .expect("replication connection");
    let identity = client.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert_eq!(identity.dbname.as_deref(), Some("postgres"));
    let slot = client
        .create_logical_slot(
            "pgferry_round_trip",
            "wal2json",
            SlotSnapshot::Export,
            false,
        )
        .await
        .expect("CREATE_REPLICATION_SLOT");
    assert!(slot.snapshot_name.is_some(), "an exported snapshot name");
    assert_eq!(slot.output_plugin, "wal2json");
    assert_eq!(
        slot_confirmed_flush(&cluster, "pgferry_round_trip"),
        slot.consistent_point
    );
    drop(client);

    cluster.psql("INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 3) g");
    let expected_lsn: Lsn = cluster
        .psql("SELECT pg_current_wal_insert_lsn()")
        .parse()
        .expect("LSN");

    let client = ReplicationClient::connect(&replication_options(&cluster))
        .await
        .expect("second replication connection");
    let options = vec![
        ("format-version".to_owned(), "2".to_owned()),
        ("include-transaction".to_owned(), "true".to_owned()),
    ];
    let mut stream = client
        .start_logical(
            "pgferry_round_trip",
            slot.consistent_point,
            &options,
            Duration::from_secs(3600),
        )
        .await
        .expect("START_REPLICATION");

    let mut inserted = Vec::new();
    let mut commit_lsn = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while commit_lsn.is_none() {
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("changes arrive within 30 s")
            .expect("stream healthy")
            .expect("stream open");
        if let pgferry::decode::replication::ReplicationMessage::XLogData(xlog) = message {
            let json: serde_json::Value =
                serde_json::from_slice(&xlog.data).expect("wal2json emits JSON");
            match json["action"].as_str() {
                Some("I") => {
                    assert_eq!(json["table"], "items");
                    inserted.push(json["columns"][0]["value"].as_i64().expect("id"));
                }
                Some("C") => commit_lsn = Some(xlog.wal_start),
                _ => {}
            }
        }
    }
    assert_eq!(inserted, vec![1, 2, 3], "every inserted row, in order");
    let commit_lsn = commit_lsn.expect("commit seen");
    assert!(
        commit_lsn <= expected_lsn,
        "commit at {commit_lsn} is before the insert position {expected_lsn} read after it"
    );

    stream.confirm(commit_lsn);
    stream.send_status(false).await.expect("status update");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let confirmed = slot_confirmed_flush(&cluster, "pgferry_round_trip");
        if confirmed == commit_lsn {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "confirmed_flush_lsn is {confirmed}, expected {commit_lsn}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut client = stream.stop().await.expect("clean stop");
    client
        .drop_slot("pgferry_round_trip", true)
        .await
        .expect("DROP_REPLICATION_SLOT");
    assert_eq!(
        cluster.psql("SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
}

#[tokio::test]
async fn starting_an_unknown_slot_is_a_server_error_naming_it() {
    let cluster = PgCluster::start_default();
    let client = ReplicationClient::connect(&replication_options(&cluster))
        .await
        .expect("replication connection");
    let error = client
        .start_logical("no_such_slot", Lsn::ZERO, &[], Duration::from_secs(10))
        .await
        .expect_err("unknown slot");
    assert_eq!(error.code(), Some("42704"), "{error}");
    assert!(error.to_string().contains("no_such_slot"));
}

/// A destination session commits durably even where the server's default is
/// `synchronous_commit = off` (as on the test clusters): an asynchronous COMMIT returns before
/// its WAL is flushed, and pgferry acknowledges what a COMMIT holds as soon as it returns. A
/// stronger setting of the role is kept; other sessions keep the server's default.
#[tokio::test]
async fn a_destination_session_turns_an_asynchronous_commit_default_back_on() {
    let cluster = PgCluster::start_default();
    cluster.psql("CREATE ROLE apply_user LOGIN SUPERUSER; ALTER ROLE apply_user SET synchronous_commit = 'remote_apply';");
    let setting = |options: pgferry::pg::ConnectOptions| async move {
        let mut connection = Connection::connect(&options).await.expect("connect");
        let rows = connection
            .query("SHOW synchronous_commit")
            .await
            .expect("show");
        rows[0].get(0).unwrap_or_default().to_owned()
    };
    let mut destination = cluster.options("postgres");
    destination.durable_commits = true;
    assert_eq!(setting(destination).await, "on");
    assert_eq!(setting(cluster.options("postgres")).await, "off");
    let mut stronger = cluster.options("apply_user");
    stronger.durable_commits = true;
    assert_eq!(setting(stronger).await, "remote_apply");
}

//! The test harness itself: clusters start configured as asked and are gone after drop.

mod support;

use support::{PgCluster, TlsFixture};

#[test]
fn a_cluster_starts_with_logical_wal_and_wal2json() {
    let cluster = PgCluster::start_default();
    cluster.require_wal2json();
    assert_eq!(cluster.psql("SHOW wal_level"), "logical");
    cluster.psql("SELECT pg_create_logical_replication_slot('harness_probe', 'wal2json')");
    cluster.psql("SELECT pg_drop_replication_slot('harness_probe')");
}

#[test]
fn settings_and_tls_are_applied_and_the_cluster_is_removed_on_drop() {
    let cluster = PgCluster::builder()
        .setting("wal_level", "replica")
        .tls(TlsFixture::generate())
        .start();
    assert_eq!(cluster.psql("SHOW wal_level"), "replica");
    assert_eq!(cluster.psql("SHOW ssl"), "on");
    let data = cluster.data();
    let port = cluster.port();
    drop(cluster);
    assert!(!data.exists(), "data directory removed");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server stopped"
    );
}

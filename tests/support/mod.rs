//! Test harness: private, throwaway PostgreSQL clusters for integration tests.
//!
//! Debian's PostgreSQL 15 by default; [`ClusterBuilder::major`] picks 14, 16, 17 or 18, whose
//! server binaries `scripts/test.sh` unpacks into `$PGFERRY_PG_MAJORS/<major>/bin` (default
//! [`DEFAULT_PG_MAJORS`]; they carry pgoutput and test_decoding, not wal2json). Those binaries
//! find their own libraries (RUNPATH `$ORIGIN/../lib`): no `LD_LIBRARY_PATH` is needed. The same
//! settings and `initdb` flags serve every major; `output_plugin_libraries` is written only for a
//! server that has it (Debian's 15.20 does, the fetched 14.23, 16.14, 17.10 and 18.4 do not).
//!
//! Each [`PgCluster`] runs `initdb` in its own temporary directory and starts `postgres` on a
//! free port (as the `postgres` OS user when the tests run as root, since PostgreSQL refuses to
//! run as root), with `wal_level=logical`. `Drop` stops it with `pg_ctl stop -m immediate` and
//! removes the directory, also when a test panics. The harness installs nothing: a missing
//! binary or wal2json fails with the package to install (`scripts/test.sh` installs them).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pgferry::pg::{ConnectOptions, SslMode};

/// Where PostgreSQL's server binaries are (`pg_config --bindir`), with a clear failure.
fn bindir() -> PathBuf {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    let candidates = [
        from_pg_config,
        Some(PathBuf::from("/usr/lib/postgresql/15/bin")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
        .unwrap_or_else(|| {
            panic!("PostgreSQL server binaries (initdb, postgres) not found: install the Debian package postgresql-15 (scripts/test.sh does)")
        })
}

/// Where `scripts/test.sh` puts the server binaries of the majors Debian does not ship here,
/// unless `PGFERRY_PG_MAJORS` says otherwise.
pub const DEFAULT_PG_MAJORS: &str = "/var/cache/pgferry/postgres";

/// The majors [`ClusterBuilder::major`] accepts: Debian's 15 and those `scripts/test.sh` fetches.
pub const MAJORS: [u32; 5] = [14, 15, 16, 17, 18];

/// The server binaries of PostgreSQL `major`, with a clear failure when they are missing.
fn bindir_of_major(major: u32) -> PathBuf {
    assert!(
        MAJORS.contains(&major),
        "PostgreSQL {major} is not one the tests run on (they run on {MAJORS:?})"
    );
    let dir = if major == 15 {
        PathBuf::from("/usr/lib/postgresql/15/bin")
    } else {
        let root = std::env::var_os("PGFERRY_PG_MAJORS")
            .filter(|root| !root.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_MAJORS));
        root.join(major.to_string()).join("bin")
    };
    let missing: Vec<&str> = ["initdb", "pg_ctl", "postgres"]
        .into_iter()
        .filter(|name| !dir.join(name).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "PostgreSQL {major}: {missing:?} missing in {}: run scripts/test.sh, which installs Debian's postgresql-15 and fetches 14, 16, 17 and 18 into $PGFERRY_PG_MAJORS (default {DEFAULT_PG_MAJORS}); or point PGFERRY_PG_MAJORS at a directory holding <major>/bin",
        dir.display()
    );
    dir
}

/// Whether the server binary in `bindir` knows the setting `name` (`postgres --describe-config`
/// lists every parameter of that build; it runs without a cluster, and also as root).
pub fn has_setting(bindir: &Path, name: &str) -> bool {
    let output = Command::new(bindir.join("postgres"))
        .arg("--describe-config")
        .output()
        .unwrap_or_else(|error| panic!("could not run {}/postgres: {error}", bindir.display()));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|line| line.split('\t').next() == Some(name))
}

fn pkglibdir() -> PathBuf {
    let output = Command::new("pg_config").arg("--pkglibdir").output();
    match output {
        Ok(output) if output.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
        }
        _ => PathBuf::from("/usr/lib/postgresql/15/lib"),
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A TCP port nothing listens on now (for a server the test starts).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free TCP port on 127.0.0.1")
}

/// Certificates made for a TLS-enabled cluster, as PEM text.
#[derive(Debug, Clone)]
pub struct TlsFixture {
    /// The CA that signed the server certificate.
    pub ca_pem: String,
    /// An unrelated CA, for negative tests.
    pub other_ca_pem: String,
    /// Server certificate (names only `localhost`).
    pub server_cert_pem: String,
    /// Server private key.
    pub server_key_pem: String,
}

impl TlsFixture {
    /// A CA and a server certificate for `localhost` only (so `127.0.0.1` is a name mismatch).
    pub fn generate() -> TlsFixture {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let make_ca = |name: &str| {
            let key = KeyPair::generate().expect("CA key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).expect("CA certificate");
            (cert, key)
        };
        let (ca, ca_key) = make_ca("pgferry test CA");
        let (other_ca, _) = make_ca("unrelated CA");
        let server_key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server = params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server certificate");
        TlsFixture {
            ca_pem: ca.pem(),
            other_ca_pem: other_ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
    }
}

/// Settings for a cluster before it starts.
#[derive(Debug, Default)]
pub struct ClusterBuilder {
    major: Option<u32>,
    settings: Vec<(String, String)>,
    stock_allow_list: bool,
    hba: Vec<String>,
    tls: Option<TlsFixture>,
}

impl ClusterBuilder {
    /// Runs PostgreSQL `major` (one of [`MAJORS`]): 15 is Debian's, the others come from
    /// `$PGFERRY_PG_MAJORS`. Without it: the binaries `pg_config --bindir` names (Debian's 15).
    pub fn major(mut self, major: u32) -> Self {
        self.major = Some(major);
        self
    }

    /// Overrides a `postgresql.conf` setting (e.g. `wal_level`, `replica`).
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds a `pg_hba.conf` line before the defaults (first match wins).
    pub fn hba(mut self, line: &str) -> Self {
        self.hba.push(line.to_owned());
        self
    }

    /// Leaves `output_plugin_libraries` at the server's default (`pgoutput, test_decoding` on
    /// releases that have it): a stock server, which refuses wal2json.
    pub fn stock_allow_list(mut self) -> Self {
        self.stock_allow_list = true;
        self
    }

    /// Turns TLS on with these certificates.
    pub fn tls(mut self, fixture: TlsFixture) -> Self {
        self.tls = Some(fixture);
        self
    }

    /// Creates and starts the cluster; panics with the server log if it does not come up.
    pub fn start(self) -> PgCluster {
        PgCluster::start(self)
    }
}

/// A running private cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct PgCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
    stopped: bool,
}

impl PgCluster {
    /// A builder with the defaults: trust for everyone on loopback, `wal_level=logical`.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// A default cluster.
    pub fn start_default() -> PgCluster {
        PgCluster::builder().start()
    }

    fn start(builder: ClusterBuilder) -> PgCluster {
        let bindir = builder.major.map_or_else(bindir, bindir_of_major);
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("pgferry-test-")
            .tempdir_in("/tmp")
            .expect("temporary directory");
        let cluster = PgCluster {
            port: free_port(),
            dir,
            bindir,
            as_postgres,
            stopped: true,
        };
        if as_postgres {
            cluster.must("chown", &["-R", "postgres:", &cluster.dir_str()], false);
        }
        cluster.must(
            &cluster.bin("initdb"),
            &[
                "-D",
                &cluster.data_str(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            true,
        );
        let mut conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = logical\nmax_replication_slots = 10\nmax_wal_senders = 10\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nlogging_collector = off\nwal_sender_timeout = 60s\n",
            cluster.port,
            cluster.dir_str()
        );
        let mut hba = builder.hba.join("\n");
        hba.push_str(
            "\nlocal all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n",
        );
        if let Some(tls) = &builder.tls {
            cluster.write_data_file("server.crt", &tls.server_cert_pem);
            cluster.write_data_file("server.key", &tls.server_key_pem);
            cluster.must(
                "chmod",
                &[
                    "600",
                    &cluster.data().join("server.key").display().to_string(),
                ],
                false,
            );
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        // PostgreSQL 15.19 and the same-day minors allow only built-in output plugins unless
        // the allow-list names others: the test clusters allow wal2json where it exists.
        if !builder.stock_allow_list && has_setting(&cluster.bindir, "output_plugin_libraries") {
            conf.push_str("output_plugin_libraries = 'pgoutput, test_decoding, wal2json'\n");
        }
        for (name, value) in &builder.settings {
            conf.push_str(&format!("{name} = '{value}'\n"));
        }
        let existing =
            std::fs::read_to_string(cluster.data().join("postgresql.conf")).unwrap_or_default();
        cluster.write_data_file(
            "postgresql.conf",
            &format!("{existing}\n# pgferry test harness\n{conf}"),
        );
        cluster.write_data_file("pg_hba.conf", &hba);
        let mut cluster = cluster;
        cluster.pg_ctl_start();
        cluster
    }

    fn pg_ctl_start(&mut self) {
        let log = self.dir.path().join("server.log").display().to_string();
        let output = self.run(
            &self.bin("pg_ctl"),
            &[
                "-D",
                &self.data_str(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
            true,
        );
        if !output.status.success() {
            panic!(
                "PostgreSQL did not start:\n{}\n--- server log ---\n{}",
                String::from_utf8_lossy(&output.stderr),
                self.server_log()
            );
        }
        self.stopped = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL is not accepting TCP connections:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn bin(&self, name: &str) -> String {
        self.bindir.join(name).display().to_string()
    }

    fn dir_str(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn data_str(&self) -> String {
        self.data().display().to_string()
    }

    fn write_data_file(&self, name: &str, contents: &str) {
        let path = self.data().join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
        if self.as_postgres {
            self.must("chown", &["postgres:", &path.display().to_string()], false);
        }
    }

    fn run(&self, program: &str, args: &[&str], as_server_user: bool) -> Output {
        let mut command = if as_server_user && self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", program]);
            command
        } else {
            Command::new(program)
        };
        command.args(args).current_dir("/tmp");
        command
            .output()
            .unwrap_or_else(|error| panic!("could not run {program}: {error}"))
    }

    fn must(&self, program: &str, args: &[&str], as_server_user: bool) {
        let output = self.run(program, args, as_server_user);
        assert!(
            output.status.success(),
            "{program} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs SQL as the superuser over the Unix socket; returns unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs SQL as the superuser; `Err` with psql's message instead of panicking (for SQL that
    /// may meet a busy slot or a server going down).
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let output = Command::new("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .map_err(|error| format!("psql: {error}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout)
                .trim_end()
                .to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Runs SQL as the superuser in `database`.
    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        let output = Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &self.dir_str(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .expect("psql (package postgresql-client-15) must be installed");
        assert!(
            output.status.success(),
            "psql failed for {sql:?}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned()
    }

    /// Re-reads `pg_hba.conf` and reloadable settings.
    pub fn reload(&self) {
        self.psql("SELECT pg_reload_conf()");
    }

    /// Connection options for `user` over TCP, without TLS.
    pub fn options(&self, user: &str) -> ConnectOptions {
        let mut options = ConnectOptions::new("127.0.0.1", self.port, user, "postgres");
        options.sslmode = SslMode::Disable;
        options.connect_timeout = Duration::from_secs(10);
        options
    }

    /// Fails with the package name unless wal2json is installed on this machine.
    pub fn require_wal2json(&self) {
        let library = pkglibdir().join("wal2json.so");
        assert!(Path::new(&library).exists(), "{} is missing: install the Debian package postgresql-15-wal2json (scripts/test.sh does)", library.display());
    }

    /// Restarts the server (fast shutdown: sessions are terminated, as in a real restart),
    /// waiting `down` in between.
    pub fn restart(&mut self, down: Duration) {
        self.must(
            &self.bin("pg_ctl"),
            &["-D", &self.data_str(), "-m", "fast", "-w", "stop"],
            true,
        );
        self.stopped = true;
        std::thread::sleep(down);
        self.pg_ctl_start();
    }

    /// Crashes the server and starts it again on the same data directory, which runs crash
    /// recovery: SIGKILL to the postmaster, then to every process it had started (the whole
    /// server dies at once, as when it is OOM-killed), waiting `down` in between.
    ///
    /// The cluster's `fsync = off` is safe for this: a killed process leaves what it wrote in
    /// the OS page cache, which survives; only a crash of the operating system would lose it.
    /// (Commits made with `synchronous_commit = off` may still be lost, as on any server: WAL
    /// not yet written out from shared memory dies with it.)
    pub fn kill_and_restart(&mut self, down: Duration) {
        let pid_file = self.data().join("postmaster.pid");
        let postmaster: u32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no postmaster PID in {}", pid_file.display()));
        // As root this reaches the `postgres` user's processes; otherwise they are ours.
        let signal = |name: &str, pid: u32| {
            let _ = Command::new("kill").args([name, &pid.to_string()]).output();
        };
        // Stopped, the postmaster starts no process between the listing and the kill.
        signal("-STOP", postmaster);
        let mut server = vec![postmaster];
        server.extend(children_of(postmaster));
        for pid in &server {
            signal("-KILL", *pid);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.iter().any(|pid| is_alive(*pid)) {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL processes {server:?} outlived SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The dead server's lock files: an orphan not yet reaped (a zombie) still answers
        // kill(pid, 0), and PostgreSQL would take it for a running postmaster.
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(self.dir.path().join(format!(".s.PGSQL.{}.lock", self.port)));
        self.stopped = true;
        std::thread::sleep(down);
        let before = self.server_log().len();
        self.pg_ctl_start();
        let log = self.server_log();
        assert!(
            log.get(before..)
                .is_some_and(|after| after.contains("not properly shut down")),
            "PostgreSQL started without crash recovery after SIGKILL:\n{log}"
        );
    }

    /// Stops the server now (also done on drop).
    pub fn stop(&mut self) {
        if !self.stopped {
            let _ = self.run(
                &self.bin("pg_ctl"),
                &["-D", &self.data_str(), "-m", "immediate", "-w", "stop"],
                true,
            );
            self.stopped = true;
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The state letter and parent PID of process `pid`, from `/proc/<pid>/stat`.
fn process_status(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": the command may hold spaces and parentheses.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// Whether process `pid` runs (a zombie has exited: it only waits to be reaped).
fn is_alive(pid: u32) -> bool {
    matches!(process_status(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
                .filter(
                    |child| matches!(process_status(*child), Some((_, parent)) if parent == pid),
                )
                .collect()
        })
        .unwrap_or_default()
}

/// The `peak RSS … MB` line of a `pgferry run` summary, in MB.
pub fn peak_rss_mb(summary: &str) -> f64 {
    summary
        .lines()
        .find_map(|line| line.strip_prefix("peak RSS "))
        .and_then(|rest| rest.strip_suffix(" MB"))
        .and_then(|mb| mb.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in the summary:\n{summary}"))
}

/// Runs `pgferry run --once -c <config>` to completion (it must succeed); returns its summary.
pub fn run_to_completion(config: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_pgferry"))
        .args(["run", "--once", "-c"])
        .arg(config)
        .output()
        .expect("run pgferry");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "pgferry run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Merges `extra` into a config: an object section (`"source": {…}`) is merged key by key,
/// anything else replaces or adds the top-level key.
pub fn merge_sections(config: &mut serde_json::Value, extra: &serde_json::Value) {
    let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) else {
        return;
    };
    for (section, values) in extra {
        match (config.get_mut(section), values) {
            (Some(serde_json::Value::Object(target)), serde_json::Value::Object(values)) => {
                target.extend(values.clone());
            }
            _ => {
                config.insert(section.clone(), values.clone());
            }
        }
    }
}

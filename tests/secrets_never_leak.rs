//! Every command run with failing connections and bad configs, with the most verbose logs in
//! both formats: no password, API key, JWT or PEM private key may appear in any output or log
//! line. Also: `pgferry run` logs an explicit TLS opt-out for a remote host as a warning.

mod gdnlite_support;
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gdnlite_support::Server;
use serde_json::{json, Value};
use support::PgCluster;

/// The right password of the role `app` (a connection that works must not print it either).
const PG_PASSWORD: &str = "pgpw-Zq8xLEAK-right";
/// A wrong password.
const PG_WRONG_PASSWORD: &str = "pgpw-Zq8xLEAK-wrong";
/// gdnlite's API key.
const API_KEY: &str = "apikey-Zq8xLEAK-right";
/// An API key gdnlite refuses.
const WRONG_API_KEY: &str = "apikey-Zq8xLEAK-wrong";
/// gdnlite's login (email + password → JWT).
const GDN_EMAIL: &str = "ops@example.com";
const GDN_PASSWORD: &str = "gdnpw-Zq8xLEAK";
/// Passphrase of an encrypted client key.
const KEY_PASSPHRASE: &str = "keypass-Zq8xLEAK";
/// A secret that only ever comes from an environment variable.
const ENV_SECRET: &str = "envsecret-Zq8xLEAK";

/// What must never be printed: the literal secrets, any 24 characters of the PEM private keys'
/// base64 bodies, and anything shaped like a JWT.
struct Secrets {
    literals: Vec<String>,
}

impl Secrets {
    fn new(private_key_pem: &str) -> Secrets {
        let mut literals: Vec<String> = [
            PG_PASSWORD,
            PG_WRONG_PASSWORD,
            API_KEY,
            WRONG_API_KEY,
            GDN_PASSWORD,
            KEY_PASSPHRASE,
            ENV_SECRET,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Any 24 consecutive characters of the key body would identify it.
        for line in private_key_pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
        {
            let chars: Vec<char> = line.chars().collect();
            for chunk in chars.chunks(24).filter(|chunk| chunk.len() == 24) {
                literals.push(chunk.iter().collect());
            }
        }
        Secrets { literals }
    }

    /// Panics naming the scenario and the leaking line.
    fn assert_absent(&self, scenario: &str, output: &str) {
        for line in output.lines() {
            for secret in &self.literals {
                assert!(
                    !line.contains(secret.as_str()),
                    "{scenario}: a secret ({secret:?}) leaked in: {line}"
                );
            }
            assert!(!looks_like_jwt(line), "{scenario}: a JWT leaked in: {line}");
        }
    }
}

/// Whether `text` holds `eyJ…​.eyJ…​.…` (a JWT: base64url JSON header and payload, signature).
fn looks_like_jwt(text: &str) -> bool {
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices("eyJ").any(|(at, _)| {
        let rest = &text[at..];
        let parts: Vec<&str> = rest
            .split(|c: char| !(is_b64(c) || c == '.'))
            .next()
            .unwrap_or("")
            .split('.')
            .collect();
        parts.len() >= 3 && parts[0].len() > 8 && parts[1].len() > 8 && !parts[2].is_empty()
    })
}

/// Runs pgferry with `args`, feeding `stdin`, with trace logs; kills it after 60 s. Output
/// goes to files (trace logs overflow a pipe nobody reads while we wait).
fn pgferry(args: &[&str], stdin: &str, log_format: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("output dir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgferry"));
    command
        .arg("--log-format")
        .arg(log_format)
        .args(args)
        .env("PGFERRY_LOG", "trace")
        .env("PGFERRY_TEST_ENV_SECRET", ENV_SECRET)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let mut child = command.spawn().expect("start pgferry");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll pgferry") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = format!(
        "{}\n{}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    (status.and_then(|status| status.code()), text)
}

/// A free TCP port nobody listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

struct Fixture {
    dir: tempfile::TempDir,
    cluster: PgCluster,
    private_key_pem: String,
    encrypted_key_pem: String,
    certificate_pem: String,
}

impl Fixture {
    fn write(&self, name: &str, value: &Value) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, value.to_string()).expect("write config");
        path
    }

    fn write_raw(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// A PostgreSQL connection object: the cluster with `password`, or a closed port.
    fn pg(&self, password: Value, reachable: bool) -> Value {
        json!({
            "host": "127.0.0.1",
            "port": if reachable { self.cluster.port() } else { closed_port() },
            "user": "app", "password": password, "dbname": "postgres",
            "sslmode": "disable", "connect_timeout": 5
        })
    }
}

fn gdn_destination(url: &str, key: &str) -> Value {
    json!({"gdn_url": url, "api_key": key, "max_retries": 1, "request_timeout": 3})
}

#[test]
fn no_command_prints_a_secret_whatever_fails() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cluster = PgCluster::builder()
        .hba("host all app 127.0.0.1/32 scram-sha-256")
        .start();
    cluster.psql(&format!(
        "CREATE ROLE app LOGIN REPLICATION PASSWORD '{PG_PASSWORD}';
         CREATE TABLE public.orders (id int PRIMARY KEY, note text);
         INSERT INTO public.orders VALUES (1, 'a'), (2, 'b');
         GRANT SELECT ON public.orders TO app;"
    ));
    let server = runtime.block_on(Server::start_with(|config| {
        config.api_key = pgferry::secret::Secret::new(API_KEY);
        config.login = Some((
            GDN_EMAIL.to_owned(),
            pgferry::secret::Secret::new(GDN_PASSWORD),
        ));
    }));
    let gdn = server.url();
    let key = rcgen::KeyPair::generate().expect("client key");
    let private_key_pem = key.serialize_pem();
    let certificate_pem = rcgen::CertificateParams::new(vec!["app".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate")
        .pem();
    let encrypted_key_pem = {
        let mut openssl = Command::new("openssl")
            .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout"])
            .arg(format!("pass:{KEY_PASSPHRASE}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("openssl encrypts the test key");
        openssl
            .stdin
            .take()
            .expect("stdin")
            .write_all(private_key_pem.as_bytes())
            .expect("key to openssl");
        let output = openssl.wait_with_output().expect("openssl");
        assert!(output.status.success(), "openssl pkcs8 failed");
        String::from_utf8(output.stdout).expect("PEM")
    };
    let fixture = Fixture {
        dir: tempfile::tempdir().expect("temp dir"),
        cluster,
        private_key_pem,
        encrypted_key_pem,
        certificate_pem,
    };
    let mut secrets = Secrets::new(&fixture.private_key_pem);
    secrets
        .literals
        .extend(Secrets::new(&fixture.encrypted_key_pem).literals);

    let right = json!(PG_PASSWORD);
    let wrong = json!(PG_WRONG_PASSWORD);
    let from_env = json!({"env": "PGFERRY_TEST_ENV_SECRET"});
    let mut scenarios: Vec<(String, Vec<String>, String)> = Vec::new();
    let mut add = |name: &str, args: &[&str], config: Option<&Path>, stdin: &str| {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if let Some(config) = config {
            args.push("-c".into());
            args.push(config.display().to_string());
        }
        scenarios.push((name.to_owned(), args, stdin.to_owned()));
    };

    // The tap's catalog and a LOG_BASED state (its slot does not exist: a tap that connects
    // fails after it logged in).
    let catalog = fixture
        .write(
            "catalog.json",
            &json!({"streams": [{"tap_stream_id": "public-orders", "metadata": [
                {"breadcrumb": [], "metadata": {"selected": true, "replication-method": "LOG_BASED"}}]}]}),
        )
        .display()
        .to_string();
    let tap_state = fixture
        .write(
            "tap_state.json",
            &json!({"bookmarks": {"public-orders": {"lsn": 1000, "version": 1}}}),
        )
        .display()
        .to_string();

    // PostgreSQL connections that fail: closed port, wrong password, env password (wrong),
    // TLS demanded of a server without it while a client key (plain and encrypted) is set.
    let mut pg_cases = vec![
        ("unreachable", fixture.pg(right.clone(), false)),
        ("wrong password", fixture.pg(wrong.clone(), true)),
        ("password from env", fixture.pg(from_env.clone(), true)),
    ];
    let mut tls = fixture.pg(right.clone(), true);
    tls["sslmode"] = json!("require");
    tls["ssl_client_certificate"] = json!(fixture.certificate_pem);
    tls["ssl_client_key"] = json!(fixture.private_key_pem);
    pg_cases.push(("tls refused, client key", tls.clone()));
    let mut encrypted = tls.clone();
    encrypted["ssl_client_key"] = json!(fixture.encrypted_key_pem);
    encrypted["ssl_client_password"] = json!("not-the-passphrase");
    pg_cases.push(("encrypted key, wrong passphrase", encrypted.clone()));
    encrypted["ssl_client_password"] = json!(KEY_PASSPHRASE);
    pg_cases.push(("encrypted key, right passphrase", encrypted));
    let mut mangled = tls;
    mangled["ssl_client_key"] = json!(fixture
        .private_key_pem
        .replace('\n', " ")
        .replacen('M', "!", 3));
    pg_cases.push(("mangled client key", mangled));
    for (index, (case, pg)) in pg_cases.iter().enumerate() {
        let source = fixture.write(&format!("source{index}.json"), pg);
        add(&format!("check: {case}"), &["check"], Some(&source), "");
        add(
            &format!("check --format json: {case}"),
            &["check", "--format", "json"],
            Some(&source),
            "",
        );
        add(
            &format!("discover: {case}"),
            &["discover"],
            Some(&source),
            "",
        );
        let mut tap = pg.clone();
        tap["replication_method"] = json!("FULL_TABLE");
        let pipeline = fixture.write(
            &format!("run{index}.json"),
            &json!({"source": tap, "destination": gdn_destination(&gdn, API_KEY),
                    "tables": ["public.orders"], "parallelism": 1}),
        );
        add(
            &format!("run pg → gdn: {case}"),
            &["run"],
            Some(&pipeline),
            "",
        );
        let mut destination = pg.clone();
        destination["type"] = json!("postgres");
        let gdn_to_pg = fixture.write(
            &format!("gdn_to_pg{index}.json"),
            &json!({
                "source": {"type": "gdn", "gdn_url": gdn, "email": GDN_EMAIL,
                           "password": GDN_PASSWORD, "source_collection": "orders",
                           "max_retries": 1, "request_timeout": 3},
                "destination": destination,
                "state_file": fixture.dir.path().join(format!("gdn_to_pg{index}.state")).display().to_string()
            }),
        );
        add(
            &format!("run gdn → pg: {case}"),
            &["run", "--once"],
            Some(&gdn_to_pg),
            "",
        );
        // PostgreSQL → PostgreSQL, the failing connection as the target, then as the source.
        let working = fixture.pg(right.clone(), true);
        for (side, source, target) in [("target", &working, pg), ("source", pg, &working)] {
            let mut source = source.clone();
            source["replication_method"] = json!("LOG_BASED");
            let mut target = target.clone();
            target["type"] = json!("postgres");
            let pg_to_pg = fixture.write(
                &format!("pg_to_pg_{side}{index}.json"),
                &json!({"source": source, "destination": target, "tables": ["public.orders"],
                        "parallelism": 1,
                        "state_file": fixture.dir.path().join(format!("pg_to_pg_{side}{index}.state")).display().to_string()}),
            );
            add(
                &format!("run pg → pg, {side}: {case}"),
                &["run", "--once"],
                Some(&pg_to_pg),
                "",
            );
        }
        let mut tap_source = pg.clone();
        tap_source["filter_schemas"] = json!("public");
        tap_source["replication_method"] = json!("FULL_TABLE");
        let tap_full = fixture.write(&format!("tap{index}.json"), &tap_source);
        add(&format!("tap: {case}"), &["tap"], Some(&tap_full), "");
        tap_source["replication_method"] = json!("LOG_BASED");
        let tap_log = fixture.write(&format!("tap_log{index}.json"), &tap_source);
        add(
            &format!("tap LOG_BASED -p -s: {case}"),
            &["tap", "-p", &catalog, "-s", &tap_state],
            Some(&tap_log),
            "",
        );
        let target = fixture.write(&format!("target{index}.json"), pg);
        add(
            &format!("target: {case}"),
            &["target"],
            Some(&target),
            "{\"type\":\"SCHEMA\",\"stream\":\"public-t\",\"schema\":{\"properties\":{\"id\":{\"type\":\"integer\"}}},\"key_properties\":[\"id\"]}\n{\"type\":\"RECORD\",\"stream\":\"public-t\",\"record\":{\"id\":1}}\n",
        );
    }

    // GDN that fails: refused key, wrong login (a JWT is never issued), unreachable, and a
    // login that works (a JWT is issued and used) followed by a failure.
    let pg_ok = fixture.pg(right.clone(), true);
    let mut tap_ok = pg_ok.clone();
    tap_ok["replication_method"] = json!("FULL_TABLE");
    let unreachable_gdn = format!("http://127.0.0.1:{}", closed_port());
    for (case, destination) in [
        ("wrong api key", gdn_destination(&gdn, WRONG_API_KEY)),
        (
            "api key from env, wrong",
            json!({"gdn_url": gdn, "api_key": from_env, "max_retries": 1}),
        ),
        ("unreachable", gdn_destination(&unreachable_gdn, API_KEY)),
        (
            "wrong login",
            json!({"gdn_url": gdn, "email": GDN_EMAIL, "password": PG_WRONG_PASSWORD, "max_retries": 1}),
        ),
        (
            "login ok, missing table",
            json!({"gdn_url": gdn, "email": GDN_EMAIL, "password": GDN_PASSWORD, "max_retries": 1}),
        ),
    ] {
        let tables = if case.contains("missing table") {
            "public.nope"
        } else {
            "public.orders"
        };
        let pipeline = fixture.write(
            &format!("gdn-{}.json", case.replace(' ', "_")),
            &json!({"source": tap_ok, "destination": destination, "tables": [tables], "parallelism": 1}),
        );
        add(
            &format!("run pg → gdn, GDN {case}"),
            &["run"],
            Some(&pipeline),
            "",
        );
        // `check` of a pipeline file checks its GDN destination too.
        add(
            &format!("check pipeline, GDN {case}"),
            &["check"],
            Some(&pipeline),
            "",
        );
    }
    let mut pg_destination = pg_ok.clone();
    pg_destination["type"] = json!("postgres");
    for (case, source) in [
        (
            "wrong api key",
            json!({"type": "gdn", "gdn_url": gdn, "api_key": WRONG_API_KEY, "source_collection": "orders", "max_retries": 1}),
        ),
        (
            "unreachable",
            json!({"type": "gdn", "gdn_url": unreachable_gdn, "api_key": API_KEY, "source_collection": "orders", "max_retries": 1, "request_timeout": 2}),
        ),
        (
            "login ok, missing collection",
            json!({"type": "gdn", "gdn_url": gdn, "email": GDN_EMAIL, "password": GDN_PASSWORD, "source_collection": "nope", "max_retries": 1}),
        ),
    ] {
        let pipeline = fixture.write(
            &format!("gdnsrc-{}.json", case.replace(' ', "_")),
            &json!({"source": source, "destination": pg_destination,
                    "state_file": fixture.dir.path().join("gdnsrc.state").display().to_string()}),
        );
        add(
            &format!("run gdn → pg, GDN {case}"),
            &["run", "--once"],
            Some(&pipeline),
            "",
        );
    }

    // The Singer target into GDN, fed a SCHEMA, a RECORD and a STATE: refused key, key from the
    // environment (wrong), unreachable, wrong login, an unknown fabric, and a working key or
    // login (a JWT is issued) meeting input it refuses.
    let singer_input = "{\"type\":\"SCHEMA\",\"stream\":\"public-t\",\"schema\":{\"properties\":{\"id\":{\"type\":\"integer\"}}},\"key_properties\":[\"id\"]}\n{\"type\":\"RECORD\",\"stream\":\"public-t\",\"record\":{\"id\":1}}\n{\"type\":\"STATE\",\"value\":{\"n\":1}}\n";
    // (A record's values are data, not secrets: an error may quote them. A line that is not
    // JSON is never quoted.)
    let refused_input = format!("{singer_input}not json {API_KEY} {GDN_PASSWORD}\n");
    for (case, config, input) in [
        (
            "wrong api key",
            gdn_destination(&gdn, WRONG_API_KEY),
            singer_input.to_owned(),
        ),
        (
            "api key from env, wrong",
            json!({"gdn_url": gdn, "api_key": from_env, "max_retries": 1}),
            singer_input.to_owned(),
        ),
        (
            "unreachable",
            gdn_destination(&unreachable_gdn, API_KEY),
            singer_input.to_owned(),
        ),
        (
            "wrong login",
            json!({"gdn_url": gdn, "email": GDN_EMAIL, "password": PG_WRONG_PASSWORD, "max_retries": 1}),
            singer_input.to_owned(),
        ),
        (
            "unknown fabric",
            json!({"gdn_url": gdn, "api_key": API_KEY, "fabric": "nope", "max_retries": 1}),
            singer_input.to_owned(),
        ),
        (
            "api key ok, refused input",
            gdn_destination(&gdn, API_KEY),
            refused_input.clone(),
        ),
        (
            "login ok, refused input",
            json!({"gdn_url": gdn, "email": GDN_EMAIL, "password": GDN_PASSWORD, "max_retries": 1}),
            refused_input.clone(),
        ),
    ] {
        let target = fixture.write(
            &format!("target_gdn-{}.json", case.replace(' ', "_")),
            &config,
        );
        add(
            &format!("target-gdn, GDN {case}"),
            &["target-gdn"],
            Some(&target),
            &input,
        );
    }

    // Bad configs that carry secrets in odd shapes under secret keys (a value of a non-secret
    // key, e.g. `port`, may be quoted in its error: it is not known to be secret).
    let bad_configs: Vec<(&str, String)> = vec![
        ("truncated JSON", format!("{{\"host\": \"db\", \"password\": \"{PG_PASSWORD}")),
        ("password of the wrong type", json!({"host": "db", "user": "u", "dbname": "d", "password": [PG_PASSWORD]}).to_string()),
        ("password object with a typo", json!({"host": "db", "user": "u", "dbname": "d", "password": {"evn": PG_PASSWORD}}).to_string()),
        ("password env var unset", json!({"host": "db", "user": "u", "dbname": "d", "password": {"env": "PGFERRY_TEST_UNSET"}}).to_string()),
        ("misspelled password key", json!({"host": "db", "user": "u", "dbname": "d", "pasword": PG_PASSWORD}).to_string()),
        ("client key as a number", json!({"host": "db", "user": "u", "dbname": "d", "ssl_client_key": 42, "ssl_client_password": KEY_PASSPHRASE}).to_string()),
        ("client key without certificate", json!({"host": "127.0.0.1", "port": closed_port(), "user": "u", "dbname": "d", "sslmode": "require", "ssl_client_key": fixture.private_key_pem}).to_string()),
        ("PEM key as root CA", json!({"host": "127.0.0.1", "port": closed_port(), "user": "u", "dbname": "d", "sslmode": "verify-full", "ssl_root_ca_cert": fixture.private_key_pem}).to_string()),
    ];
    for (index, (case, text)) in bad_configs.iter().enumerate() {
        let source = fixture.write_raw(&format!("bad{index}.json"), text);
        add(
            &format!("check, bad config: {case}"),
            &["check"],
            Some(&source),
            "",
        );
        add(
            &format!("discover, bad config: {case}"),
            &["discover"],
            Some(&source),
            "",
        );
        add(
            &format!("target, bad config: {case}"),
            &["target"],
            Some(&source),
            "",
        );
        add(
            &format!("tap, bad config: {case}"),
            &["tap"],
            Some(&source),
            "",
        );
        let pipeline = fixture.write_raw(
            &format!("badrun{index}.json"),
            &format!(
                "{{\"source\": {text}, \"destination\": {{\"gdn_url\": \"{gdn}\", \"api_key\": \"{API_KEY}\"}}}}"
            ),
        );
        add(
            &format!("run, bad source: {case}"),
            &["run"],
            Some(&pipeline),
            "",
        );
    }
    for (case, destination) in [
        (
            "api key of the wrong type",
            json!({"gdn_url": gdn, "api_key": [API_KEY]}),
        ),
        (
            "misspelled api key",
            json!({"gdn_url": gdn, "apikey": API_KEY}),
        ),
        (
            "password without email",
            json!({"gdn_url": gdn, "password": GDN_PASSWORD}),
        ),
        (
            "API key and a bad URL",
            json!({"gdn_url": "ftp://gdn", "api_key": API_KEY}),
        ),
        (
            "API key and a bad number",
            json!({"gdn_url": gdn, "api_key": API_KEY, "max_retries": "many"}),
        ),
        (
            "api key env var unset",
            json!({"gdn_url": gdn, "api_key": {"env": "PGFERRY_TEST_UNSET"}}),
        ),
        (
            "password object with a typo",
            json!({"gdn_url": gdn, "email": GDN_EMAIL, "password": {"evn": GDN_PASSWORD}}),
        ),
    ] {
        let pipeline = fixture.write(
            &format!("baddest-{}.json", case.replace(' ', "_")),
            &json!({"source": tap_ok, "destination": destination}),
        );
        add(
            &format!("run, bad destination: {case}"),
            &["run"],
            Some(&pipeline),
            "",
        );
        let target = fixture.write(
            &format!("badtarget_gdn-{}.json", case.replace(' ', "_")),
            &destination,
        );
        add(
            &format!("target-gdn, bad config: {case}"),
            &["target-gdn"],
            Some(&target),
            singer_input,
        );
        let mut source = destination.clone();
        source["type"] = json!("gdn");
        source["source_collection"] = json!("orders");
        let pipeline = fixture.write(
            &format!("badgdnsrc-{}.json", case.replace(' ', "_")),
            &json!({"source": source, "destination": pg_destination}),
        );
        add(
            &format!("run, bad GDN source: {case}"),
            &["run"],
            Some(&pipeline),
            "",
        );
    }
    add(
        "run, missing config",
        &["run", "-c", "/nonexistent/pipeline.json"],
        None,
        "",
    );

    let truncated = fixture.write_raw(
        "target_gdn_truncated.json",
        &format!("{{\"gdn_url\": \"{gdn}\", \"api_key\": \"{API_KEY}"),
    );
    add(
        "target-gdn, bad config: truncated JSON",
        &["target-gdn"],
        Some(&truncated),
        singer_input,
    );

    // A tap that logs in with the right password, then fails: its state names a slot the
    // database does not have.
    let mut tap_right = pg_ok.clone();
    tap_right["filter_schemas"] = json!("public");
    tap_right["replication_method"] = json!("LOG_BASED");
    let tap_right = fixture.write("tap_right.json", &tap_right);
    add(
        "tap LOG_BASED, right password, missing slot",
        &["tap", "--catalog", &catalog, "--state", &tap_state],
        Some(&tap_right),
        "",
    );

    // Singer target input that fails after connecting with the right password.
    let target_ok = fixture.write("target_ok.json", &pg_ok);
    add(
        "target, bad input line",
        &["target"],
        Some(&target_ok),
        &format!("{{\"type\":\"RECORD\",\"stream\":\"s\",\"record\":{{\"password\":\"{PG_PASSWORD}\"}}}}\nnot json {API_KEY}\n"),
    );

    // gdnlite: busy port, bad fault rate, missing data directory parent.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    let data_dir = fixture
        .dir
        .path()
        .join("gdnlite-data")
        .display()
        .to_string();
    add(
        "gdnlite, busy port",
        &[
            "gdnlite",
            "--listen",
            &busy_addr,
            "--data-dir",
            &data_dir,
            "--api-key",
            API_KEY,
            "--email",
            GDN_EMAIL,
            "--password",
            GDN_PASSWORD,
        ],
        None,
        "",
    );
    add(
        "gdnlite, bad fault rate",
        &[
            "gdnlite",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
            "--api-key",
            API_KEY,
            "--fault-5xx-rate",
            "7",
        ],
        None,
        "",
    );
    add(
        "gdnlite, unwritable data dir",
        &[
            "gdnlite",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/proc/pgferry-no-such-dir",
            "--api-key",
            API_KEY,
            "--password",
            GDN_PASSWORD,
            "--email",
            GDN_EMAIL,
        ],
        None,
        "",
    );
    add(
        "gdnlite, unknown flag",
        &[
            "gdnlite",
            "--api-key",
            API_KEY,
            "--password",
            GDN_PASSWORD,
            "--bogus",
        ],
        None,
        "",
    );

    let mut failures = 0;
    let count = scenarios.len();
    for (name, args, stdin) in &scenarios {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for format in ["text", "json"] {
            let started = Instant::now();
            let (code, output) = pgferry(&args, stdin, format);
            eprintln!("{:>6} ms  {name} ({format})", started.elapsed().as_millis());
            if code == Some(0) && !name.contains("encrypted key, right") {
                failures += 1;
            }
            secrets.assert_absent(&format!("{name} ({format} logs, exit {code:?})"), &output);
        }
    }
    assert!(
        failures <= count / 10,
        "{failures} of {count} scenarios succeeded; they were built to fail"
    );
    drop(busy);
    drop(server);
}

#[test]
fn an_explicit_tls_opt_out_for_a_remote_host_is_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 192.0.2.1 (TEST-NET-1) is never on this machine; the run fails after 1 s either way.
    let source = |sslmode: Option<&str>| {
        let mut source = json!({"host": "192.0.2.1", "user": "u", "dbname": "d",
                                "connect_timeout": 1, "replication_method": "FULL_TABLE"});
        if let Some(mode) = sslmode {
            source["sslmode"] = json!(mode);
        }
        source
    };
    for (sslmode, warned) in [
        (Some("disable"), true),
        (Some("require"), true),
        (Some("verify-full"), false),
        (None, false),
    ] {
        let path = dir.path().join("pipeline.json");
        std::fs::write(
            &path,
            json!({"source": source(sslmode), "destination": {"type": "null"}}).to_string(),
        )
        .expect("write pipeline");
        let (_, output) = pgferry(&["run", "-c", &path.display().to_string()], "", "json");
        let warning = output
            .lines()
            .find(|line| line.contains("\"level\":\"WARN\"") && line.contains("192.0.2.1:5432"));
        assert_eq!(warning.is_some(), warned, "sslmode {sslmode:?}: {output}");
        if let (Some(line), Some(mode)) = (warning, sslmode) {
            assert!(line.contains(&format!("sslmode {mode}")), "{line}");
        }
    }
}

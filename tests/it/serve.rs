//! `billflow serve`: the batches over the Postgres wire protocol, tested with the real
//! `psql` and with `tokio-postgres` against the real server binary on 127.0.0.1. The
//! expected figures are the sample's golden files (tests/golden/cloud-reseller) with the
//! arithmetic in the comments.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, Type};

use crate::common::*;

const USERS: &str = "users:
  admin:
    organization: '*'
    password: admin-secret
  eurodist-finance:
    organization: eurodist
    password_env: BILLFLOW_TEST_EURODIST_PASSWORD
";

/// A running `billflow serve`, stopped (killed and reaped) when dropped.
pub struct Served {
    child: Child,
    port: u16,
    _users: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the server on any free port of 127.0.0.1 over `warehouse`; `Err` holds what it
/// printed when it did not start.
fn start(warehouse: &Path, extra: &[&str]) -> Result<Served, String> {
    start_with_env(warehouse, extra, &[])
}

/// [`start`] over any warehouse (a folder or a URL), with `env` set for the server.
pub fn start_with_env(
    warehouse: impl AsRef<std::ffi::OsStr>,
    extra: &[&str],
    env: &[(&str, String)],
) -> Result<Served, String> {
    let users = tempfile::tempdir().unwrap();
    let file = users.path().join("users.yaml");
    std::fs::write(&file, USERS).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_billflow"))
        .args(["--threads", "2", "serve", "--port", "0", "--warehouse"])
        .arg(warehouse)
        .arg("--users")
        .arg(&file)
        .args(extra)
        .env("BILLFLOW_TEST_EURODIST_PASSWORD", "eurodist-secret")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let Some(port) = first
        .split("listening on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
    else {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        let status = child.wait().unwrap();
        return Err(format!("{status}: {first}{rest}"));
    };
    // Keep reading what it logs, so a full pipe never blocks it.
    std::thread::spawn(move || for _ in stderr.lines() {});
    Ok(Served {
        child,
        port,
        _users: users,
    })
}

/// A tool the tests need: installed with apt if missing (as `.ci/run` does), else the
/// test fails saying so.
fn need(tool: &str, package: &str) {
    let found = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !found() {
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!("(apt-get update -qq && apt-get install -y -qq {package}) >/dev/null 2>&1"),
            ])
            .status();
    }
    assert!(found(), "`{tool}` is needed: install the Debian package {package}");
}

/// `psql` as `user`: (success, stdout, stderr). Unaligned, tuples only, no psqlrc.
fn psql(served: &Served, user: &str, password: &str, conninfo: &str, commands: &[&str]) -> (bool, String, String) {
    need("psql", "postgresql-client");
    let mut cmd = Command::new("psql");
    cmd.arg(format!(
        "host=127.0.0.1 port={} user={user} dbname=billflow connect_timeout=10 {conninfo}",
        served.port
    ))
    .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
    .env("PGPASSWORD", password);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn psql_ok(served: &Served, user: &str, password: &str, command: &str) -> String {
    let (ok, out, err) = psql(served, user, password, "", &[command]);
    assert!(ok, "{command}: {err}");
    out
}

/// The sample for 2026-10, every tier published (its review policies are auto).
async fn sample_warehouse() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, pipeline) = sample_copy();
    let wh = tmp.path().join("wh");
    let report = run(&pipeline, "2026-10", &wh).await;
    assert!(report.ok(), "{report:?}");
    (tmp, pipeline, wh)
}

/// Issue 15: psql lists (`\d`) and describes the tables, queries them, is refused a
/// write, and sees a new batch and a status change with no restart; each user sees what
/// `--as` their organisation sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_lists_describes_and_queries_the_batches_read_only() {
    let (_tmp, pipeline, wh) = sample_warehouse().await;
    let served = start(&wh, &[]).unwrap();
    let admin = |c: &str| psql_ok(&served, "admin", "admin-secret", c);

    let tables = admin("\\d");
    for row in [
        "alpha_it|alpha_it_invoice_lines|table|",
        "billflow|batches|table|",
        "billflow|events|table|",
        "nimbus|nimbus_rated_usage|table|",
    ] {
        assert!(tables.contains(row), "{row} not in\n{tables}");
    }
    let columns = admin("\\d alpha_it.alpha_it_invoice_lines");
    for row in [
        "amount|numeric|",
        "usage_lines|bigint|",
        "_batch_id|text|",
        "_period|text|",
        "_status|text|",
    ] {
        assert!(columns.contains(row), "{row} not in\n{columns}");
    }
    // Alpha IT's October invoice lines: 10 lines, 391.19 EUR (golden).
    assert_eq!(
        admin("SELECT sum(amount), count(*) FROM alpha_it.alpha_it_invoice_lines"),
        "391.19|10\n"
    );

    let (ok, _, err) = psql(&served, "admin", "admin-secret", "", &["DELETE FROM billflow.batches"]);
    assert!(
        !ok && err.contains("only reading is allowed here: `DELETE FROM billflow.batches` is refused"),
        "{err}"
    );
    let (ok, _, err) = psql(&served, "admin", "admin-secret", "", &["SELECT 1 FROM x WHERE"]);
    assert!(!ok && err.contains("syntax error") && err.contains('^'), "{err}");

    // A new period's batches, then a void, each visible to the next statement.
    assert_eq!(
        admin("SELECT count(DISTINCT _period) FROM nimbus.nimbus_rated_usage"),
        "1\n"
    );
    assert!(run(&pipeline, "2026-09", &wh).await.ok());
    assert_eq!(
        admin("SELECT count(DISTINCT _period) FROM nimbus.nimbus_rated_usage"),
        "2\n"
    );
    let sept = void_batch(&wh, "nimbus-rated-usage", "2026-09").await;
    assert_eq!(
        admin(&format!("SELECT status FROM billflow.batches WHERE id = '{sept}'")),
        "voided\n"
    );

    // EuroDist sees its own batches and what Nimbus published to it, not BritDist's.
    let eurodist = psql_ok(&served, "eurodist-finance", "eurodist-secret", "\\d");
    assert!(eurodist.contains("eurodist|eurodist_usage|table|"), "{eurodist}");
    assert!(eurodist.contains("nimbus|nimbus_rated_usage|table|"), "{eurodist}");
    assert!(!eurodist.contains("britdist"), "{eurodist}");
}

/// A `numeric` read from its binary form, as the digits Postgres would print: decoded
/// here from the wire format's definition (base-10000 digits, weight, sign, scale), not
/// by billflow's encoder.
#[derive(Debug, PartialEq)]
struct Numeric(String);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| i16::from_be_bytes([raw[2 * i], raw[2 * i + 1]]);
        let (ndigits, weight, sign, scale) = (word(0) as usize, word(1) as i32, word(2) as u16, word(3) as usize);
        let digits: Vec<i16> = (0..ndigits).map(|i| word(4 + i)).collect();
        let mut whole = String::new();
        for g in 0..=weight.max(0) {
            let d = digits.get(g as usize).copied().unwrap_or(0);
            whole += &if whole.is_empty() {
                d.to_string()
            } else {
                format!("{d:04}")
            };
        }
        if weight < 0 {
            whole = "0".into();
        }
        let mut fraction = String::new();
        for g in (weight + 1)..(weight + 1 + scale.div_ceil(4) as i32) {
            let d = if g < 0 {
                0
            } else {
                digits.get(g as usize).copied().unwrap_or(0)
            };
            fraction += &format!("{d:04}");
        }
        fraction.truncate(scale);
        let sign = if sign == 0x4000 { "-" } else { "" };
        Ok(Numeric(if scale == 0 {
            format!("{sign}{whole}")
        } else {
            format!("{sign}{whole}.{fraction}")
        }))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

async fn connect(served: &Served, user: &str, password: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=billflow",
            served.port
        ),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Issue 15: a Postgres driver (extended protocol, binary results): parameters,
/// decimals past 28 digits exactly, dates, a refused write, a wrong password, and another
/// organisation's table not found; the server keeps serving after each error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_driver_gets_exact_money_dates_and_parameters_and_no_more_than_its_organisation() {
    let (_tmp, _pipeline, wh) = sample_warehouse().await;
    let served = start(&wh, &[]).unwrap();
    let client = connect(&served, "eurodist-finance", "eurodist-secret").await.unwrap();

    // EuroDist's October usage: 42 rows, cost_usd 632.2954 (golden control total).
    let row = client
        .query_one(
            "SELECT count(*), sum(cost_usd) FROM eurodist.eurodist_usage WHERE _period = $1",
            &[&"2026-10"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, Numeric>(1), Numeric("632.2954".into()));

    // 38 digits, 10 of them after the point: past what rust_decimal (28) holds.
    let row = client
        .query_one(
            "SELECT CAST('1234567890123456789012345678.9012345678' AS DECIMAL(38, 10)), CAST('-0.0005' AS DECIMAL(10, 4)), CAST('1000000.50' AS DECIMAL(12, 2))",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Numeric>(0),
        Numeric("1234567890123456789012345678.9012345678".into())
    );
    assert_eq!(row.get::<_, Numeric>(1), Numeric("-0.0005".into()));
    assert_eq!(row.get::<_, Numeric>(2), Numeric("1000000.50".into()));
    // The same in text (the simple protocol).
    let text = client
        .simple_query("SELECT CAST('-99999999999999999999999999999999.999999' AS DECIMAL(38, 6)) AS v")
        .await
        .unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(row) = &text[1] else {
        panic!("{text:?}")
    };
    assert_eq!(row.get("v"), Some("-99999999999999999999999999999999.999999"));

    // Dates, as a column and as a parameter: of the 42 rows, those dated 15 October or
    // later (golden, by day 15-31: 2+1+1+2+1+1+2+1+2+1+2+2+1+2+1+3+2) = 27.
    let first = chrono::NaiveDate::from_ymd_opt(2026, 10, 1).unwrap();
    let row = client
        .query_one("SELECT min(usage_date) FROM eurodist.eurodist_usage", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, chrono::NaiveDate>(0), first);
    let mid = chrono::NaiveDate::from_ymd_opt(2026, 10, 15).unwrap();
    let row = client
        .query_one(
            "SELECT count(*) FROM eurodist.eurodist_usage WHERE usage_date >= $1",
            &[&mid],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 27);

    // A write, in both protocols.
    let e = client.execute("DELETE FROM billflow.batches", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{e:?}");
    let e = client
        .batch_execute("CREATE TABLE copied AS SELECT * FROM eurodist.eurodist_usage")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{e:?}");

    // BritDist's table does not exist for EuroDist, the same as a table that does not.
    for missing in ["britdist.britdist_usage", "eurodist.no_such_stream"] {
        let e = client
            .query(&format!("SELECT * FROM {missing}"), &[])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e:?}");
        let message = e.as_db_error().unwrap().message();
        let (said, listed) = message.split_once(';').unwrap();
        assert_eq!(said, format!("no table `{missing}`"));
        assert!(
            listed.contains("eurodist.eurodist_usage") && !listed.contains("britdist"),
            "{message}"
        );
    }

    // Wrong password and unknown user: refused alike, naming no secret.
    for (user, password) in [("eurodist-finance", "guess"), ("nobody", "eurodist-secret")] {
        let e = connect(&served, user, password).await.err().unwrap();
        assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD), "{e:?}");
        assert!(!e.to_string().contains(password), "{e}");
    }

    // Still serving, on the same connection.
    let row = client
        .query_one("SELECT count(*) FROM billflow.batches", &[])
        .await
        .unwrap();
    assert!(row.get::<_, i64>(0) > 0);
}

/// Issue 15: with a certificate, connections are encrypted and plain ones refused; a
/// certificate that cannot be used stops the server from starting, never a silent
/// fallback to plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_a_certificate_is_given_and_no_server_when_it_is_unusable() {
    let (tmp, _pipeline, wh) = sample_warehouse().await;
    need("openssl", "openssl");
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tls = |c: &Path, k: &Path| {
        vec![
            "--tls-cert".to_string(),
            c.display().to_string(),
            "--tls-key".to_string(),
            k.display().to_string(),
        ]
    };
    let args = tls(&cert, &key);
    let served = start(&wh, &args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let (ok, out, err) = psql(
        &served,
        "admin",
        "admin-secret",
        "sslmode=require",
        &["\\conninfo", "SELECT count(*) > 0 FROM billflow.batches"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("SSL connection") && out.ends_with("t\n"), "{out}");
    let (ok, _, err) = psql(&served, "admin", "admin-secret", "sslmode=disable", &["SELECT 1"]);
    assert!(!ok && err.contains("accepts only TLS connections"), "{err}");
    drop(served);

    // The certificate given as the key: no server, and the file named.
    let args = tls(&cert, &cert);
    let e = start(&wh, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .err()
        .unwrap();
    assert!(
        e.contains("TLS: ") && e.contains("cert.pem") && e.contains("no private key"),
        "{e}"
    );
}

/// Issue 15: rows fetched through a cursor carry money past 28 digits exactly (the
/// library's encoder stops at 28), and a cursor reads only what its user may see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_fetches_exact_money_and_reads_only_what_its_user_sees() {
    let (_tmp, _pipeline, wh) = sample_warehouse().await;
    let served = start(&wh, &[]).unwrap();
    let (ok, out, err) = psql(
        &served,
        "admin",
        "admin-secret",
        "",
        &[
            "BEGIN",
            "DECLARE c CURSOR FOR SELECT CAST('1234567890123456789012345678.9012345678' AS DECIMAL(38, 10)) AS v, \
             (SELECT sum(amount) FROM alpha_it.alpha_it_invoice_lines) AS alpha",
            "FETCH ALL FROM c",
            "CLOSE c",
            "COMMIT",
        ],
    );
    assert!(ok, "{err}");
    // Alpha IT's October invoice lines: 391.19 (golden).
    assert!(out.contains("1234567890123456789012345678.9012345678|391.19"), "{out}");

    let (ok, _, err) = psql(
        &served,
        "eurodist-finance",
        "eurodist-secret",
        "",
        &["BEGIN", "DECLARE c CURSOR FOR SELECT * FROM britdist.britdist_usage"],
    );
    assert!(!ok);
    assert!(err.contains("britdist.britdist_usage"), "{err}");
}

//! Issue 15, object storage: the warehouse in a bucket of a real S3-compatible server
//! (moto, started here on 127.0.0.1 and stopped when the test ends), used through the
//! command line as a user would: run the sample into it, query it, review a batch, serve
//! it to `psql`, and kill a run in the middle of its upload.

use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const BUCKET: &str = "billflow";
const SECRET: &str = "s3cr3t-never-printed";

/// A moto S3 server on 127.0.0.1, killed and reaped when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's server, installed from PyPI when missing (as `.ci/run` does).
fn need_moto() {
    let found = || {
        Command::new("python3")
            .args(["-c", "import moto.server, boto3"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !found() {
        let _ = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "moto[server]==5.2.5",
            ])
            .status();
    }
    assert!(found(), "moto's S3 server is needed: pip install 'moto[server]==5.2.5'");
}

impl Moto {
    /// Start moto on a free port of 127.0.0.1 with an empty bucket `billflow`.
    pub fn start() -> Moto {
        Moto::start_with(&[])
    }

    /// [`Moto::start`], then every request after the bucket's creation must be signed
    /// with credentials moto knows (none of ours are).
    pub fn start_checking_credentials() -> Moto {
        Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "1")])
    }

    fn start_with(env: &[(&str, &str)]) -> Moto {
        need_moto();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto.python(&format!("s3.create_bucket(Bucket='{BUCKET}')"));
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variables a user sets for an S3-compatible store.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "billflow-test".into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
    }

    /// Run `code` with `s3`, a boto3 client of this server, in scope; its stdout.
    pub fn python(&self, code: &str) -> String {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='x', \
             aws_secret_access_key='x', region_name='us-east-1')\n{code}\n",
            self.endpoint()
        );
        let out = Command::new("python3").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key in the bucket under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let listed = self.python(&format!(
            "for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{BUCKET}', Prefix='{prefix}'):\n    \
             [print(o['Key']) for o in page.get('Contents', [])]"
        ));
        let mut keys: Vec<String> = listed.lines().map(str::to_string).collect();
        keys.sort();
        keys
    }
}

/// `billflow ARGS` with the server's variables set.
fn billflow(moto: &Moto, args: &[&str]) -> Output {
    billflow_with(&moto.env(), args)
}

fn run(moto: &Moto, warehouse: &str, pipeline: &std::path::Path) -> Output {
    run_october(&moto.env(), warehouse, pipeline)
}

fn query(moto: &Moto, warehouse: &str, sql: &str) -> String {
    query_csv(&moto.env(), warehouse, sql)
}

/// The sample runs with its warehouse in a bucket, gives the golden figures there, and
/// holds the same batches (ids, rows, totals, statuses) as the same run on a local disk.
#[test]
fn the_sample_runs_into_a_bucket_and_is_queried_reviewed_and_rerun_there() {
    let moto = Moto::start();
    let (tmp, pipeline) = sample_copy();
    let local = tmp.path().join("wh");
    let local = local.to_str().unwrap();
    let bucket = format!("s3://{BUCKET}/warehouses/sample");

    let ran = ok(run(&moto, &bucket, &pipeline));
    assert!(ran.contains(&bucket), "the summary names the bucket: {ran}");
    ok(run(&moto, local, &pipeline));

    // Alpha IT's invoice lines for October: 391.19 over 10 lines (the golden file
    // tests/golden/cloud-reseller/alpha-it-invoice-lines.csv, summed by hand).
    assert_eq!(
        query(
            &moto,
            &bucket,
            "SELECT sum(amount) AS amount, count(*) AS n FROM alpha_it.alpha_it_invoice_lines"
        ),
        "amount,n\n391.19,10\n"
    );
    let catalog = "SELECT id, stream, organization, status, version, rows FROM billflow.batches ORDER BY id";
    let in_bucket = query(&moto, &bucket, catalog);
    assert_eq!(
        in_bucket,
        query(&moto, local, catalog),
        "the same batches as on a local disk"
    );
    assert!(in_bucket.lines().count() > 10, "{in_bucket}");
    let totals = "SELECT customer_id, sku, sum(quantity) AS quantity, sum(amount) AS amount \
                  FROM alpha_it.alpha_it_invoice_lines GROUP BY 1, 2 ORDER BY 1, 2";
    assert_eq!(query(&moto, &bucket, totals), query(&moto, local, totals));

    // Nothing but committed batches and the log.
    let keys = moto.keys("warehouses/sample/");
    assert_only_committed_batches(&keys, "warehouses/sample");

    // A re-run finds every batch there: nothing new is written.
    let again = ok(run(&moto, &bucket, &pipeline));
    assert!(again.contains("unchanged"), "{again}");
    assert_eq!(moto.keys("warehouses/sample/"), keys, "a re-run writes nothing");

    // Review in the bucket: void the vendor's usage batch; the query no longer shows it.
    let id = query(
        &moto,
        &bucket,
        "SELECT id FROM billflow.batches WHERE stream = 'nimbus-rated-usage'",
    );
    let id = id.lines().nth(1).unwrap().to_string();
    ok(billflow(
        &moto,
        &["batch", "--warehouse", &bucket, "void", &id, "--note", "wrong file"],
    ));
    assert_eq!(
        query(
            &moto,
            &bucket,
            &format!("SELECT status FROM billflow.batches WHERE id = '{id}'")
        ),
        "status\nvoided\n"
    );
    assert_eq!(
        query(&moto, &bucket, "SELECT count(*) AS n FROM nimbus.nimbus_rated_usage"),
        "n\n0\n"
    );
}

/// A batch whose data files are too big for one put (over object_store's 10 MiB buffer,
/// so each is a multipart upload): ids and amounts that do not compress.
fn big_upload_pipeline(dir: &std::path::Path, rows: u64) -> std::path::PathBuf {
    use std::io::Write;
    // The local kill test's pipeline, over these rows in place of its own.
    let pipeline = crate::lifecycle::big_pipeline(dir, 0);
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("big.csv")).unwrap());
    writeln!(f, "id,day,amount").unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..rows {
        // xorshift: a different, incompressible id for every row.
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (a, b) = (next(), next());
        writeln!(
            f,
            "{a:016x}{b:08x},2026-10-{:02},{}.{:04}",
            1 + i % 28,
            a % 100_000,
            b % 10_000
        )
        .unwrap();
    }
    drop(f);
    pipeline
}

/// A run killed while it uploads its batch leaves no manifest: no reader sees a batch,
/// and the re-run commits exactly one, whole.
#[test]
fn a_run_killed_during_its_upload_leaves_nothing_visible_and_the_rerun_commits_one() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let rows = 2_000_000u64;
    let pipeline = big_upload_pipeline(tmp.path(), rows);
    let bucket = format!("s3://{BUCKET}/wh");
    let child = Command::new(env!("CARGO_BIN_EXE_billflow"))
        .args([
            "run",
            "--quiet",
            "--threads",
            "1",
            "--period",
            "2026-10",
            "--warehouse",
            &bucket,
        ])
        .arg(&pipeline)
        .envs(moto.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A watcher kills the run (-9) while one of its data files is being uploaded in parts:
    // the manifest is put only after every upload has completed, so it cannot be there.
    let watcher = moto.python(&format!(
        "import os, signal, time\n\
         deadline = time.time() + 300\n\
         seen = 'finished'\n\
         while time.time() < deadline:\n    \
             if s3.list_multipart_uploads(Bucket='{BUCKET}').get('Uploads'):\n        \
                 os.kill({pid}, signal.SIGKILL); seen = 'killed'; break\n    \
             keys = [o['Key'] for o in s3.list_objects_v2(Bucket='{BUCKET}', Prefix='wh/vendor/').get('Contents', [])]\n    \
             if any(k.endswith('batch.json') for k in keys):\n        \
                 seen = 'committed'; break\n    \
             time.sleep(0.005)\n\
         print(seen)",
        pid = child.id()
    ));
    let mut child = child;
    let _ = child.wait();
    assert_eq!(
        watcher.trim(),
        "killed",
        "the run was not caught during its upload; make its files bigger"
    );
    let left = moto.keys("wh/vendor/");
    assert!(left.iter().all(|k| !k.ends_with("batch.json")), "{left:?}");
    assert_eq!(
        query(&moto, &bucket, "SELECT count(*) AS n FROM billflow.batches"),
        "n\n0\n",
        "no batch may be visible after a kill"
    );

    ok(run(&moto, &bucket, &pipeline));
    assert_eq!(
        query(
            &moto,
            &bucket,
            "SELECT count(*) AS n, sum(rows) AS rows FROM billflow.batches"
        ),
        format!("n,rows\n1,{rows}\n")
    );
    // Every row read back from the bucket, amounts doubled: the sum of the input's
    // amounts (summed here from the CSV itself, in ten-thousandths) times two.
    let text = std::fs::read_to_string(tmp.path().join("big.csv")).unwrap();
    let input: i128 = text
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().replace('.', "").parse::<i128>().unwrap())
        .sum();
    let doubled = 2 * input;
    assert_eq!(
        query(
            &moto,
            &bucket,
            "SELECT count(*) AS n, sum(amount) AS amount FROM v.totals"
        ),
        format!("n,amount\n{rows},{}.{:04}\n", doubled / 10_000, doubled % 10_000)
    );
}

/// Bad places say what and where, and never print the secret.
#[test]
fn an_unusable_bucket_names_the_url_and_why_without_the_secret() {
    let moto = Moto::start();
    let (_tmp, pipeline) = sample_copy();
    let missing = billflow(
        &moto,
        &[
            "query",
            "--warehouse",
            "s3://no-such-bucket/wh",
            "SELECT count(*) FROM billflow.batches",
        ],
    );
    let err = String::from_utf8_lossy(&missing.stderr).into_owned();
    assert!(!missing.status.success());
    assert!(err.contains("no-such-bucket"), "{err}");
    assert!(!err.contains(SECRET), "{err}");

    let scheme = billflow(
        &moto,
        &[
            "run",
            "--period",
            "2026-10",
            "--warehouse",
            "ftp://host/wh",
            pipeline.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&scheme.stderr).into_owned();
    assert!(!scheme.status.success());
    assert!(err.contains("ftp://host/wh") && err.contains("unknown scheme"), "{err}");

    // A server that is not there: the URL, and a run that stops instead of hanging.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_billflow"))
        .args(["batch", "--warehouse", "s3://billflow/wh", "list"])
        .envs(moto.env())
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains(&closed.to_string()) || err.contains("s3://billflow"),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
}

/// `billflow serve` over a warehouse in a bucket, queried with the real `psql`.
#[test]
fn psql_queries_a_warehouse_in_a_bucket() {
    let moto = Moto::start();
    let (_tmp, pipeline) = sample_copy();
    let bucket = format!("s3://{BUCKET}/served");
    ok(run(&moto, &bucket, &pipeline));
    let served = crate::serve::start_with_env(&bucket, &[], &moto.env()).unwrap();
    assert_eq!(
        crate::serve::psql_ok(
            &served,
            "admin",
            "admin-secret",
            "SELECT sum(amount) FROM alpha_it.alpha_it_invoice_lines"
        ),
        "391.19\n"
    );
}

/// Sources and references read from a bucket give the very batches (same ids, rows and
/// totals) that the same files give on a local disk: the id hashes their bytes, not
/// where they are kept.
#[test]
fn sources_and_references_in_a_bucket_give_the_same_batches_as_local_files() {
    let moto = Moto::start();
    let (tmp, pipeline) = sample_copy();
    let sample = pipeline.parent().unwrap();
    moto.python(&format!(
        "import glob, os\nos.chdir('{}')\nfor f in glob.glob('inputs/*') + glob.glob('reference/*'):\n    \
         s3.upload_file(f, '{BUCKET}', 'feeds/' + f)",
        sample.display()
    ));
    let local_run = ok(run(&moto, tmp.path().join("local").to_str().unwrap(), &pipeline));
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let remote = text
        .replace("url: inputs/", &format!("url: s3://{BUCKET}/feeds/inputs/"))
        .replace("url: reference/", &format!("url: s3://{BUCKET}/feeds/reference/"));
    assert!(
        remote.contains("url: s3://billflow/feeds/inputs/usage-*.csv"),
        "{remote}"
    );
    let remote_pipeline = sample.join("remote.yaml");
    std::fs::write(&remote_pipeline, remote).unwrap();
    let remote_run = ok(run(
        &moto,
        tmp.path().join("remote").to_str().unwrap(),
        &remote_pipeline,
    ));
    let ids = |summary: &str| -> Vec<String> {
        let mut v: Vec<String> = summary
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.len() == 24 && w.starts_with("2026-10-"))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&remote_run), ids(&local_run), "{remote_run}");
    assert!(ids(&local_run).len() >= 10, "{local_run}");
    let catalog = "SELECT id, rows, control_totals FROM billflow.batches ORDER BY id";
    assert_eq!(
        query(&moto, tmp.path().join("remote").to_str().unwrap(), catalog),
        query(&moto, tmp.path().join("local").to_str().unwrap(), catalog)
    );

    // A URL that names no object, or one the store does not have: located errors.
    let broken = std::fs::read_to_string(&remote_pipeline)
        .unwrap()
        .replace("s3://billflow/feeds/reference/fx_rates.csv", "s3://billflow");
    std::fs::write(&remote_pipeline, broken).unwrap();
    let out = billflow(&moto, &["validate", remote_pipeline.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("`s3://billflow` names no object") && err.contains("remote.yaml:"),
        "{err}"
    );
    let missing = std::fs::read_to_string(&remote_pipeline).unwrap().replace(
        "url: s3://billflow\n",
        "url: s3://billflow/feeds/reference/no-such-rates.csv\n",
    );
    std::fs::write(&remote_pipeline, missing).unwrap();
    let out = run(&moto, tmp.path().join("remote").to_str().unwrap(), &remote_pipeline);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        said.contains("s3://billflow/feeds/reference/no-such-rates.csv") && said.contains("no object matches it"),
        "{said}"
    );
}

/// Credentials the store refuses: the error says so (the store's own words) and names the
/// warehouse, and the secret is never printed.
#[test]
fn credentials_the_store_refuses_are_named_without_the_secret() {
    let moto = Moto::start_checking_credentials();
    let out = billflow(
        &moto,
        &[
            "query",
            "--warehouse",
            &format!("s3://{BUCKET}/wh"),
            "SELECT count(*) FROM billflow.batches",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("s3://billflow/wh") && err.contains("InvalidAccessKeyId"),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
}

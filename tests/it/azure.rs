//! Issue 15, object storage beyond S3: the warehouse, sources and references in Azure
//! Blob Storage (`az://`), against Azurite from npm, started here on 127.0.0.1 and
//! stopped when the test ends. The commit protocol is the one `s3.rs` tests in depth
//! (kill mid-upload, credentials); these tests show that the same commands give the same
//! batches in Azure as on a local disk, and that concurrent commits stay exact there.
//! (Google Cloud Storage is not tested against a server: no emulator from the registries
//! this project can reach implements the XML API object_store speaks.)

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const BUCKET: &str = "billflow";
const AZURE_CLIENT: &str = "azure-storage-blob==12.31.1";
const AZURITE: &str = "azurite@3.35.0";
/// Azurite's well-known development account (public, in Microsoft's documentation).
const AZURITE_CONNECTION: &str = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
    AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
    BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;";

/// Azurite's blob service on 127.0.0.1 with an empty container `billflow`; killed and
/// reaped when dropped.
struct Emulator {
    child: Child,
    port: u16,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `python3 -c CHECK` succeeds, after a pip install of `package` when it did not.
fn need_python(check: &str, package: &str) {
    let found = || {
        Command::new("python3")
            .args(["-c", check])
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
                package,
            ])
            .status();
    }
    assert!(found(), "needed: pip install '{package}'");
}

/// Azurite's blob server, installed from npm under the cargo target's cache when missing
/// (as `.ci/run` does).
fn azurite_blob() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    let prefix = Path::new(&home).join(".cache/billflow-azurite");
    let bin = prefix.join("node_modules/.bin/azurite-blob");
    if !bin.exists() {
        let _ = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(AZURITE)
            .status();
    }
    assert!(
        bin.exists(),
        "needed: npm install --prefix {} {AZURITE}",
        prefix.display()
    );
    bin
}

impl Emulator {
    fn start() -> Emulator {
        let port = free_port();
        need_python("import azure.storage.blob", AZURE_CLIENT);
        let child = Command::new(azurite_blob())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args([
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let emulator = Emulator { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the emulator did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        emulator.python(&format!("s.create_container('{BUCKET}')"));
        emulator
    }

    /// The variables a user sets to point billflow at the emulator.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", format!("http://127.0.0.1:{}", self.port)),
        ]
    }

    /// Run `code` in Python with `s`, a client of the emulator, and `c`, of the
    /// container, in scope; its stdout.
    fn python(&self, code: &str) -> String {
        let setup = format!(
            "from azure.storage.blob import BlobServiceClient\n\
             s = BlobServiceClient.from_connection_string('{}')\nc = s.get_container_client('{BUCKET}')\n",
            AZURITE_CONNECTION.replace("{port}", &self.port.to_string())
        );
        let out = Command::new("python3")
            .args(["-c", &format!("{setup}{code}\n")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key under `prefix`, sorted.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let listed = self.python(&format!(
            "[print(b.name) for b in c.list_blobs(name_starts_with='{prefix}')]"
        ));
        let mut keys: Vec<String> = listed.lines().map(str::to_string).collect();
        keys.sort();
        keys
    }

    /// Upload the local files `files` (relative to `dir`) under `prefix/`.
    fn upload(&self, dir: &Path, files: &[String], prefix: &str) {
        self.python(&format!(
            "import os\nos.chdir('{}')\nfor f in {files:?}:\n    c.upload_blob('{prefix}/' + f, open(f, 'rb').read())",
            dir.display()
        ));
    }
}

fn billflow(store: &Emulator, args: &[&str]) -> Output {
    billflow_with(&store.env(), args)
}

fn run(store: &Emulator, warehouse: &str, pipeline: &Path) -> String {
    ok(run_october(&store.env(), warehouse, pipeline))
}

fn query(store: &Emulator, warehouse: &str, sql: &str) -> String {
    query_csv(&store.env(), warehouse, sql)
}

/// The sample with its inputs and its warehouse in the store: the golden figure, the same
/// batches as a local run of the same files, only committed batches' objects in the store,
/// nothing written by a re-run, and a void that hides a batch from queries.
#[test]
fn the_sample_runs_from_and_into_azure_blob_storage() {
    let store = Emulator::start();
    let (tmp, pipeline) = sample_copy();
    let sample = pipeline.parent().unwrap();
    let scheme = "az";

    // Inputs and references in the store, under `feeds/`.
    let files: Vec<String> = ["inputs", "reference"]
        .iter()
        .flat_map(|d| std::fs::read_dir(sample.join(d)).unwrap())
        .map(|e| e.unwrap().path().strip_prefix(sample).unwrap().display().to_string())
        .collect();
    assert!(files.len() >= 4, "{files:?}");
    store.upload(sample, &files, "feeds");
    let remote = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("url: inputs/", &format!("url: {scheme}://{BUCKET}/feeds/inputs/"))
        .replace("url: reference/", &format!("url: {scheme}://{BUCKET}/feeds/reference/"));
    assert!(remote.contains(&format!("url: {scheme}://billflow/feeds/inputs/usage-*.csv")));
    let remote_pipeline = sample.join("remote.yaml");
    std::fs::write(&remote_pipeline, remote).unwrap();

    let local = tmp.path().join("wh");
    let local = local.to_str().unwrap();
    let bucket = format!("{scheme}://{BUCKET}/warehouses/sample");
    let ran = run(&store, &bucket, &remote_pipeline);
    run(&store, local, &pipeline);

    // Alpha IT's invoice lines for October: 391.19 over 10 lines (the golden file
    // tests/golden/cloud-reseller/alpha-it-invoice-lines.csv, summed by hand).
    assert_eq!(
        query(
            &store,
            &bucket,
            "SELECT sum(amount) AS amount, count(*) AS n FROM alpha_it.alpha_it_invoice_lines"
        ),
        "amount,n\n391.19,10\n",
        "{ran}"
    );
    // The same ids (they hash the inputs' bytes, not where they are kept), rows, totals.
    let catalog =
        "SELECT id, stream, organization, status, version, rows, control_totals FROM billflow.batches ORDER BY id";
    let in_store = query(&store, &bucket, catalog);
    assert_eq!(in_store, query(&store, local, catalog));
    assert!(in_store.lines().count() > 10, "{in_store}");

    let keys = store.keys("warehouses/sample/");
    assert_only_committed_batches(&keys, "warehouses/sample");
    let again = run(&store, &bucket, &remote_pipeline);
    assert!(again.contains("unchanged"), "{again}");
    assert_eq!(store.keys("warehouses/sample/"), keys, "a re-run writes nothing");

    let id = query(
        &store,
        &bucket,
        "SELECT id FROM billflow.batches WHERE stream = 'nimbus-rated-usage'",
    );
    let id = id.lines().nth(1).unwrap().to_string();
    ok(billflow(
        &store,
        &["batch", "--warehouse", &bucket, "void", &id, "--note", "wrong file"],
    ));
    assert_eq!(
        query(&store, &bucket, "SELECT count(*) AS n FROM nimbus.nimbus_rated_usage"),
        "n\n0\n"
    );
}

/// Two runs of the same pipeline at once into one container: each batch is committed
/// once (the manifest is put with create-if-absent, which Azure and Azurite honour; the
/// loser removes its uploads), both runs succeed, and the catalog is a single run's.
#[test]
fn two_runs_at_once_into_azure_commit_each_batch_once() {
    let store = Emulator::start();
    let (tmp, pipeline) = sample_copy();
    let bucket = format!("az://{BUCKET}/wh");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_billflow"))
            .args(["run", "--quiet", "--period", "2026-10", "--warehouse", &bucket])
            .arg(&pipeline)
            .envs(store.env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    for child in [first, second] {
        ok(child.wait_with_output().unwrap());
    }
    let local = tmp.path().join("wh");
    run(&store, local.to_str().unwrap(), &pipeline);
    let catalog = "SELECT id, stream, status, version, rows FROM billflow.batches ORDER BY id";
    assert_eq!(
        query(&store, &bucket, catalog),
        query(&store, local.to_str().unwrap(), catalog)
    );
    assert_only_committed_batches(&store.keys("wh/"), "wh");
}

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use billflow::execution::{NoProgress, RunReport};
use billflow::{Engine, Period, RunOptions};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn sample_pipeline() -> PathBuf {
    repo().join("data-samples/cloud-reseller/pipeline.yaml")
}

pub fn golden(name: &str) -> PathBuf {
    repo().join("tests/golden/cloud-reseller").join(name)
}

pub fn engine() -> Arc<Engine> {
    Arc::new(Engine::new(Some(2)).expect("engine"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A private copy of the sample pipeline, its data and its queries, laid out as in the
/// repository (so `../../queries/...` still resolves). Returns (tempdir, pipeline path).
pub fn sample_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(
        &repo().join("data-samples/cloud-reseller"),
        &tmp.path().join("data-samples/cloud-reseller"),
    );
    copy_dir(&repo().join("queries"), &tmp.path().join("queries"));
    let p = tmp.path().join("data-samples/cloud-reseller/pipeline.yaml");
    (tmp, p)
}

/// The sample with every stream's review manual (the default): a run writes the vendor's
/// batches and the tiers below wait for them to be published.
pub fn manual_sample_copy() -> (tempfile::TempDir, PathBuf) {
    let (tmp, p) = sample_copy();
    let text = std::fs::read_to_string(&p).unwrap();
    let manual: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("review:"))
        .collect();
    std::fs::write(&p, manual.join("\n") + "\n").unwrap();
    (tmp, p)
}

pub async fn run(pipeline: &Path, period: &str, warehouse: &Path) -> RunReport {
    let engine = engine();
    let plan = billflow::check(&engine, pipeline)
        .await
        .unwrap_or_else(|d| panic!("{}", d.render()));
    engine
        .run(
            Arc::new(plan),
            RunOptions {
                period: Period::parse(period).unwrap(),
                warehouse: warehouse.into(),
                until_level: None,
            },
            Arc::new(NoProgress),
        )
        .await
}

/// Every row of the Parquet files in `dir` as sorted text.
pub async fn parquet_rows(dir: &Path) -> (SchemaRef, Vec<String>) {
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(dir.to_string_lossy().to_string(), ParquetReadOptions::default())
        .await
        .unwrap();
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.unwrap();
    let rows = billflow::testing::rows_as_text(&schema, &batches).unwrap();
    (schema, rows)
}

/// Rows of a golden CSV, read with `schema`, as sorted text.
pub async fn csv_rows(path: &Path, schema: &Schema) -> Vec<String> {
    let ctx = SessionContext::new();
    let batches = ctx
        .read_csv(
            path.to_string_lossy().to_string(),
            CsvReadOptions::new().has_header(true).schema(schema),
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    billflow::testing::rows_as_text(&Arc::new(schema.clone()), &batches).unwrap()
}

/// Drop the first row of a batch's data file, as a hand edit would.
pub fn drop_first_row(file: &str) {
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let schema = batches[0].schema();
    let mut w = ArrowWriter::try_new(std::fs::File::create(file).unwrap(), schema, None).unwrap();
    let mut first = true;
    for b in batches {
        let b = if first { b.slice(1, b.num_rows() - 1) } else { b };
        first = false;
        w.write(&b).unwrap();
    }
    w.close().unwrap();
}

/// Void the batch of `stream` for `period` (as everyone may), returning its id.
pub async fn void_batch(warehouse: &Path, stream: &str, period: &str) -> String {
    use billflow::batches::lifecycle::Action;
    use billflow::batches::review::{Filter, Reviewer};
    let reviewer = Reviewer::open(warehouse, None).unwrap();
    let filter = Filter {
        stream: Some(stream.into()),
        period: Some(period.into()),
        ..Filter::default()
    };
    let batch = reviewer.list(&filter).await.unwrap().remove(0);
    reviewer
        .act(batch.id(), Action::Void, Some("wrong file"))
        .await
        .unwrap();
    batch.id().to_string()
}

/// `billflow ARGS` with the variables `env` set and stdin closed: how the command-line
/// tests against an object store run it.
pub fn billflow_with(env: &[(&'static str, String)], args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_billflow"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// The command's stdout, once it is known to have succeeded (its output shown if not).
pub fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every key of a warehouse in a store (under `root/`) is in a committed batch's
/// directory (one holding `batch.json`) or in the lifecycle log, and each batch holds one
/// run's files (`<batch>/<attempt>/...`): nothing a killed or losing run wrote is left.
pub fn assert_only_committed_batches(keys: &[String], root: &str) {
    let manifests: Vec<&str> = keys.iter().filter_map(|k| k.strip_suffix("/batch.json")).collect();
    for k in keys {
        assert!(
            k.starts_with(&format!("{root}/_log/")) || manifests.iter().any(|m| k.starts_with(&format!("{m}/"))),
            "{k} belongs to no committed batch"
        );
    }
    for m in &manifests {
        let mut attempts: Vec<&str> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&format!("{m}/")))
            .filter(|rest| *rest != "batch.json")
            .filter_map(|rest| rest.split('/').next())
            .collect();
        attempts.dedup();
        assert!(attempts.len() <= 1, "{m} holds two runs' files: {attempts:?}");
    }
}

/// `billflow run --quiet --period 2026-10 --warehouse WAREHOUSE PIPELINE` with `env` set.
pub fn run_october(env: &[(&'static str, String)], warehouse: &str, pipeline: &Path) -> std::process::Output {
    let pipeline = pipeline.to_str().unwrap();
    billflow_with(
        env,
        &[
            "run",
            "--quiet",
            "--period",
            "2026-10",
            "--warehouse",
            warehouse,
            pipeline,
        ],
    )
}

/// `billflow query --format csv --warehouse WAREHOUSE SQL` with `env` set: its CSV.
pub fn query_csv(env: &[(&'static str, String)], warehouse: &str, sql: &str) -> String {
    ok(billflow_with(
        env,
        &["query", "--format", "csv", "--warehouse", warehouse, sql],
    ))
}

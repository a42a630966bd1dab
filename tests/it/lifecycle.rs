//! Batches are immutable and appear atomically: a re-run finds the same batch instead of
//! writing a duplicate, a changed input gives a new batch, and a killed run leaves nothing
//! visible.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use billflow::batches::{Store, StreamLocation};
use billflow::execution::Status;

use crate::common::*;

fn visible_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_reuses_the_same_batches_and_a_changed_input_makes_new_ones() {
    let (tmp, pipeline) = sample_copy();
    let wh = tmp.path().join("wh");
    let first = run(&pipeline, "2026-10", &wh).await;
    assert!(first.ok());
    let second = run(&pipeline, "2026-10", &wh).await;
    for (a, b) in first.streams.iter().zip(&second.streams) {
        assert_eq!(b.status, Status::Reused, "{}", b.stream);
        assert_eq!(a.batch_id, b.batch_id, "{}: same inputs, same batch id", a.stream);
        assert_eq!(a.control_totals, b.control_totals);
        let stream_dir = a.batch_dir.as_ref().unwrap().parent().unwrap();
        assert_eq!(visible_entries(stream_dir).len(), 1, "{}: no duplicate batch", a.stream);
    }

    // A changed exchange rate touches the distributors (and everything below them), not
    // the vendor's streams, whose stages do not read the rates.
    let fx = tmp.path().join("data-samples/cloud-reseller/reference/fx_rates.csv");
    let text = std::fs::read_to_string(&fx)
        .unwrap()
        .replace("0.78912345", "0.78912346");
    std::fs::write(&fx, text).unwrap();
    let third = run(&pipeline, "2026-10", &wh).await;
    assert!(third.ok());
    for (a, c) in first.streams.iter().zip(&third.streams) {
        let stream_dir = c.batch_dir.as_ref().unwrap().parent().unwrap();
        if c.stream.starts_with("nimbus-") {
            assert_eq!(c.status, Status::Reused);
            assert_eq!(a.batch_id, c.batch_id);
            assert_eq!(visible_entries(stream_dir).len(), 1);
            continue;
        }
        assert_eq!(c.status, Status::Written, "{}", c.stream);
        assert_ne!(a.batch_id, c.batch_id, "{}: new inputs, new batch", c.stream);
        assert_eq!(
            visible_entries(stream_dir).len(),
            2,
            "{}: old batch kept, new one added",
            c.stream
        );
    }
    // Editing a query is a new definition: new batches from that stream down.
    let q = tmp.path().join("queries/cloud-reseller/vendor_publish.sql");
    std::fs::write(&q, format!("{}\n-- reviewed\n", std::fs::read_to_string(&q).unwrap())).unwrap();
    let fourth = run(&pipeline, "2026-10", &wh).await;
    for s in &fourth.streams {
        let want = if s.stream.ends_with("price-list") || s.stream == "nimbus-subscription-fees" {
            Status::Reused
        } else {
            Status::Written
        };
        assert_eq!(s.status, want, "{}", s.stream);
    }
    let gbp = |r: &billflow::RunReport| r.stream("britdist-usage").unwrap().control_totals["cost"].clone();
    assert_eq!(
        gbp(&first),
        gbp(&third),
        "a 1e-8 rate change does not move 4-decimal totals here"
    );

    // Another period is another batch, beside the first.
    let sept = run(&pipeline, "2026-09", &wh).await;
    assert!(sept.ok());
    assert_eq!(sept.stream("nimbus-rated-usage").unwrap().rows_out, 3);
}

/// Build a big single-stream pipeline so a run takes long enough to be killed mid-write.
fn big_pipeline(dir: &Path, rows: usize) -> std::path::PathBuf {
    let data = dir.join("big.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&data).unwrap());
    writeln!(f, "id,day,amount").unwrap();
    for i in 0..rows {
        writeln!(f, "R{i},2026-10-{:02},{}.{:04}", 1 + i % 28, i % 1000, i % 10000).unwrap();
    }
    drop(f);
    let p = dir.join("pipeline.yaml");
    std::fs::write(
        &p,
        r#"pipeline: big
organizations:
  - { id: v, name: Vendor, tier: vendor }
sources:
  usage:
    url: big.csv
    schema:
      - { name: id, type: string, nullable: false }
      - { name: day, type: date }
      - { name: amount, type: "decimal(18,4)" }
streams:
  - id: totals
    kind: usage
    owner: v
    input: { source: usage }
    period: day
    stages:
      - kind: sql
        query: SELECT id, day, amount * 2 AS amount FROM input ORDER BY id
    columns:
      - { name: id, type: string, nullable: false }
      - { name: day, type: date }
      - { name: amount, type: "decimal(19,4)" }
"#,
    )
    .unwrap();
    p
}

#[test]
fn a_killed_run_leaves_no_visible_batch_and_the_rerun_commits_exactly_one() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = big_pipeline(tmp.path(), 1_500_000);
    let wh = tmp.path().join("wh");
    let stream_dir = wh.join("vendor/v/totals");
    let bin = env!("CARGO_BIN_EXE_billflow");
    let mut child = Command::new(bin)
        .args(["run", "--quiet", "--threads", "1", "--period", "2026-10", "--warehouse"])
        .arg(&wh)
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the batch is being written, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut saw_staging = false;
    while Instant::now() < deadline {
        let staging = std::fs::read_dir(&stream_dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with(".staging-"))
            })
            .unwrap_or(false);
        if staging {
            saw_staging = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        saw_staging,
        "the run finished before it could be killed; make the input bigger"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::new(&wh);
    let at = StreamLocation {
        tier: "vendor".into(),
        organization: "v".into(),
        stream: "totals".into(),
    };
    assert!(store.list(&at).is_empty(), "no batch may be visible after a kill");
    assert!(
        visible_entries(&stream_dir).is_empty(),
        "only hidden staging remains: {:?}",
        visible_entries(&stream_dir)
    );

    // The re-run commits the batch once and clears the dead run's staging directory.
    let out = Command::new(bin)
        .args(["run", "--quiet", "--period", "2026-10", "--warehouse"])
        .arg(&wh)
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let batches = store.list(&at);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].rows, 1_500_000);
    let all: Vec<String> = std::fs::read_dir(&stream_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(all, vec![batches[0].batch_id.clone()], "stale staging is cleaned up");

    // And once more: nothing new.
    let again = Command::new(bin)
        .args(["run", "--quiet", "--period", "2026-10", "--warehouse"])
        .arg(&wh)
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"));
    assert_eq!(store.list(&at).len(), 1);
}

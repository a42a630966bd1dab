//! The scenario generator: byte-identical output for a seed, and a pipeline that runs and
//! reconciles from the vendor to every distributor.

use billflow::batches::file_fingerprint;
use billflow::generate::{Scenario, generate};

use crate::common::*;

fn hashes(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for sub in ["inputs", "reference"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            out.push((
                f.file_name().unwrap().to_string_lossy().to_string(),
                file_fingerprint(&f).unwrap(),
            ));
        }
    }
    out.push((
        "pipeline.yaml".into(),
        file_fingerprint(&dir.join("pipeline.yaml")).unwrap(),
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_bytes_and_the_generated_chain_reconciles() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    generate(&Scenario::new(20_000, 11), a.path(), true).unwrap();
    generate(&Scenario::new(20_000, 11), b.path(), true).unwrap();
    assert_eq!(hashes(a.path()), hashes(b.path()), "byte-identical for the same seed");
    let c = tempfile::tempdir().unwrap();
    generate(&Scenario::new(20_000, 12), c.path(), false).unwrap();
    assert_ne!(hashes(a.path())[0], hashes(c.path())[0], "another seed, other usage");

    let report = run(&a.path().join("pipeline.yaml"), "2026-10", &a.path().join("wh")).await;
    assert!(report.ok(), "{report:?}");
    let vendor = report.stream("vendor-rated-usage").unwrap();
    assert_eq!(vendor.rows_in, 20_000);
    assert_eq!(vendor.rows_out, 20_000, "every subscription and product has a price");
    // The distributors split the vendor's lines and its USD cost exactly between them.
    let scaled = |s: &str| -> i128 { s.replace('.', "").parse().unwrap() };
    let mut rows = 0;
    let mut cost = 0i128;
    for d in 0..billflow::generate::DISTRIBUTORS {
        let r = report.stream(&format!("D{d:02}-usage")).unwrap();
        rows += r.rows_out;
        cost += scaled(&r.control_totals["cost_usd"]);
    }
    assert_eq!(rows, vendor.rows_out);
    assert_eq!(cost, scaled(&vendor.control_totals["cost_usd"]));
}

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
    // The distributors split the vendor's lines and its USD cost exactly between them, one
    // partition each; the resellers split each distributor's lines and price.
    let scaled = |s: &str| -> i128 { s.replace('.', "").parse().unwrap() };
    let dist = report.stream("distributor-usage").unwrap();
    let dm = billflow::batches::read_manifest(dist.batch_dir.as_ref().unwrap()).unwrap();
    assert_eq!(dm.organizations.len(), billflow::generate::DISTRIBUTORS);
    let rows: u64 = dm.organizations.values().map(|p| p.rows).sum();
    let cost: i128 = dm
        .organizations
        .values()
        .map(|p| p.control_totals.get("cost_usd").map_or(0, |v| scaled(v)))
        .sum();
    assert_eq!(rows, vendor.rows_out);
    assert_eq!(cost, scaled(&vendor.control_totals["cost_usd"]));
    assert!(
        dm.organizations.values().all(|p| p.rows > 0),
        "every distributor has lines"
    );

    let res = report.stream("reseller-usage").unwrap();
    let rm = billflow::batches::read_manifest(res.batch_dir.as_ref().unwrap()).unwrap();
    assert_eq!(
        rm.organizations.len(),
        billflow::generate::DISTRIBUTORS * billflow::generate::RESELLERS_PER_DISTRIBUTOR
    );
    assert_eq!(rm.organizations.values().map(|p| p.rows).sum::<u64>(), vendor.rows_out);
    let price: i128 = rm
        .organizations
        .values()
        .map(|p| p.control_totals.get("price").map_or(0, |v| scaled(v)))
        .sum();
    assert_eq!(price, scaled(&dist.control_totals["price"]));
    // Each reseller's partition is its own files, named after it.
    let busiest = rm.organizations.iter().max_by_key(|(_, p)| p.rows).unwrap();
    let files = format!("{}.part-*.parquet", busiest.0);
    let (_, rows) = parquet_rows(&res.batch_dir.as_ref().unwrap().join("data").join(files)).await;
    assert_eq!(rows.len() as u64, busiest.1.rows);
    assert!(rows.iter().all(|r| r.contains(&format!("reseller_id={},", busiest.0))));
}

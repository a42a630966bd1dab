//! The sample chain end to end: every tier's batch against rows computed by hand
//! (tests/golden/cloud-reseller/compute_expected.py shows the arithmetic).

use std::collections::BTreeMap;

use billflow::batches::{REJECTS_DIR, read_manifest};
use billflow::execution::Status;

use crate::common::*;

const STREAMS: &[(&str, &str, &str)] = &[
    ("nimbus-rated-usage", "vendor", "nimbus"),
    ("eurodist-usage", "distributor", "eurodist"),
    ("britdist-usage", "distributor", "britdist"),
    ("alpha-it-invoice-lines", "reseller", "alpha-it"),
    ("bergen-data-invoice-lines", "reseller", "bergen-data"),
    ("clyde-cloud-invoice-lines", "reseller", "clyde-cloud"),
    ("alpha-it-focus", "reseller", "alpha-it"),
    ("nimbus-subscription-fees", "vendor", "nimbus"),
    ("nimbus-price-list", "vendor", "nimbus"),
    ("eurodist-price-list", "distributor", "eurodist"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_chain_matches_hand_computed_batches() {
    let wh = tempfile::tempdir().unwrap();
    let report = run(&sample_pipeline(), "2026-10", wh.path()).await;
    for s in &report.streams {
        assert_eq!(s.status, Status::Written, "{}: {:?}", s.stream, s.error);
    }
    let totals: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("control_totals.json")).unwrap()).unwrap();
    for (stream, tier, org) in STREAMS {
        let r = report.stream(stream).unwrap();
        let dir = r.batch_dir.clone().unwrap();
        assert_eq!(
            dir.parent().unwrap(),
            wh.path().join(tier).join(org).join(stream),
            "batch location of {stream}"
        );
        let (schema, actual) = parquet_rows(&dir.join("data")).await;
        let expected = csv_rows(&golden(&format!("{stream}.csv")), &schema).await;
        assert_eq!(actual, expected, "rows of {stream}");

        // Control totals: in the report, in the manifest, and equal to the hand-computed ones.
        let m = read_manifest(&dir).unwrap();
        let want = &totals[stream];
        assert_eq!(m.rows, want["rows"].as_u64().unwrap(), "row count of {stream}");
        let want_totals: BTreeMap<String, String> = want["totals"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        assert_eq!(m.control_totals, want_totals, "control totals of {stream}");
        assert_eq!(r.control_totals, want_totals);
        assert_eq!(m.status, "committed");
        assert_eq!(m.period.label, "2026-10");
        assert_eq!(
            (m.period.start.as_str(), m.period.end.as_str()),
            ("2026-10-01", "2026-11-01")
        );
        assert_eq!(m.tier, *tier);
        assert_eq!(m.organization, *org);
        assert!(!m.files.is_empty());
        // The intermediate fx_rate column never reaches a published batch.
        assert!(m.schema.iter().all(|c| c.name != "fx_rate"));
    }

    // The vendor tier: 58 October rows in; U-0017 (no price for LEGACY-X) refused by the
    // rating stage, with its reason.
    let vendor = report.stream("nimbus-rated-usage").unwrap();
    assert_eq!(vendor.rows_in, 58);
    assert_eq!(vendor.rows_out, 57);
    assert_eq!(vendor.rows_rejected, 1);
    let rejects_dir = vendor.batch_dir.clone().unwrap().join(REJECTS_DIR);
    let (_, rejected) = parquet_rows(&rejects_dir.join("stage-rate-at-cost.parquet")).await;
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].contains("record_id=U-0017"), "{}", rejected[0]);
    assert!(
        rejected[0].contains("no price in `vendor_prices` for (LEGACY-X) valid on 2026-10-12"),
        "{}",
        rejected[0]
    );
    assert!(rejected[0].contains("_reject_stage=rate-at-cost"), "{}", rejected[0]);
    // Each distributor's filter removed the other's rows, and says so.
    let removed = |s: &str| report.stream(s).unwrap().removed.iter().map(|r| r.2).sum::<u64>();
    assert_eq!((removed("eurodist-usage"), removed("britdist-usage")), (15, 42));

    // Reconciliation between tiers: each distributor's USD cost is exactly its share of
    // the vendor's, and the distributors together account for every vendor row.
    let t = |s: &str, c: &str| report.stream(s).unwrap().control_totals[c].clone();
    let dist_usd: rust_decimal_free::Dec = rust_decimal_free::parse(&t("eurodist-usage", "cost_usd"))
        + rust_decimal_free::parse(&t("britdist-usage", "cost_usd"));
    assert_eq!(dist_usd, rust_decimal_free::parse(&t("nimbus-rated-usage", "cost_usd")));
    assert_eq!(
        report.stream("eurodist-usage").unwrap().rows_out + report.stream("britdist-usage").unwrap().rows_out,
        vendor.rows_out
    );
    // Reseller quantities add up to their distributor's.
    let q = |s: &str| rust_decimal_free::parse(&t(s, "quantity"));
    assert_eq!(
        q("alpha-it-invoice-lines") + q("bergen-data-invoice-lines"),
        q("eurodist-usage")
    );
    assert_eq!(q("clyde-cloud-invoice-lines"), q("britdist-usage"));
}

/// Exact decimal sums for the reconciliation checks, without floats.
mod rust_decimal_free {
    pub type Dec = i128;
    /// Parse decimal text at a scale of 8 (enough for every column here).
    pub fn parse(s: &str) -> Dec {
        let (neg, s) = s.strip_prefix('-').map(|r| (true, r)).unwrap_or((false, s));
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let frac = format!("{frac:0<8}");
        let v: i128 = format!("{int}{}", &frac[..8]).parse().unwrap();
        if neg { -v } else { v }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_period_without_usage_writes_empty_batches_and_a_missing_rate_fails_by_name() {
    let wh = tempfile::tempdir().unwrap();
    let report = run(&sample_pipeline(), "2025-01", wh.path()).await;
    for s in report.streams.iter().filter(|s| !s.stream.ends_with("price-list")) {
        assert_eq!(s.status, Status::Written, "{}: {:?}", s.stream, s.error);
        assert_eq!(s.rows_out, 0, "{}", s.stream);
        let (schema, rows) = parquet_rows(&s.batch_dir.clone().unwrap().join("data")).await;
        assert!(rows.is_empty());
        assert!(
            schema.fields().len() >= 6,
            "{}: an empty batch keeps its columns",
            s.stream
        );
    }
    // Price lists are not periodic: all 6 prices are published...
    assert_eq!(report.stream("nimbus-price-list").unwrap().rows_out, 6);
    // ...but the exchange-rate table starts in September 2026: no closing rate for January
    // 2025, and the stream says so instead of converting at zero.
    let eur = report.stream("eurodist-price-list").unwrap();
    assert_eq!(eur.status, Status::Failed);
    let e = eur.error.clone().unwrap().to_string();
    assert!(
        e.contains("stage `to-euro` refused a row")
            && e.contains("no exchange rate USD->EUR valid on 2025-01-31 in `fx_rates`"),
        "{e}"
    );
    assert!(!report.ok());
}

//! Invariants checked over generated inputs (a fixed-seed generator, so failures repeat).

use crate::stages::{Case, run_case};
use billflow::execution::Status;

use billflow::generate::Rng;

/// Decimal text with `scale` places of an integer count of units.
fn text(v: i128, scale: u32) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    let p = 10u128.pow(scale);
    format!("{sign}{}.{:0width$}", a / p, a % p, width = scale as usize)
}

fn parse(s: &str, scale: u32) -> i128 {
    let (neg, s) = s.strip_prefix('-').map(|r| (true, r)).unwrap_or((false, s));
    let (i, f) = s.split_once('.').unwrap_or((s, ""));
    let v: i128 = format!("{i}{f:0<width$}", width = scale as usize)[..i.len() + scale as usize]
        .parse()
        .unwrap();
    if neg { -v } else { v }
}

/// Round half-even from `from` places to `to` places.
fn half_even(v: i128, from: u32, to: u32) -> i128 {
    let d = 10i128.pow(from - to);
    let (q, r) = (v / d, (v % d).abs());
    if r * 2 > d || (r * 2 == d && q % 2 != 0) {
        q + v.signum()
    } else {
        q
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocated_tier_charges_add_up_to_each_group_charge() {
    let mut rng = Rng::new(20261125, 0);
    let mut csv = String::from("id,sub,sku,qty\n");
    // (group) -> total quantity in hundredths
    let mut totals: std::collections::BTreeMap<String, i128> = Default::default();
    for id in 0..400 {
        let sub = format!("S{:02}", rng.below(25));
        let q = rng.below(30_000) as i128 + 1; // 0.01 .. 300.00
        csv.push_str(&format!("{id},{sub},T,{}\n", text(q, 2)));
        *totals.entry(sub).or_default() += q;
    }
    let plans = (
        "plans",
        "sku,model,band_from,band_to,unit_price\nT,tiered,0,100,1.2345\nT,tiered,100,500,0.9071\nT,tiered,500,,0.7003\n",
        "- { name: sku, type: string }\n- { name: model, type: string }\n- { name: band_from, type: \"decimal(18,2)\" }\n- { name: band_to, type: \"decimal(18,2)\" }\n- { name: unit_price, type: \"decimal(18,4)\" }",
    );
    let refs = [plans];
    let case = Case {
        input: &csv,
        schema: "- { name: id, type: integer }\n- { name: sub, type: string }\n- { name: sku, type: string }\n- { name: qty, type: \"decimal(18,2)\" }",
        references: &refs,
        stages: "- { kind: rate, price_list: plans, keys: [sku], group_by: [sub], quantity: qty, output: amount, scale: 2, order_by: [id] }\n- { kind: sql, query: \"SELECT sub, amount FROM input\" }",
        columns: "- { name: sub, type: string }\n- { name: amount, type: \"decimal(18,2)\" }",
    };
    let tmp = tempfile::tempdir().unwrap();
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    let mut got: std::collections::BTreeMap<String, i128> = Default::default();
    for r in &rows {
        let sub = r.split(", ").next().unwrap().trim_start_matches("sub=").to_string();
        let amount = r.rsplit("amount=").next().unwrap();
        *got.entry(sub).or_default() += parse(amount, 2);
    }
    for (sub, q) in &totals {
        // Graduated charge at 2 + 4 = 6 places, by hand: bands in hundredths of a unit.
        let bands = [
            (0i128, Some(10_000i128), 12_345i128),
            (10_000, Some(50_000), 9_071),
            (50_000, None, 7_003),
        ];
        let exact: i128 = bands
            .iter()
            .map(|(from, to, price)| {
                let units = (q - from).max(0).min(to.map(|t| t - from).unwrap_or(i128::MAX));
                units * price
            })
            .sum();
        assert_eq!(
            got[sub],
            half_even(exact, 6, 2),
            "group {sub}: lines must add up to the rounded charge"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converting_there_and_back_stays_within_rounding() {
    let mut rng = Rng::new(7, 0);
    let mut csv = String::from("id,day,amount\n");
    let mut amounts = Vec::new();
    for id in 0..300 {
        let v = rng.below(2_000_000_000) as i128 - 1_000_000_000; // +-100000.0000
        amounts.push(v);
        csv.push_str(&format!("{id},2026-10-{:02},{}\n", 1 + id % 28, text(v, 4)));
    }
    let fx = (
        "fx",
        "from_currency,to_currency,rate,valid_from,valid_to\nUSD,EUR,0.91876543,2026-01-01,\nEUR,USD,1.08841709,2026-01-01,\n",
        "- { name: from_currency, type: string }\n- { name: to_currency, type: string }\n- { name: rate, type: \"decimal(18,8)\" }\n- { name: valid_from, type: date }\n- { name: valid_to, type: date }",
    );
    let refs = [fx];
    let case = Case {
        input: &csv,
        schema: "- { name: id, type: integer }\n- { name: day, type: date }\n- { name: amount, type: \"decimal(18,4)\" }",
        references: &refs,
        stages: "
- { kind: convert_currency, amount: amount, from: USD, to: EUR, rates: fx, date: day, output: eur }
- { kind: convert_currency, amount: eur, from: EUR, to: USD, rates: fx, date: day, output: back }
- { kind: sql, query: \"SELECT id, back FROM input\" }",
        columns: "- { name: id, type: integer }\n- { name: back, type: \"decimal(38,5)\" }",
    };
    let tmp = tempfile::tempdir().unwrap();
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(rows.len(), amounts.len());
    for r in &rows {
        let id: usize = r.split(", ").next().unwrap().trim_start_matches("id=").parse().unwrap();
        let back = parse(r.rsplit("back=").next().unwrap(), 5);
        let original = amounts[id] * 10; // at 5 places
        // Two roundings of at most half a unit at 5 places each (the second scaled by the
        // rate), plus the amount times how far the two 8-place rates' product is from 1.
        let (r1, r2) = (91_876_543i128, 108_841_709i128);
        let deviation = (r1 * r2 - 10i128.pow(16)).abs(); // in 1e-16
        let bound = 2 + original.abs() * deviation / 10i128.pow(16) + 1;
        assert!((back - original).abs() <= bound, "id {id}: {original} -> {back}");
    }
}

/// Nothing is lost: for random rows with random faults (unreadable or over-precise
/// amounts, missing required values, missing, malformed or other-period dates, unknown
/// SKUs, rows a filter removes), every stream accounts for each row that came in: rows in
/// = rows out + refused + removed by filters. Rows in are the period's rows plus those
/// whose period cannot be told (they are refused in every period's batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_that_comes_in_is_published_refused_or_counted_as_removed() {
    for seed in 0..4u64 {
        let mut rng = Rng::new(20261203, seed);
        let mut csv = String::from("id,day,sku,qty\n");
        let mut expected_in = 0u64;
        for id in 0..300 {
            let (mut day, mut sku, mut qty) = (
                format!("2026-10-{:02}", 1 + rng.below(31)),
                "A".to_string(),
                format!("{}.{:04}", rng.below(50), rng.below(10_000)),
            );
            let mut in_period = true;
            match rng.below(10) {
                0 => qty = "abc".into(),
                1 => qty = "1.23456".into(),
                2 => sku = String::new(),
                3 => day = String::new(),
                4 => day = "20261001".into(),
                5 => {
                    day = format!("2026-09-{:02}", 1 + rng.below(30));
                    in_period = false;
                }
                6 => sku = "NOPRICE".into(),
                7 => qty = format!("-{qty}"),
                _ => {}
            }
            if rng.below(2) == 0 && sku == "A" {
                sku = "B".into();
            }
            expected_in += in_period as u64;
            csv.push_str(&format!("{id},{day},{sku},{qty}\n"));
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("usage.csv"), &csv).unwrap();
        std::fs::write(dir.join("prices.csv"), "sku,price\nA,1.5000\nB,0.2500\n").unwrap();
        let yaml = r#"pipeline: t
organizations:
  - { id: v, name: V, tier: vendor }
sources:
  usage:
    url: usage.csv
    schema:
      - { name: id, type: integer, nullable: false }
      - { name: day, type: date }
      - { name: sku, type: string, nullable: false }
      - { name: qty, type: "decimal(18,4)" }
references:
  prices:
    url: prices.csv
    schema:
      - { name: sku, type: string }
      - { name: price, type: "decimal(18,4)" }
streams:
  - id: priced
    kind: usage
    owner: v
    input: { source: usage }
    period: day
    stages:
      - { name: credits-out, kind: filter, condition: "qty >= 0" }
      - { name: price, kind: lookup, reference: prices, keys: [sku], columns: [price], on_missing: reject }
    columns:
      - { name: id, type: integer, nullable: false }
      - { name: day, type: date }
      - { name: sku, type: string, nullable: false }
      - { name: qty, type: "decimal(18,4)" }
      - { name: price, type: "decimal(18,4)", nullable: false }
  - id: large
    kind: usage
    owner: v
    input: { stream: priced }
    period: day
    stages:
      - { name: small-out, kind: filter, condition: "qty > 10" }
    columns:
      - { name: id, type: integer, nullable: false }
      - { name: day, type: date }
      - { name: sku, type: string, nullable: false }
      - { name: qty, type: "decimal(18,4)" }
      - { name: price, type: "decimal(18,4)", nullable: false }
"#;
        let pipeline = dir.join("p.yaml");
        std::fs::write(&pipeline, yaml).unwrap();
        let report = crate::common::run(&pipeline, "2026-10", &dir.join("wh")).await;
        assert!(report.ok(), "seed {seed}: {report:?}");
        for s in &report.streams {
            let removed: u64 = s.removed.iter().map(|(_, _, n)| n).sum();
            assert_eq!(
                s.rows_in,
                s.rows_out + s.rows_rejected + removed,
                "seed {seed}, stream {}: {} in, {} out, {} refused, {} removed",
                s.stream,
                s.rows_in,
                s.rows_out,
                s.rows_rejected,
                removed
            );
        }
        let priced = report.stream("priced").unwrap();
        assert_eq!(priced.rows_in, expected_in, "seed {seed}");
        assert!(
            priced.rows_rejected > 0 && priced.removed.iter().any(|(_, _, n)| *n > 0),
            "seed {seed}: the faults happen"
        );
        assert_eq!(report.stream("large").unwrap().rows_in, priced.rows_out, "seed {seed}");
    }
}

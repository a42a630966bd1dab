//! Criterion benchmarks of the hot stages (issue 6), each as a one-stream pipeline over
//! the usage that `billflow generate` writes: the source read and typed, the stage, and
//! the Parquet batch written. `write_only` has no stage, so a stage's own cost is its
//! figure minus that one.
//!
//!     cargo bench --bench stages                    # 1M usage rows
//!     BILLFLOW_BENCH_ROWS=200000 cargo bench --bench stages -- lookup
//!
//! The scenario is generated once per run in a temporary directory; every iteration
//! writes to a fresh warehouse (a reused batch would measure nothing).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use billflow::execution::NoProgress;
use billflow::generate::{Scenario, generate};
use billflow::{Engine, Period, RunOptions};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const USAGE_COLUMNS: &str = r#"
      - { name: record_id, type: integer, nullable: false }
      - { name: usage_date, type: date, nullable: false }
      - { name: subscription_id, type: string, nullable: false }
      - { name: sku, type: string, nullable: false }
      - { name: quantity, type: "decimal(18,6)", nullable: false }"#;

/// (bench name, stages, extra output columns)
const CASES: &[(&str, &str, &str)] = &[
    ("write_only", "[]", ""),
    (
        "lookup",
        "[{ kind: lookup, reference: subscriptions, keys: [subscription_id], columns: [customer_id, reseller_id, distributor_id], on_missing: reject }]",
        r#"
      - { name: customer_id, type: string, nullable: false }
      - { name: reseller_id, type: string, nullable: false }
      - { name: distributor_id, type: string, nullable: false }"#,
    ),
    (
        "rate_tiered",
        "[{ kind: rate, price_list: price_plans, keys: [sku], group_by: [subscription_id], quantity: quantity, output: cost_usd, scale: 4, on_missing_price: reject }]",
        r#"
      - { name: cost_usd, type: "decimal(18,4)", nullable: false }"#,
    ),
    (
        "convert_currency_dated",
        "[{ kind: convert_currency, amount: quantity, from: USD, to: EUR, rates: fx_rates, date: usage_date, output: cost, scale: 4 }]",
        r#"
      - { name: cost, type: "decimal(18,4)", nullable: false }"#,
    ),
    (
        "polars_interop",
        r#"[{ kind: polars, ops: [{ with_columns: ["upper(sku) AS sku_upper"] }] }]"#,
        r#"
      - { name: sku_upper, type: string, nullable: false }"#,
    ),
];

fn pipeline(scenario: &Path, name: &str, stages: &str, extra: &str) -> std::path::PathBuf {
    let generated = std::fs::read_to_string(scenario.join("pipeline.yaml")).expect("generated pipeline");
    let head = generated.split("\nstreams:").next().expect("streams section");
    let yaml = format!(
        "{head}\nstreams:\n  - id: bench\n    kind: usage\n    owner: vendor\n    input: {{ source: usage }}\n    period: usage_date\n    stages: {stages}\n    columns:{USAGE_COLUMNS}{extra}\n"
    );
    let path = scenario.join(format!("bench-{name}.yaml"));
    std::fs::write(&path, yaml).expect("write pipeline");
    path
}

fn stages(c: &mut Criterion) {
    // `cargo test --benches` runs each benchmark once, as a smoke test: a small scenario.
    let measuring = std::env::args().any(|a| a == "--bench");
    let rows: usize = std::env::var("BILLFLOW_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 1_000_000 } else { 10_000 });
    let dir = tempfile::tempdir().expect("tempdir");
    generate(&Scenario::new(rows, 1), dir.path(), false).expect("generate");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let engine = Arc::new(Engine::new(None).expect("engine"));
    let mut group = c.benchmark_group("stages");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(rows as u64));
    for (name, stage_list, extra) in CASES {
        let path = pipeline(dir.path(), name, stage_list, extra);
        let plan = Arc::new(
            runtime
                .block_on(billflow::check(&engine, &path))
                .unwrap_or_else(|d| panic!("{name}: {}", d.render())),
        );
        group.bench_function(*name, |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for i in 0..iterations {
                    let warehouse = dir.path().join(format!("wh-{name}-{i}"));
                    let started = Instant::now();
                    let report = runtime.block_on(engine.run(
                        plan.clone(),
                        RunOptions {
                            period: Period::parse("2026-10").expect("period"),
                            warehouse: warehouse.clone().into(),
                            until_level: None,
                        },
                        Arc::new(NoProgress),
                    ));
                    total += started.elapsed();
                    assert!(report.ok(), "{name}: {report:?}");
                    let _ = std::fs::remove_dir_all(&warehouse);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);

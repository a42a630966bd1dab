//! Parquet and NDJSON sources, timestamp period columns, and Polars filter/select stages.

use std::sync::Arc;

use arrow::array::{Decimal128Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use billflow::execution::Status;

use crate::common::*;

fn write_parquet(path: &std::path::Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        // Stored with 2 decimals; declared with 4: a lossless conversion per row.
        Field::new("amount", DataType::Decimal128(10, 2), true),
    ]));
    // 2026-10-31T23:59:59 is in October; 2026-11-01T00:00:00 is not.
    let oct_last = 1_793_491_199_000_000i64;
    let nov_first = oct_last + 1_000_000;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
            Arc::new(TimestampMicrosecondArray::from(vec![
                oct_last,
                nov_first,
                oct_last - 86_400_000_000,
                oct_last,
            ])),
            Arc::new(
                Decimal128Array::from(vec![Some(1050), Some(99), Some(-250), None])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
        ],
    )
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_and_ndjson_sources_with_polars_filter_and_select() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(&tmp.path().join("events.parquet"));
    std::fs::write(
        tmp.path().join("skus.ndjson"),
        "{\"id\": \"a\", \"label\": \"Alpha\"}\n{\"id\": \"b\", \"label\": \"Beta\"}\n{\"id\": \"c\", \"label\": \"Gamma\"}\n{\"id\": \"d\", \"label\": \"Delta\"}\n",
    )
    .unwrap();
    let pipeline = tmp.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        r#"pipeline: formats
organizations:
  - { id: v, name: Vendor, tier: vendor }
sources:
  events:
    url: events.parquet
    schema:
      - { name: id, type: string, nullable: false }
      - { name: at, type: timestamp, nullable: false }
      - { name: amount, type: "decimal(18,4)" }
references:
  labels:
    url: skus.ndjson
    schema:
      - { name: id, type: string }
      - { name: label, type: string }
streams:
  - id: events-out
    kind: billing
    owner: v
    input: { source: events }
    period: at
    stages:
      - kind: sql
        query: SELECT e.id, l.label, e.amount FROM input e JOIN labels l ON l.id = e.id
      - kind: polars
        ops:
          - filter: "amount IS NOT NULL"
          - select: ["id", "upper(label) AS label", "amount"]
    columns:
      - { name: id, type: string, nullable: false }
      - { name: label, type: string }
      - { name: amount, type: "decimal(18,4)", nullable: false }
"#,
    )
    .unwrap();
    let wh = tmp.path().join("wh");
    let report = run(&pipeline, "2026-10", &wh).await;
    let s = report.stream("events-out").unwrap();
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(s.rows_in, 3, "b is in November");
    let (_, rows) = parquet_rows(&s.batch_dir.clone().unwrap().join("data")).await;
    assert_eq!(
        rows,
        vec!["id=a, label=ALPHA, amount=10.5000", "id=c, label=GAMMA, amount=-2.5000"]
    );
    assert_eq!(s.control_totals["amount"], "8.0000");
}

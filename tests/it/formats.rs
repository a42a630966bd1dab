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
    // Parquet text is read as string views (cheaper to group and join) and published as
    // the declared `string`, as the file's own schema says.
    let data = s.batch_dir.clone().unwrap().join("data");
    for file in std::fs::read_dir(&data).unwrap() {
        let file = std::fs::File::open(file.unwrap().path()).unwrap();
        let written = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        for column in ["id", "label"] {
            let field = written.schema().field_with_name(column).unwrap().clone();
            assert_eq!(field.data_type(), &DataType::Utf8, "{column}");
        }
    }
}

/// Found in review: money changed on the way in. A CSV `1.23456` in a decimal(18,4)
/// column became 1.2346; NDJSON numbers went through a float (12345678901234.5678 became
/// ...4.5680); a Parquet float column declared decimal was read through the float. Dates
/// such as `20261001` were read, and a time of day dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_and_dates_arrive_exactly_or_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("in.csv"),
        "id,day,amount\n1,2026-10-01,1.2345\n2,2026-10-02,1.23456\n3,20261003,2.0000\n4,2026-10-04T12:00:00,3.5\n5,2026-10-05,1.234500\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("in.ndjson"),
        "{\"id\": 1, \"day\": \"2026-10-01\", \"amount\": 12345678901234.5678}\n{\"id\": 2, \"day\": \"2026-10-02\", \"amount\": 0.1}\n",
    )
    .unwrap();
    let schema = "    schema:\n      - { name: id, type: integer }\n      - { name: day, type: date }\n      - { name: amount, type: \"decimal(18,4)\" }\n";
    let columns = "    columns:\n      - { name: id, type: integer }\n      - { name: day, type: date }\n      - { name: amount, type: \"decimal(18,4)\" }\n";
    let yaml = format!(
        "pipeline: t\norganizations:\n  - {{ id: v, name: V, tier: vendor }}\nsources:\n  csv:\n    url: in.csv\n{schema}  json:\n    url: in.ndjson\n{schema}streams:\n  - id: from_csv\n    kind: billing\n    owner: v\n    input: {{ source: csv }}\n{columns}  - id: from_json\n    kind: billing\n    owner: v\n    input: {{ source: json }}\n{columns}"
    );
    let pipeline = dir.join("p.yaml");
    std::fs::write(&pipeline, &yaml).unwrap();
    let report = run(&pipeline, "2026-10", &dir.join("wh")).await;
    assert!(report.ok(), "{report:?}");

    // CSV: 1 and 5 (1.234500 is 1.2345 with zeros) are read; 2 has a fifth place, 3 and
    // 4 are no YYYY-MM-DD dates: refused, nothing rounded or cut.
    let csv = report.stream("from_csv").unwrap();
    let at = csv.batch_dir.clone().unwrap();
    let (_, rows) = parquet_rows(&at.join("data")).await;
    assert_eq!(
        rows,
        vec![
            "id=1, day=2026-10-01, amount=1.2345",
            "id=5, day=2026-10-05, amount=1.2345"
        ]
    );
    let (_, refused) = parquet_rows(&at.join("rejects/input.parquet")).await;
    assert_eq!(refused.len(), 3, "{refused:#?}");
    let reason = |id: &str| {
        refused
            .iter()
            .find(|r| r.starts_with(&format!("id={id},")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        reason("2").contains("amount: '1.23456' has more than 4 decimal places"),
        "{}",
        reason("2")
    );
    assert!(
        reason("3").contains("day: '20261003' is not a date written YYYY-MM-DD"),
        "{}",
        reason("3")
    );
    assert!(
        reason("4").contains("day: '2026-10-04T12:00:00' is not a date written YYYY-MM-DD"),
        "{}",
        reason("4")
    );

    // NDJSON: the number's text, exactly.
    let json = report.stream("from_json").unwrap();
    let (_, rows) = parquet_rows(&json.batch_dir.clone().unwrap().join("data")).await;
    assert_eq!(
        rows,
        vec![
            "id=1, day=2026-10-01, amount=12345678901234.5678",
            "id=2, day=2026-10-02, amount=0.1000"
        ]
    );
    assert_eq!(json.control_totals["amount"], "12345678901234.6678");

    // Parquet: a float column declared decimal is an error at validate, naming it.
    let floats = arrow::record_batch::RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, false),
            arrow::datatypes::Field::new("day", arrow::datatypes::DataType::Date32, false),
            arrow::datatypes::Field::new("amount", arrow::datatypes::DataType::Float64, false),
        ])),
        vec![
            std::sync::Arc::new(arrow::array::Int64Array::from(vec![1])),
            std::sync::Arc::new(arrow::array::Date32Array::from(vec![20_362])),
            std::sync::Arc::new(arrow::array::Float64Array::from(vec![0.1])),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(dir.join("in.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, floats.schema(), None).unwrap();
    w.write(&floats).unwrap();
    w.close().unwrap();
    std::fs::write(&pipeline, yaml.replace("url: in.ndjson", "url: in.parquet")).unwrap();
    let d = billflow::check(&engine(), &pipeline).await.unwrap_err();
    assert!(
        d.list.iter().any(|e| e
            .message
            .contains("column `amount` of source `json` is declared decimal(18,4) but its files hold Float64 values")),
        "{}",
        d.render()
    );
}

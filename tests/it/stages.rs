//! The stage golden tests that do not fit a case folder: the stage cases (one pipeline, one
//! run for 2026-10, the expected status, rows, rejects and totals) live in tests/stages/
//! and run in `cases.rs`; only multi-run or order-sensitive tests remain here. `Case`,
//! `write_case` and `run_case` also serve `properties.rs`.

use std::path::Path;

use billflow::execution::{Status, StreamReport};

use crate::common::*;

pub struct Case<'a> {
    pub input: &'a str,
    pub schema: &'a str,
    pub references: &'a [(&'a str, &'a str, &'a str)],
    pub stages: &'a str,
    pub columns: &'a str,
}

fn indent(text: &str, by: usize) -> String {
    text.trim_matches('\n')
        .lines()
        .map(|l| format!("{}{l}\n", " ".repeat(by)))
        .collect()
}

/// Write the case's files and pipeline; returns the pipeline's path.
pub fn write_case(dir: &Path, case: &Case<'_>) -> std::path::PathBuf {
    std::fs::write(dir.join("input.csv"), case.input.trim_start()).unwrap();
    let mut refs = String::new();
    for (name, csv, schema) in case.references {
        std::fs::write(dir.join(format!("{name}.csv")), csv.trim_start()).unwrap();
        refs.push_str(&format!(
            "  {name}:\n    url: {name}.csv\n    schema:\n{}",
            indent(schema, 6)
        ));
    }
    let yaml = format!(
        "pipeline: t\norganizations:\n  - {{ id: v, name: V, tier: vendor }}\nsources:\n  input:\n    url: input.csv\n    schema:\n{}{}streams:\n  - id: s\n    kind: billing\n    owner: v\n    input: {{ source: input }}\n    stages:\n{}    columns:\n{}",
        indent(case.schema, 6),
        if refs.is_empty() {
            String::new()
        } else {
            format!("references:\n{refs}")
        },
        indent(case.stages, 6),
        indent(case.columns, 6),
    );
    let pipeline = dir.join("p.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    pipeline
}

/// Run one stream over `input` and return its report, published rows and refused rows.
pub async fn run_case(dir: &Path, case: &Case<'_>) -> (StreamReport, Vec<String>, Vec<String>) {
    let pipeline = write_case(dir, case);
    let report = run(&pipeline, "2026-10", &dir.join("wh")).await;
    let s = report.stream("s").unwrap().clone();
    let (rows, rejects) = match &s.batch_dir {
        Some(d) if s.status == Status::Written => {
            let (_, rows) = parquet_rows(&d.join("data")).await;
            let rejects = if d.join("rejects").exists() {
                parquet_rows(&d.join("rejects")).await.1
            } else {
                vec![]
            };
            (rows, rejects)
        }
        _ => (vec![], vec![]),
    };
    (s, rows, rejects)
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

const COSTS: &str = "
id,org,cost
1,alpha-it,10.0000
2,bergen-data,3.3333
3,nobody,1.0000
4,alpha-it,-2.5000
";
const COSTS_SCHEMA: &str =
    "- { name: id, type: integer }\n- { name: org, type: string }\n- { name: cost, type: \"decimal(18,4)\" }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_step_exports_waits_and_resumes_from_the_reviewed_file() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case {
        input: COSTS,
        schema: COSTS_SCHEMA,
        references: &[],
        stages: "
- { kind: filter, column: org, not_equals: nobody }
- name: review
  kind: manual
  export: manual/{{ stream }}-{{ period }}-to-review.csv
  resume: manual/{{ stream }}-{{ period }}-reviewed.csv
  instructions: credit control approves or corrects each line",
        columns: COSTS_SCHEMA,
    };
    let (s, _, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Waiting, "{:?}", s.error);
    let e = s.error.unwrap().to_string();
    assert!(
        e.contains("waiting for a manual step") && e.contains("s-2026-10-reviewed.csv"),
        "{e}"
    );
    let export = std::fs::read_to_string(tmp.path().join("manual/s-2026-10-to-review.csv")).unwrap();
    let mut lines: Vec<&str> = export.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            "1,alpha-it,10.0000",
            "2,bergen-data,3.3333",
            "4,alpha-it,-2.5000",
            "id,org,cost"
        ]
    );
    assert!(
        !tmp.path()
            .join("wh/vendor/v/s")
            .read_dir()
            .map(|mut d| d.any(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')))
            .unwrap_or(false),
        "no batch while waiting"
    );

    // The reviewer drops the credit and corrects a cost.
    std::fs::write(
        tmp.path().join("manual/s-2026-10-reviewed.csv"),
        "id,org,cost\n1,alpha-it,9.5000\n2,bergen-data,3.3333\n",
    )
    .unwrap();
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(
        rows,
        sorted(&["id=1, org=alpha-it, cost=9.5000", "id=2, org=bergen-data, cost=3.3333"])
    );
    let first = s.batch_id.clone();
    let (again, _, _) = run_case(tmp.path(), &case).await;
    assert_eq!(again.status, Status::Reused);
    // A corrected review is a new batch.
    std::fs::write(
        tmp.path().join("manual/s-2026-10-reviewed.csv"),
        "id,org,cost\n1,alpha-it,9.7500\n",
    )
    .unwrap();
    let (third, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(third.status, Status::Written);
    assert_ne!(third.batch_id, first);
    assert_eq!(rows, vec!["id=1, org=alpha-it, cost=9.7500"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_publishes_its_rows_in_the_declared_order() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case {
        input: COSTS,
        schema: COSTS_SCHEMA,
        references: &[],
        stages: "[]",
        columns: COSTS_SCHEMA,
    };
    let pipeline = write_case(tmp.path(), &case);
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("    columns:\n", "    order_by: [org, cost]\n    columns:\n");
    std::fs::write(&pipeline, &text).unwrap();
    let report = run(&pipeline, "2026-10", &tmp.path().join("wh")).await;
    let s = report.stream("s").unwrap();
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    // Read back in file order (not sorted by the test).
    let ctx = datafusion::prelude::SessionContext::new();
    let batches = ctx
        .read_parquet(
            s.batch_dir.clone().unwrap().join("data").to_string_lossy().to_string(),
            Default::default(),
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let ids: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            (0..c.len())
                .map(move |i| {
                    c.as_any()
                        .downcast_ref::<arrow::array::StringArray>()
                        .unwrap()
                        .value(i)
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        ids,
        vec!["4", "1", "2", "3"],
        "alpha-it (-2.5, 10), bergen-data, nobody"
    );

    std::fs::write(&pipeline, text.replace("order_by: [org, cost]", "order_by: [orgg]")).unwrap();
    let d = billflow::check(&engine(), &pipeline).await.expect_err("unknown column");
    assert!(
        d.list[0]
            .message
            .contains("orders by `orgg`, which it does not publish"),
        "{}",
        d.render()
    );
    assert!(d.list[0].hint.as_deref().unwrap_or("").contains("did you mean `org`?"));
}

/// The `COSTS` input through `stages`, published as it is.
fn costs(stages: &str) -> Case<'_> {
    Case {
        input: COSTS,
        schema: COSTS_SCHEMA,
        references: &[],
        stages,
        columns: COSTS_SCHEMA,
    }
}

/// Found in review: a `manual` stage's `export` path was used as given (absolute, `..`, or
/// from a template) and replaced an existing file without a check; it overwrote the
/// stream's own input. It stays inside the pipeline's folder and replaces only a file
/// billflow wrote there, unchanged since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_export_stays_in_the_pipelines_folder_and_replaces_no_file_it_did_not_write() {
    let manual = |export: &str| {
        format!("- {{ kind: manual, export: \"{export}\", resume: \"manual/{{{{ stream }}}}-reviewed.csv\" }}")
    };
    for export in ["../outside.csv", "/tmp/billflow-outside.csv", "manual/../../x.csv"] {
        let tmp = tempfile::tempdir().unwrap();
        let stages = manual(export);
        let case = costs(&stages);
        let pipeline = write_case(tmp.path(), &case);
        let d = billflow::check(&engine(), &pipeline).await.unwrap_err();
        assert!(
            d.render().contains("is not a path inside the pipeline's folder"),
            "{export}: {}",
            d.render()
        );
    }

    // Onto the stream's own input: refused, the input untouched.
    let tmp = tempfile::tempdir().unwrap();
    let stages = manual("input.csv");
    let case = costs(&stages);
    let (s, _, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Failed);
    let e = s.error.unwrap().to_string();
    assert!(e.contains("exists and billflow did not write it"), "{e}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("input.csv")).unwrap(),
        COSTS.trim_start()
    );

    // Its own earlier export, unchanged, is replaced when the input changes; one edited by
    // hand is not.
    let tmp = tempfile::tempdir().unwrap();
    let stages = manual("manual/to-review.csv");
    let case = costs(&stages);
    let (s, _, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Waiting, "{:?}", s.error);
    let export = tmp.path().join("manual/to-review.csv");
    let more = format!("{}5,alpha-it,1.0000\n", COSTS.trim_start());
    let case = Case { input: &more, ..case };
    let (s, _, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Waiting, "{:?}", s.error);
    assert!(std::fs::read_to_string(&export).unwrap().contains("5,alpha-it,1.0000"));
    std::fs::write(&export, "id,org,cost\n1,alpha-it,0.0000\n").unwrap();
    let (s, _, _) = run_case(tmp.path(), &Case { input: COSTS, ..case }).await;
    assert_eq!(s.status, Status::Failed);
    assert_eq!(
        std::fs::read_to_string(&export).unwrap(),
        "id,org,cost\n1,alpha-it,0.0000\n"
    );
}

/// Found in review (issue 14, item 15): a run error of stages fused into one plan named
/// all of them (`stage a, b, c`). It names the one that fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_error_of_fused_stages_names_the_stage_that_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("in.csv"), "id,amount\n1,2.50\n2,0.00\n").unwrap();
    let yaml = "pipeline: t\norganizations:\n  - { id: v, name: V, tier: vendor }\nsources:\n  usage:\n    url: in.csv\n    schema:\n      - { name: id, type: integer }\n      - { name: amount, type: \"decimal(18,2)\" }\nstreams:\n  - id: s\n    kind: billing\n    owner: v\n    input: { source: usage }\n    stages:\n      - name: first\n        kind: sql\n        query: SELECT id, amount FROM input\n      - name: divide\n        kind: sql\n        query: SELECT id, CAST(10 / amount AS DECIMAL(18,2)) AS amount FROM input\n      - name: last\n        kind: sql\n        query: SELECT id, amount FROM input\n    columns:\n      - { name: id, type: integer }\n      - { name: amount, type: \"decimal(18,2)\" }\n";
    let pipeline = dir.join("p.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    let report = run(&pipeline, "2026-10", &dir.join("wh")).await;
    let s = report.stream("s").unwrap();
    assert_eq!(s.status, billflow::execution::Status::Failed, "{s:?}");
    let e = s.error.as_ref().unwrap();
    assert!(e.message.to_lowercase().contains("divide by zero"), "{}", e.message);
    assert_eq!(e.stage.as_deref(), Some("divide"), "{e:?}");
}

//! Golden tests of the billing stage kinds: one small stream per case, expected rows
//! written out by hand.

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

const ITEMS: &str = "
id,sku,qty,price,note
1,VM-STD-2,10,1.5000,a
2,vm-gpu,3,-2.2500,
3,STORAGE,,0.0100,é€
4,VM-STD-2,7,99999999999999.9999,x
";
const ITEMS_SCHEMA: &str = "
- { name: id, type: integer, nullable: false }
- { name: sku, type: string }
- { name: qty, type: integer }
- { name: price, type: \"decimal(18,4)\" }
- { name: note, type: string }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_by_value_list_comparison_and_sql() {
    let tmp = tempfile::tempdir().unwrap();
    let columns = "- { name: id, type: integer }\n";
    for (stages, want, removed) in [
        (
            "- { kind: filter, column: sku, equals: VM-STD-2 }\n- { kind: sql, query: SELECT id FROM input }",
            vec!["id=1", "id=4"],
            2,
        ),
        (
            "- { kind: filter, column: sku, in: [vm-gpu, STORAGE] }\n- { kind: sql, query: SELECT id FROM input }",
            vec!["id=2", "id=3"],
            2,
        ),
        // NULL qty (id 3) is not > 5: removed.
        (
            "- { kind: filter, column: qty, gt: 5 }\n- { kind: sql, query: SELECT id FROM input }",
            vec!["id=1", "id=4"],
            2,
        ),
        (
            "- { kind: filter, column: price, lte: \"-2.25\" }\n- { kind: sql, query: SELECT id FROM input }",
            vec!["id=2"],
            3,
        ),
        (
            "- { kind: filter, condition: \"price < 0 OR note = 'é€'\" }\n- { kind: sql, query: SELECT id FROM input }",
            vec!["id=2", "id=3"],
            2,
        ),
    ] {
        let case = Case {
            input: ITEMS,
            schema: ITEMS_SCHEMA,
            references: &[],
            stages,
            columns,
        };
        let (s, rows, _) = run_case(tmp.path(), &case).await;
        assert_eq!(s.status, Status::Written, "{stages}: {:?}", s.error);
        assert_eq!(rows, sorted(&want), "{stages}");
        assert_eq!(
            s.removed.iter().map(|r| r.2).sum::<u64>(),
            removed,
            "{stages}: removed rows are counted"
        );
        std::fs::remove_dir_all(tmp.path().join("wh")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_columns_with_types_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case {
        input: ITEMS,
        schema: ITEMS_SCHEMA,
        references: &[],
        stages: "
- kind: copy_columns
  rename: true
  on_error: reject
  columns:
    - { from: price, to: unit_price, type: \"decimal(20,4)\" }
    - { from: sku, to: product }
- { kind: sql, query: \"SELECT id, product, unit_price FROM input\" }",
        columns: "
- { name: id, type: integer }
- { name: product, type: string }
- { name: unit_price, type: \"decimal(20,4)\" }",
    };
    let (s, rows, rejects) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(
        rows,
        sorted(&[
            "id=1, product=VM-STD-2, unit_price=1.5000",
            "id=2, product=vm-gpu, unit_price=-2.2500",
            "id=3, product=STORAGE, unit_price=0.0100",
            "id=4, product=VM-STD-2, unit_price=99999999999999.9999",
        ])
    );
    assert!(rejects.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_columns_refuses_a_cast_that_would_round_money_and_refuses_unparseable_text() {
    let tmp = tempfile::tempdir().unwrap();
    let mut case = Case {
        input: ITEMS,
        schema: ITEMS_SCHEMA,
        references: &[],
        stages: "- kind: copy_columns\n  columns: [{ from: price, to: p2, type: \"decimal(18,2)\" }]",
        columns: "- { name: id, type: integer }",
    };
    let d = billflow::check(&engine(), &write_case(tmp.path(), &case))
        .await
        .expect_err("validate catches it");
    let e = &d.list[0];
    assert!(
        e.message
            .contains("copying `price` (Decimal128(18, 4)) as decimal(18,2) would lose precision"),
        "{}",
        e.render()
    );
    assert!(e.message.contains("stage `copy_columns-1` of stream `s`"));
    assert_eq!(
        e.location.as_ref().map(|l| l.line),
        Some(20),
        "at the `from` of the copy"
    );

    // Text to integer: `a` and `x` do not parse; with on_error: reject they are refused.
    case.stages = "- kind: copy_columns\n  on_error: reject\n  columns: [{ from: note, to: n, type: integer }]\n- { kind: sql, query: \"SELECT id, n FROM input\" }";
    case.columns = "- { name: id, type: integer }\n- { name: n, type: integer }";
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (s, rows, rejects) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    // id 2 has no note (NULL stays NULL); id 3's note is not a number either.
    assert_eq!(rows, sorted(&["id=2, n=NULL"]));
    assert_eq!(rejects.len(), 3, "{rejects:#?}");
    assert!(
        rejects
            .iter()
            .any(|r| r.contains("id=3") && r.contains("note: cannot convert 'é€' to integer")),
        "{rejects:#?}"
    );
    assert!(rejects.iter().all(|r| r.contains("_reject_stage=copy_columns-1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formula_typed_outputs_drop_when_and_error_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case {
        input: ITEMS,
        schema: ITEMS_SCHEMA,
        references: &[],
        stages: "
- kind: formula
  drop_when: \"sku = 'STORAGE'\"
  outputs:
    - { name: amount, type: \"decimal(20,4)\", expr: \"CAST(qty AS DECIMAL(10,0)) * price\" }
    - { name: label, type: string, expr: \"concat(lower(sku), '/', coalesce(note, '∅'))\" }
    - { name: qty_from_note, type: integer, expr: note, on_error: \"null\" }
    - { name: big, type: boolean, expr: amount > 100 }
- { kind: sql, query: \"SELECT id, amount, label, qty_from_note, big FROM input\" }",
        columns: "
- { name: id, type: integer }
- { name: amount, type: \"decimal(20,4)\" }
- { name: label, type: string }
- { name: qty_from_note, type: integer }
- { name: big, type: boolean }",
    };
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    // 10 x 1.5000 = 15.0000; 3 x -2.2500 = -6.7500 (a credit); 7 x 99999999999999.9999 =
    // 699999999999999.9993, which fits decimal(20,4).
    assert_eq!(
        rows,
        sorted(&[
            "id=1, amount=15.0000, label=vm-std-2/a, qty_from_note=NULL, big=false",
            "id=2, amount=-6.7500, label=vm-gpu/∅, qty_from_note=NULL, big=false",
            "id=4, amount=699999999999999.9993, label=vm-std-2/x, qty_from_note=NULL, big=true",
        ])
    );
    assert_eq!(
        s.removed,
        vec![("formula-1".to_string(), "drop_when sku = 'STORAGE'".to_string(), 1)]
    );

    // The same product into decimal(18,4) overflows for id 4: refused, not wrapped.
    let case = Case {
        stages: "
- kind: formula
  outputs:
    - { name: amount, type: \"decimal(18,4)\", expr: \"CAST(qty AS DECIMAL(10,0)) * price\", on_error: reject }
- { kind: sql, query: \"SELECT id, amount FROM input\" }",
        columns: "- { name: id, type: integer }\n- { name: amount, type: \"decimal(18,4)\" }",
        ..case
    };
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (s, rows, rejects) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(
        rows,
        sorted(&["id=1, amount=15.0000", "id=2, amount=-6.7500", "id=3, amount=NULL"])
    );
    assert_eq!(rejects.len(), 1);
    assert!(
        rejects[0].contains("id=4") && rejects[0].contains("cannot convert '699999999999999.9993' to decimal(18,4)"),
        "{}",
        rejects[0]
    );

    // on_error: fail (the default) stops the stream and names the row's reason.
    let case = Case {
        stages: "- kind: formula\n  outputs:\n    - { name: amount, type: \"decimal(18,4)\", expr: \"CAST(qty AS DECIMAL(10,0)) * price\" }\n- { kind: sql, query: \"SELECT id, amount FROM input\" }",
        ..case
    };
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (s, _, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Failed);
    let e = s.error.unwrap().to_string();
    assert!(
        e.contains("stage `formula-1` refused a row")
            && e.contains("cannot convert '699999999999999.9993' to decimal(18,4)"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_values_inline_with_default_and_reject() {
    let tmp = tempfile::tempdir().unwrap();
    let mut case = Case {
        input: ITEMS,
        schema: ITEMS_SCHEMA,
        references: &[],
        stages: "
- kind: map_values
  column: sku
  output: family
  values: { VM-STD-2: compute, vm-gpu: \"compute ⚡\" }
  default: other
- { kind: sql, query: \"SELECT id, sku, family FROM input\" }",
        columns: "- { name: id, type: integer }\n- { name: sku, type: string }\n- { name: family, type: string }",
    };
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(
        rows,
        sorted(&[
            "id=1, sku=VM-STD-2, family=compute",
            "id=2, sku=vm-gpu, family=compute ⚡",
            "id=3, sku=STORAGE, family=other",
            "id=4, sku=VM-STD-2, family=compute",
        ])
    );
    case.stages = "- { kind: map_values, column: sku, values: { VM-STD-2: VM2 }, unmapped: reject }\n- { kind: sql, query: \"SELECT id, sku, sku AS family FROM input\" }";
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (_, rows, rejects) = run_case(tmp.path(), &case).await;
    assert_eq!(
        rows,
        sorted(&["id=1, sku=VM2, family=VM2", "id=4, sku=VM2, family=VM2"])
    );
    assert_eq!(rejects.len(), 2);
    assert!(
        rejects.iter().any(|r| r.contains("sku: no mapping for 'vm-gpu'")),
        "{rejects:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_column_named_and_numbered_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let input = "
id,code
1,VM-STD-2
2,vm-gpu-16
3,STORAGE
4,
5,ÉTÉ-X-9
6,x VM-STD-4
";
    let case = Case {
        input,
        schema: "- { name: id, type: integer }\n- { name: code, type: string }",
        references: &[],
        stages: "
- kind: split_column
  column: code
  pattern: \"(?P<family>[^-]+)-(?P<line>[^-]+)(?:-(?P<size>\\\\d+))?\"
- { kind: sql, query: \"SELECT id, family, line, size FROM input\" }",
        columns: "- { name: id, type: integer }\n- { name: family, type: string }\n- { name: line, type: string }\n- { name: size, type: string }",
    };
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(
        rows,
        sorted(&[
            "id=1, family=VM, line=STD, size=2",
            "id=2, family=vm, line=gpu, size=16",
            "id=3, family=NULL, line=NULL, size=NULL",
            "id=4, family=NULL, line=NULL, size=NULL",
            "id=5, family=ÉTÉ, line=X, size=9",
            // Anchored at the start: `x VM` is the family, as the pattern allows spaces.
            "id=6, family=x VM, line=STD, size=4",
        ])
    );
    let numbered = Case {
        stages: "
- { kind: split_column, column: code, pattern: \"([A-Za-z]+)-\", outputs: [head] }
- { kind: sql, query: \"SELECT id, head FROM input\" }",
        columns: "- { name: id, type: integer }\n- { name: head, type: string }",
        ..case
    };
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (_, rows, _) = run_case(tmp.path(), &numbered).await;
    assert_eq!(
        rows,
        sorted(&[
            "id=1, head=VM",
            "id=2, head=vm",
            "id=3, head=NULL",
            "id=4, head=NULL",
            "id=5, head=NULL",
            "id=6, head=NULL"
        ])
    );
}

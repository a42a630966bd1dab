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

const USAGE: &str = "
id,sub,day,qty
1,S1,2026-10-01,10
2,S2,2026-10-15,4
3,S9,2026-10-16,1
4,,2026-10-20,2
5,S1,2026-10-31,3
";
const USAGE_SCHEMA: &str = "
- { name: id, type: integer }
- { name: sub, type: string }
- { name: day, type: date }
- { name: qty, type: integer }
";
const SUBS: (&str, &str, &str) = (
    "subs",
    "subscription_id,customer,updated\nS1,acme,2026-01-01\nS2,fjord,2026-01-01\nS2,fjord-new,2026-06-01\n",
    "- { name: subscription_id, type: string }\n- { name: customer, type: string }\n- { name: updated, type: date }",
);
const PRICES: (&str, &str, &str) = (
    "prices",
    "sub,unit_price,valid_from,valid_to\nS1,1.000000,2026-01-01,2026-10-16\nS1,0.800000,2026-10-16,\nS2,2.500000,2026-10-01,2026-10-15\nS2,2.400000,2026-10-15,2026-11-01\n",
    "- { name: sub, type: string }\n- { name: unit_price, type: \"decimal(18,6)\" }\n- { name: valid_from, type: date }\n- { name: valid_to, type: date }",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_by_key_with_missing_and_multiple_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let out_cols = "- { name: id, type: integer }\n- { name: customer, type: string }";
    let stages = |extra: &str| {
        format!(
            "- kind: lookup\n  reference: subs\n  keys: [{{ column: sub, reference_column: subscription_id }}]\n  columns: [customer]\n{extra}\n- {{ kind: sql, query: \"SELECT id, customer FROM input\" }}"
        )
    };
    // S2 has two rows: `last` by `updated` takes fjord-new; S9 and the empty key do not
    // match and are refused with the key in the reason.
    let s1 = stages("  on_multiple: last\n  order_by: updated\n  on_missing: reject");
    let case = Case {
        input: USAGE,
        schema: USAGE_SCHEMA,
        references: &[SUBS],
        stages: &s1,
        columns: out_cols,
    };
    let (s, rows, rejects) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(
        rows,
        sorted(&["id=1, customer=acme", "id=2, customer=fjord-new", "id=5, customer=acme"])
    );
    assert_eq!(rejects.len(), 2);
    assert!(
        rejects
            .iter()
            .any(|r| r.contains("id=3") && r.contains("no row of `subs` matches (S9)")),
        "{rejects:#?}"
    );
    assert!(
        rejects
            .iter()
            .any(|r| r.contains("id=4") && r.contains("no row of `subs` matches (NULL)")),
        "{rejects:#?}"
    );

    // `first` and a default for the missing ones.
    let s2 = stages("  on_multiple: first\n  order_by: updated\n  defaults: { customer: \"(unknown)\" }");
    let case = Case { stages: &s2, ..case };
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (_, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(
        rows,
        sorted(&[
            "id=1, customer=acme",
            "id=2, customer=fjord",
            "id=3, customer=(unknown)",
            "id=4, customer=(unknown)",
            "id=5, customer=acme"
        ])
    );

    // The default policy for several matches is to fail, naming the key.
    let s3 = stages("  on_missing: \"null\"");
    let case = Case { stages: &s3, ..case };
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (s, _, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Failed);
    assert!(s.error.unwrap().message.contains("several rows of `subs` match (S2)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effective_dated_lookup_takes_the_row_valid_on_the_date() {
    let tmp = tempfile::tempdir().unwrap();
    let stages = "
- kind: lookup
  reference: prices
  keys: [sub]
  columns: [unit_price]
  date: day
  on_missing: reject
- { kind: sql, query: \"SELECT id, day, unit_price FROM input\" }";
    let case = Case {
        input: USAGE,
        schema: USAGE_SCHEMA,
        references: &[PRICES],
        stages,
        columns: "- { name: id, type: integer }\n- { name: day, type: date }\n- { name: unit_price, type: \"decimal(18,6)\" }",
    };
    let (s, rows, rejects) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    // valid_to is exclusive: S2 on 2026-10-15 takes the row starting that day.
    assert_eq!(
        rows,
        sorted(&[
            "id=1, day=2026-10-01, unit_price=1.000000",
            "id=2, day=2026-10-15, unit_price=2.400000",
            "id=5, day=2026-10-31, unit_price=0.800000",
        ])
    );
    assert_eq!(rejects.len(), 2, "{rejects:#?}");
    assert!(
        rejects
            .iter()
            .any(|r| r.contains("id=3") && r.contains("no row of `prices` matches (S9) valid at day"))
    );

    // A key whose last row has ended is missing after that end, even where another key's
    // open-ended row goes on (S2 ends 2026-10-20; S1 runs on).
    let ended = (
        "prices",
        "sub,unit_price,valid_from,valid_to\nS1,1.000000,2026-10-01,\nS2,2.500000,2026-10-01,2026-10-20\n",
        PRICES.2,
    );
    let late = Case {
        input: "id,sub,day,qty\n1,S1,2026-10-25,1\n2,S2,2026-10-19,1\n3,S2,2026-10-25,1\n4,S2,2026-12-25,1\n",
        references: &[ended],
        ..case
    };
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (s, rows, rejects) = run_case(tmp.path(), &late).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(
        rows,
        sorted(&[
            "id=1, day=2026-10-25, unit_price=1.000000",
            "id=2, day=2026-10-19, unit_price=2.500000",
        ])
    );
    assert_eq!(rejects.len(), 2, "{rejects:#?}");

    // Overlapping validity: two rows valid on the same day is an error by default.
    let overlapping = (
        "prices",
        "sub,unit_price,valid_from,valid_to\nS1,1.000000,2026-01-01,\nS1,0.800000,2026-10-16,\n",
        PRICES.2,
    );
    let case = Case {
        references: &[overlapping],
        stages: "
- kind: lookup
  reference: prices
  keys: [sub]
  columns: [unit_price]
  date: day
  on_missing: \"null\"
- { kind: sql, query: \"SELECT id, day, unit_price FROM input\" }",
        ..case
    };
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (s, _, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Failed);
    let e = s.error.unwrap().message;
    assert!(e.contains("several rows of `prices` match (S1) valid at day"), "{e}");

    // Overlaps resolved by order: on 2026-10-01 only the first S1 row is valid (1.0); on
    // 2026-10-31 both are, and `last` by valid_from takes the later one (0.8), `first`
    // the earlier one (1.0).
    for (policy, expected_31) in [("last", "0.800000"), ("first", "1.000000")] {
        let stages = format!(
            "
- kind: lookup
  reference: prices
  keys: [sub]
  columns: [unit_price]
  date: day
  on_missing: \"null\"
  on_multiple: {policy}
  order_by: valid_from
- {{ kind: sql, query: \"SELECT id, day, unit_price FROM input WHERE sub = 'S1'\" }}"
        );
        let case = Case {
            stages: &stages,
            ..case
        };
        std::fs::remove_dir_all(tmp.path().join("wh")).ok();
        let (s, rows, _) = run_case(tmp.path(), &case).await;
        assert_eq!(s.status, Status::Written, "{policy}: {:?}", s.error);
        assert_eq!(
            rows,
            sorted(&[
                "id=1, day=2026-10-01, unit_price=1.000000",
                &format!("id=5, day=2026-10-31, unit_price={expected_31}"),
            ]),
            "{policy}"
        );
    }
}

const FX: (&str, &str, &str) = (
    "fx",
    "from_currency,to_currency,rate,valid_from,valid_to\nUSD,EUR,0.92345678,2026-09-01,2026-10-15\nUSD,EUR,0.91876543,2026-10-15,\nGBP,EUR,1.15,2026-01-01,\n",
    "- { name: from_currency, type: string }\n- { name: to_currency, type: string }\n- { name: rate, type: \"decimal(18,8)\" }\n- { name: valid_from, type: date }\n- { name: valid_to, type: date }",
);
const AMOUNTS: &str = "
id,day,amount,cur
1,2026-10-14,100.0000,USD
2,2026-10-15,100.0000,USD
3,2026-10-20,10.0000,EUR
4,2026-10-20,,USD
5,2026-10-20,5.0000,CHF
6,2026-10-01,-1.0000,USD
7,2026-10-20,0.0003,GBP
";
const AMOUNTS_SCHEMA: &str = "
- { name: id, type: integer }
- { name: day, type: date }
- { name: amount, type: \"decimal(18,4)\" }
- { name: cur, type: string }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convert_currency_at_the_rate_valid_on_the_date() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case {
        input: AMOUNTS,
        schema: AMOUNTS_SCHEMA,
        references: &[FX],
        stages: "
- kind: convert_currency
  amount: amount
  from_column: cur
  to: EUR
  rates: fx
  date: day
  output: amount_eur
  on_missing_rate: reject
- { kind: sql, query: \"SELECT id, amount_eur FROM input\" }",
        columns: "- { name: id, type: integer }\n- { name: amount_eur, type: \"decimal(30,5)\" }",
    };
    let (s, rows, rejects) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    // 100 x 0.92345678 = 92.345678 -> 92.34568; from 10-15 the new rate: 91.876543 ->
    // 91.87654; EUR stays; NULL stays NULL; -0.92345678 -> -0.92346; 0.0003 x 1.15 =
    // 0.000345, a tie: half-even keeps 0.00034.
    assert_eq!(
        rows,
        sorted(&[
            "id=1, amount_eur=92.34568",
            "id=2, amount_eur=91.87654",
            "id=3, amount_eur=10.00000",
            "id=4, amount_eur=NULL",
            "id=6, amount_eur=-0.92346",
            "id=7, amount_eur=0.00034",
        ])
    );
    assert_eq!(rejects.len(), 1);
    assert!(
        rejects[0].contains("no exchange rate CHF->EUR valid on 2026-10-20 in `fx`"),
        "{}",
        rejects[0]
    );

    // Closing rate of the period, half-up, 2 places, failing on the missing CHF rate.
    let case = Case {
        stages: "
- kind: convert_currency
  amount: amount
  from_column: cur
  to: EUR
  rates: fx
  rate_date: period_end
  scale: 2
  rounding: half_up
  rate_output: rate
- { kind: sql, query: \"SELECT id, amount, rate FROM input\" }",
        columns: "- { name: id, type: integer }\n- { name: amount, type: \"decimal(30,2)\" }\n- { name: rate, type: \"decimal(18,8)\" }",
        ..case
    };
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (s, _, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Failed);
    let e = s.error.unwrap().message;
    assert!(
        e.contains("no exchange rate CHF->EUR valid on 2026-10-31 in `fx`"),
        "{e}"
    );

    let no_chf = AMOUNTS.replace("5,2026-10-20,5.0000,CHF\n", "");
    let case = Case { input: &no_chf, ..case };
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(
        rows,
        sorted(&[
            "id=1, amount=91.88, rate=0.91876543",
            "id=2, amount=91.88, rate=0.91876543",
            "id=3, amount=10.00, rate=1.00000000",
            "id=4, amount=NULL, rate=0.91876543",
            "id=6, amount=-0.92, rate=0.91876543",
            "id=7, amount=0.00, rate=1.15000000",
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_with_penny_reconciliation_per_group() {
    let tmp = tempfile::tempdir().unwrap();
    let input = "
id,grp,amount
1,A,1.005
2,A,1.005
3,A,1.005
4,B,2.675
5,B,-0.125
6,C,
";
    let case = Case {
        input,
        schema: "- { name: id, type: integer }\n- { name: grp, type: string }\n- { name: amount, type: \"decimal(18,3)\" }",
        references: &[],
        stages: "
- kind: round
  columns: [amount]
  scale: 2
  reconcile: { group_by: [grp], order_by: [id] }",
        columns: "- { name: id, type: integer }\n- { name: grp, type: string }\n- { name: amount, type: \"decimal(18,2)\" }",
    };
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    // A: each 1.005 -> 1.00 (half-even), lines 3.00, exact 3.015 -> 3.02: the residue
    // 0.02 goes to the first of the equal lines (id 1). B: 2.675 -> 2.68, -0.125 -> -0.12,
    // lines 2.56, exact 2.550 -> 2.55: -0.01 goes to the largest line.
    assert_eq!(
        rows,
        sorted(&[
            "id=1, grp=A, amount=1.02",
            "id=2, grp=A, amount=1.00",
            "id=3, grp=A, amount=1.00",
            "id=4, grp=B, amount=2.67",
            "id=5, grp=B, amount=-0.12",
            "id=6, grp=C, amount=NULL",
        ])
    );
    assert_eq!(
        s.control_totals["amount"], "5.57",
        "3.02 + 2.55: totals after rounding equal rounded totals"
    );

    let case = Case {
        stages: "- { kind: round, columns: [amount], scale: 2, mode: half_up }",
        ..case
    };
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (_, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(
        rows,
        sorted(&[
            "id=1, grp=A, amount=1.01",
            "id=2, grp=A, amount=1.01",
            "id=3, grp=A, amount=1.01",
            "id=4, grp=B, amount=2.68",
            "id=5, grp=B, amount=-0.13",
            "id=6, grp=C, amount=NULL",
        ])
    );
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
const TERMS: (&str, &str, &str) = (
    "terms",
    "organization_id,markup_pct\nalpha-it,0.2000\nbergen-data,0.1750\n",
    "- { name: organization_id, type: string }\n- { name: markup_pct, type: \"decimal(9,4)\" }",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_discount_and_margin() {
    let tmp = tempfile::tempdir().unwrap();
    let price_columns = "- { name: id, type: integer }\n- { name: price, type: \"decimal(18,4)\" }";
    let cases: &[(&str, Vec<&str>, usize)] = &[
        // 3.3333 x 1.175 = 3.91662750 -> 3.9166; `nobody` has no rule: refused.
        (
            "- kind: markup\n  column: cost\n  output: price\n  rules: { reference: terms, keys: [{ column: org, reference_column: organization_id }], rate_column: markup_pct }\n  on_missing_rule: reject",
            vec!["id=1, price=12.0000", "id=2, price=3.9166", "id=4, price=-3.0000"],
            1,
        ),
        // 3.3333 x 0.9 = 2.99997 -> 3.00 at 2 places (half-even).
        (
            "- { kind: discount, column: cost, output: price, rate: \"0.1\", scale: 2 }",
            vec![
                "id=1, price=9.0000",
                "id=2, price=3.0000",
                "id=3, price=0.9000",
                "id=4, price=-2.2500",
            ],
            0,
        ),
        // A 25% margin: price = cost / 0.75, so (price - cost) / price = 0.25.
        (
            "- { kind: margin, column: cost, output: price, rate: \"0.25\" }",
            vec![
                "id=1, price=13.3333",
                "id=2, price=4.4444",
                "id=3, price=1.3333",
                "id=4, price=-3.3333",
            ],
            0,
        ),
        (
            "- { kind: markup, column: cost, output: price, amount: \"0.5\" }",
            vec![
                "id=1, price=10.5000",
                "id=2, price=3.8333",
                "id=3, price=1.5000",
                "id=4, price=-2.0000",
            ],
            0,
        ),
    ];
    for (stage, want, refused) in cases {
        let stages = format!("{stage}\n- {{ kind: sql, query: \"SELECT id, price FROM input\" }}");
        let case = Case {
            input: COSTS,
            schema: COSTS_SCHEMA,
            references: &[TERMS],
            stages: &stages,
            columns: price_columns,
        };
        std::fs::remove_dir_all(tmp.path().join("wh")).ok();
        let (s, rows, rejects) = run_case(tmp.path(), &case).await;
        assert_eq!(s.status, Status::Written, "{stage}: {:?}", s.error);
        assert_eq!(rows, sorted(want), "{stage}");
        assert_eq!(rejects.len(), *refused, "{stage}");
    }
    // A margin of 100% or more has no price.
    let case = Case {
        input: COSTS,
        schema: COSTS_SCHEMA,
        references: &[TERMS],
        stages: "- { kind: margin, column: cost, rate: \"1\" }",
        columns: COSTS_SCHEMA,
    };
    let d = billflow::check(&engine(), &write_case(tmp.path(), &case))
        .await
        .expect_err("refused");
    assert!(
        d.list[0].message.contains("a margin of 1 cannot be reached"),
        "{}",
        d.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_usage_lines_into_billing_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case {
        input: COSTS,
        schema: COSTS_SCHEMA,
        references: &[],
        stages: "
- kind: aggregate
  group_by: [org]
  sum: [cost]
  aggregations:
    - { function: count, column: id, as: lines }
    - { function: max, column: cost, as: largest }",
        columns: "- { name: org, type: string }\n- { name: cost, type: \"decimal(28,4)\" }\n- { name: lines, type: integer }\n- { name: largest, type: \"decimal(18,4)\" }",
    };
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(
        rows,
        sorted(&[
            "org=alpha-it, cost=7.5000, lines=2, largest=10.0000",
            "org=bergen-data, cost=3.3333, lines=1, largest=3.3333",
            "org=nobody, cost=1.0000, lines=1, largest=1.0000",
        ])
    );
    assert_eq!(s.control_totals["cost"], "11.8333");
}

const PLANS: (&str, &str, &str) = (
    "plans",
    "sku,model,band_from,band_to,unit_price,flat_fee,block_size,percent,min_charge,max_charge,free_units,valid_from,valid_to
TIER,tiered,0,100,1.00,,,,,,,2026-01-01,
TIER,tiered,100,,0.80,5.00,,,,,,2026-01-01,
VOL,volume,0,100,1.00,,,,,,,2026-01-01,
VOL,volume,100,,0.80,,,,,,,2026-01-01,
PKG,package,,,5.00,,100,,,,,2026-01-01,
FLAT,flat,,,,20.00,,,,,,2026-01-01,
UNIT,per_unit,,,0.50,,,,10.00,,10,2026-01-01,2026-10-16
UNIT,per_unit,,,0.40,,,,,,,2026-10-16,
PCT,percentage,0,1000,,,,0.02,,24.00,,2026-01-01,
PCT,percentage,1000,,,,,0.01,,24.00,,2026-01-01,
",
    "- { name: sku, type: string }
- { name: model, type: string }
- { name: band_from, type: \"decimal(18,4)\" }
- { name: band_to, type: \"decimal(18,4)\" }
- { name: unit_price, type: \"decimal(18,6)\" }
- { name: flat_fee, type: \"decimal(18,4)\" }
- { name: block_size, type: \"decimal(18,4)\" }
- { name: percent, type: \"decimal(9,6)\" }
- { name: min_charge, type: \"decimal(18,4)\" }
- { name: max_charge, type: \"decimal(18,4)\" }
- { name: free_units, type: \"decimal(18,4)\" }
- { name: valid_from, type: date }
- { name: valid_to, type: date }",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_every_model_with_allowances_limits_versions_and_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let input = "
id,sub,sku,day,qty,value
1,A,TIER,2026-10-01,50,
2,A,TIER,2026-10-02,50,
3,A,TIER,2026-10-03,50,
4,B,TIER,2026-10-05,100,
5,A,VOL,2026-10-01,100,
6,B,VOL,2026-10-01,99.5,
7,A,PKG,2026-10-01,250,
8,B,PKG,2026-10-01,200,
9,A,FLAT,2026-10-10,1,
10,A,FLAT,2026-10-20,3,
11,A,UNIT,2026-10-05,12,
12,A,UNIT,2026-10-10,3,
13,A,UNIT,2026-10-20,10,
14,A,UNIT,2026-10-21,-2.5,
15,A,PCT,2026-10-01,1,1000.00
16,A,PCT,2026-10-02,1,500.00
17,C,NOPE,2026-10-01,1,
18,C,UNIT,2025-01-01,1,
";
    let case = Case {
        input,
        schema: "
- { name: id, type: integer }
- { name: sub, type: string }
- { name: sku, type: string }
- { name: day, type: date }
- { name: qty, type: \"decimal(18,4)\" }
- { name: value, type: \"decimal(18,2)\" }",
        references: &[PLANS],
        stages: "
- kind: rate
  price_list: plans
  keys: [sku]
  group_by: [sub]
  quantity: qty
  base_amount: value
  date: day
  output: amount
  scale: 2
  order_by: [id]
  on_missing_price: reject
- { kind: sql, query: \"SELECT id, amount FROM input\" }",
        columns: "- { name: id, type: integer }\n- { name: amount, type: \"decimal(18,2)\" }",
    };
    let (s, rows, rejects) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(
        rows,
        sorted(&[
            // A/TIER, 150 units: 100 x 1.00 + 50 x 0.80 + band 2's fee 5.00 = 145.00; thirds
            // of 48.3333 round to 48.33 (144.99): the penny goes to the first line.
            "id=1, amount=48.34",
            "id=2, amount=48.33",
            "id=3, amount=48.33",
            // B/TIER, exactly 100 units: band 2 not entered, no fee.
            "id=4, amount=100.00",
            // Volume: 100 units reach band 2, all at 0.80; 99.5 stay in band 1.
            "id=5, amount=80.00",
            "id=6, amount=99.50",
            // Package: 250 units = 3 started blocks of 100; 200 = exactly 2.
            "id=7, amount=15.00",
            "id=8, amount=10.00",
            // Flat 20.00 per subscription, shared 1:3 by quantity.
            "id=9, amount=5.00",
            "id=10, amount=15.00",
            // Per unit, first version: 15 units - 10 free = 5 x 0.50 = 2.50 -> minimum 10.00,
            // shared 12:3.
            "id=11, amount=8.00",
            "id=12, amount=2.00",
            // Second version from the 16th: 10 - 2.5 (a credit) = 7.5 x 0.40 = 3.00.
            "id=13, amount=4.00",
            "id=14, amount=-1.00",
            // Percentage, graduated on the base amount 1500: 1000 x 2% + 500 x 1% = 25.00,
            // capped at 24.00, shared 1000:500.
            "id=15, amount=16.00",
            "id=16, amount=8.00",
        ])
    );
    assert_eq!(rejects.len(), 2, "{rejects:#?}");
    assert!(
        rejects
            .iter()
            .any(|r| r.contains("id=17") && r.contains("no price in `plans` for (NOPE) valid on 2026-10-01")),
        "{rejects:#?}"
    );
    assert!(
        rejects
            .iter()
            .any(|r| r.contains("id=18") && r.contains("no price in `plans` for (UNIT) valid on 2025-01-01")),
        "{rejects:#?}"
    );
    // Totals reconcile: the lines add up to the group charges exactly.
    // 145 + 100 + 80 + 99.50 + 15 + 10 + 20 + 10 + 3 + 24: the lines add up to the charges.
    assert_eq!(s.control_totals["amount"], "506.50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prorate_by_days_and_by_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let input = "
id,fee,active_from,active_to
1,31.00,2026-10-11,
2,100.00,,2026-10-16
3,100.00,2026-09-15,2026-12-01
4,100.00,2026-11-05,
5,-50.00,2026-10-16,
6,10.00,2026-10-01,2026-10-01
";
    let case = Case {
        input,
        schema: "- { name: id, type: integer }\n- { name: fee, type: \"decimal(18,2)\" }\n- { name: active_from, type: date }\n- { name: active_to, type: date }",
        references: &[],
        stages: "
- { kind: prorate, amount: fee, start: active_from, end: active_to, output: charge, active_output: days }
- { kind: sql, query: \"SELECT id, charge, days FROM input\" }",
        columns: "- { name: id, type: integer }\n- { name: charge, type: \"decimal(38,4)\" }\n- { name: days, type: integer }",
    };
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    // October has 31 days. 31.00 for 21 days = 21.0000; 100 for 15 days = 48.387096.. ->
    // 48.3871; the whole month; nothing (starts in November); a downgrade credit of -50
    // for 16 days = -25.806451.. -> -25.8065; an empty range.
    assert_eq!(
        rows,
        sorted(&[
            "id=1, charge=21.0000, days=21",
            "id=2, charge=48.3871, days=15",
            "id=3, charge=100.0000, days=31",
            "id=4, charge=0.0000, days=0",
            "id=5, charge=-25.8065, days=16",
            "id=6, charge=0.0000, days=0",
        ])
    );

    // By seconds: half a day of a 31-day month, for a 31.00 fee, is 0.5000.
    let case = Case {
        input: "id,fee,active_from\n1,31.00,2026-10-31T12:00:00\n",
        schema: "- { name: id, type: integer }\n- { name: fee, type: \"decimal(18,2)\" }\n- { name: active_from, type: timestamp }",
        stages: "- { kind: prorate, amount: fee, start: active_from, by: seconds, output: charge, active_output: seconds }\n- { kind: sql, query: \"SELECT id, charge, seconds FROM input\" }",
        columns: "- { name: id, type: integer }\n- { name: charge, type: \"decimal(38,4)\" }\n- { name: seconds, type: integer }",
        ..case
    };
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(rows, vec!["id=1, charge=0.5000, seconds=43200"]);
}

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
async fn rate_below_an_open_ended_band_and_net_credits() {
    let tmp = tempfile::tempdir().unwrap();
    // Found in review: the open-ended top band used to subtract for quantities below its
    // start (50 tiered units cost 10.00 instead of 50.00).
    let input = "
id,sub,sku,day,qty,value
1,A,TIER,2026-10-01,50,
2,B,TIER,2026-10-01,-150,
3,A,VOL,2026-10-01,-20,
4,A,PKG,2026-10-01,-250,
5,A,PCT,2026-10-01,1,300.00
6,B,PCT,2026-10-01,1,-400.00
7,X,TIER,2026-10-02,10,
";
    let case = Case {
        input,
        schema: "
- { name: id, type: integer }
- { name: sub, type: string }
- { name: sku, type: string }
- { name: day, type: date }
- { name: qty, type: \"decimal(18,4)\" }
- { name: value, type: \"decimal(18,2)\" }",
        references: &[PLANS],
        stages: "
- { kind: filter, column: sub, not_equals: X }
- { kind: rate, price_list: plans, keys: [sku], group_by: [sub], quantity: qty, base_amount: value, date: day, output: amount, scale: 2 }
- { kind: sql, query: \"SELECT id, amount FROM input\" }",
        columns: "- { name: id, type: integer }\n- { name: amount, type: \"decimal(18,2)\" }",
    };
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(
        rows,
        sorted(&[
            // 50 units in band 1; band 2 (from 100, open-ended) adds nothing, nor its fee.
            "id=1, amount=50.00",
            // Net credits: tiered, volume and package charge nothing for them...
            "id=2, amount=0.00",
            "id=3, amount=0.00",
            "id=4, amount=0.00",
            // ...a percentage of 300 stays in the first band: 2% = 6.00...
            "id=5, amount=6.00",
            // ...and a refunded base is credited at the first band's 2%.
            "id=6, amount=-8.00",
        ])
    );
    // Rating reads its input more than once (groups, weights, lines): the counts must not.
    assert_eq!(s.rows_in, 7);
    assert_eq!(
        s.removed,
        vec![("filter-1".to_string(), "filter sub <> X".to_string(), 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn focus_columns_defaults_and_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let input = "
id,customer,sku,day,qty,amount,list_amount,currency
1,acme,VM-STD-2,2026-10-05,10,10.00,12.00,EUR
2,acme,VM-STD-2,2026-10-06,5,5.00,4.00,EUR
3,fjord,STORAGE-GB,2026-10-07,1,1.00,1.00,eur
4,fjord,STORAGE-GB,2026-10-08,-3,-3.00,-3.50,EUR
";
    let case = Case {
        input,
        schema: "
- { name: id, type: integer }
- { name: customer, type: string }
- { name: sku, type: string }
- { name: day, type: date }
- { name: qty, type: \"decimal(18,4)\" }
- { name: amount, type: \"decimal(18,2)\" }
- { name: list_amount, type: \"decimal(18,2)\" }
- { name: currency, type: string }",
        references: &[],
        stages: "
- kind: focus
  on_error: reject
  keep: [id]
  columns:
    BilledCost: amount
    ListCost: list_amount
    BillingCurrency: currency
    BillingAccountId: customer
    ChargePeriodStart: day
    SkuId: sku
    ConsumedQuantity: qty
    ConsumedUnit: { value: Hours }
    ServiceCategory: { value: Compute }
- kind: sql
  query: 'SELECT x_id, \"BilledCost\", \"ListCost\", \"ContractedCost\", \"BillingCurrency\", \"BillingPeriodStart\", \"ChargePeriodStart\", \"ChargePeriodEnd\", \"InvoiceIssuerName\", \"ProviderName\", \"ChargeCategory\", \"ConsumedUnit\", \"PricingQuantity\" FROM input'",
        columns: "
- { name: x_id, type: integer }
- { name: BilledCost, type: \"decimal(18,2)\" }
- { name: ListCost, type: \"decimal(18,2)\" }
- { name: ContractedCost, type: \"decimal(18,2)\" }
- { name: BillingCurrency, type: string }
- { name: BillingPeriodStart, type: timestamp }
- { name: ChargePeriodStart, type: timestamp }
- { name: ChargePeriodEnd, type: timestamp }
- { name: InvoiceIssuerName, type: string }
- { name: ProviderName, type: string }
- { name: ChargeCategory, type: string }
- { name: ConsumedUnit, type: string }
- { name: PricingQuantity, type: \"decimal(18,4)\" }",
    };
    let (s, rows, rejects) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    // The issuer is the stream's owner and the provider the chain's vendor (both `V`
    // here); costs default to BilledCost; a day's charge covers that day.
    assert_eq!(
        rows,
        sorted(&[
            "x_id=1, BilledCost=10.00, ListCost=12.00, ContractedCost=10.00, BillingCurrency=EUR, BillingPeriodStart=2026-10-01T00:00:00, ChargePeriodStart=2026-10-05T00:00:00, ChargePeriodEnd=2026-10-06T00:00:00, InvoiceIssuerName=V, ProviderName=V, ChargeCategory=Usage, ConsumedUnit=Hours, PricingQuantity=NULL",
            "x_id=4, BilledCost=-3.00, ListCost=-3.50, ContractedCost=-3.00, BillingCurrency=EUR, BillingPeriodStart=2026-10-01T00:00:00, ChargePeriodStart=2026-10-08T00:00:00, ChargePeriodEnd=2026-10-09T00:00:00, InvoiceIssuerName=V, ProviderName=V, ChargeCategory=Usage, ConsumedUnit=Hours, PricingQuantity=NULL",
        ])
    );
    assert_eq!(rejects.len(), 2, "{rejects:#?}");
    assert!(
        rejects
            .iter()
            .any(|r| r.contains("x_id=2") && r.contains("FOCUS: ListCost must be at least ContractedCost")),
        "{rejects:#?}"
    );
    assert!(
        rejects
            .iter()
            .any(|r| r.contains("x_id=3") && r.contains("FOCUS: BillingCurrency must be an ISO 4217 code")),
        "{rejects:#?}"
    );

    // A FOCUS mapping without the required columns is refused before any data is read.
    let case = Case {
        stages: "- { kind: focus, columns: { BilledCost: amount } }",
        columns: "- { name: BilledCost, type: \"decimal(18,2)\" }",
        ..case
    };
    let d = billflow::check(&engine(), &write_case(tmp.path(), &case))
        .await
        .expect_err("refused");
    let text = d.render();
    assert!(
        text.contains("FOCUS needs `BillingCurrency`") && text.contains("FOCUS needs `BillingAccountId`"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_quantity_aggregations_and_a_price_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    // Storage priced per region (a price matrix: SKU x region), per GB-hour.
    let matrix = (
        "matrix",
        "sku,region,model,unit_price\nGB,eu,per_unit,0.0010\nGB,us,per_unit,0.0008\nSEAT,eu,per_unit,10.00\nSEAT,us,per_unit,10.00\n",
        "- { name: sku, type: string }\n- { name: region, type: string }\n- { name: model, type: string }\n- { name: unit_price, type: \"decimal(18,4)\" }",
    );
    let input = "
id,sub,sku,region,day,qty,hours,user_name
1,A,GB,eu,2026-10-01,100,24,
2,A,GB,eu,2026-10-02,200,12,
3,A,GB,us,2026-10-01,100,24,
4,A,SEAT,eu,2026-10-01,1,,ana
5,A,SEAT,eu,2026-10-09,1,,bo
6,A,SEAT,eu,2026-10-20,1,,ana
";
    let schema = "
- { name: id, type: integer }
- { name: sub, type: string }
- { name: sku, type: string }
- { name: region, type: string }
- { name: day, type: date }
- { name: qty, type: \"decimal(18,4)\" }
- { name: hours, type: \"decimal(18,4)\" }
- { name: user_name, type: string }";
    let columns = "- { name: id, type: integer }\n- { name: amount, type: \"decimal(18,2)\" }";
    let stages = |extra: &str, filter: &str| {
        format!(
            "- {{ kind: filter, column: sku, equals: {filter} }}\n- {{ kind: rate, price_list: matrix, keys: [sku, region], group_by: [sub], quantity: {extra}, output: amount, scale: 2, order_by: [id] }}\n- {{ kind: sql, query: \"SELECT id, amount FROM input\" }}"
        )
    };
    let cases = [
        // GB-hours: (100 x 24 + 200 x 12) x 0.0010 = 4.80 in eu, shared 2400:2400; us:
        // 2400 x 0.0008 = 1.92.
        (
            stages("qty, aggregation: time_weighted, duration: hours", "GB"),
            vec!["id=1, amount=2.40", "id=2, amount=2.40", "id=3, amount=1.92"],
        ),
        // Distinct seat users in the month: ana and bo = 2 x 10.00, shared equally: thirds
        // of 6.6667 round to 6.67 (20.01), so the first line (by id) gives back the penny.
        (
            stages("user_name, aggregation: count_distinct", "SEAT"),
            vec!["id=4, amount=6.66", "id=5, amount=6.67", "id=6, amount=6.67"],
        ),
        // Peak storage: max(100, 200) x 0.0010 = 0.20 in eu; 100 x 0.0008 = 0.08 in us.
        (
            stages("qty, aggregation: max", "GB"),
            vec!["id=1, amount=0.10", "id=2, amount=0.10", "id=3, amount=0.08"],
        ),
        // The latest reading (by day): 200 in eu.
        (
            stages("qty, latest_by: day, aggregation: latest", "GB"),
            vec!["id=1, amount=0.10", "id=2, amount=0.10", "id=3, amount=0.08"],
        ),
        // Lines: 3 seat lines x 10.00.
        (
            stages("qty, aggregation: count", "SEAT"),
            vec!["id=4, amount=10.00", "id=5, amount=10.00", "id=6, amount=10.00"],
        ),
    ];
    for (stages, want) in cases {
        let refs = [matrix];
        let case = Case {
            input,
            schema,
            references: &refs,
            stages: &stages,
            columns,
        };
        std::fs::remove_dir_all(tmp.path().join("wh")).ok();
        let (s, rows, _) = run_case(tmp.path(), &case).await;
        assert_eq!(s.status, Status::Written, "{stages}: {:?}", s.error);
        assert_eq!(rows, sorted(&want), "{stages}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_minimum_commitment_adds_a_true_up_line() {
    let tmp = tempfile::tempdir().unwrap();
    let plans = (
        "commit_plans",
        "sku,model,unit_price,commitment\nDB,per_unit,1.00,50.00\n",
        "- { name: sku, type: string }\n- { name: model, type: string }\n- { name: unit_price, type: \"decimal(18,2)\" }\n- { name: commitment, type: \"decimal(18,2)\" }",
    );
    let refs = [plans];
    let case = Case {
        input: "id,sub,sku,qty\n1,A,DB,10\n2,A,DB,20\n3,B,DB,60\n",
        schema: "- { name: id, type: integer }\n- { name: sub, type: string }\n- { name: sku, type: string }\n- { name: qty, type: \"decimal(18,4)\" }",
        references: &refs,
        stages: "- { kind: rate, price_list: commit_plans, keys: [sku], group_by: [sub], quantity: qty, output: amount, scale: 2 }",
        columns: "
- { name: id, type: integer }
- { name: sub, type: string }
- { name: sku, type: string }
- { name: qty, type: \"decimal(18,4)\" }
- { name: amount, type: \"decimal(18,2)\" }
- { name: line_type, type: string }",
    };
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    // A used 30 of a 50.00 commitment: its lines are charged 30.00 and a true-up line
    // bills the 20.00 short; B used 60, above its commitment.
    assert_eq!(
        rows,
        sorted(&[
            "id=1, sub=A, sku=DB, qty=10.0000, amount=10.00, line_type=usage",
            "id=2, sub=A, sku=DB, qty=20.0000, amount=20.00, line_type=usage",
            "id=3, sub=B, sku=DB, qty=60.0000, amount=60.00, line_type=usage",
            "id=NULL, sub=A, sku=DB, qty=NULL, amount=20.00, line_type=true_up",
        ])
    );
    assert_eq!(s.control_totals["amount"], "110.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_near_the_decimal_limit_fail_loudly_instead_of_wrapping() {
    let tmp = tempfile::tempdir().unwrap();
    // 34 integer digits: converting it multiplies by a rate with 8 places, which no
    // Decimal128 can hold at 5 places. The stream must fail, never wrap or zero.
    let case = Case {
        input: "id,day,amount,cur\n1,2026-10-20,9999999999999999999999999999999999.0000,USD\n2,2026-10-20,1.0000,USD\n",
        schema: "- { name: id, type: integer }\n- { name: day, type: date }\n- { name: amount, type: \"decimal(38,4)\" }\n- { name: cur, type: string }",
        references: &[FX],
        stages: "
- { kind: convert_currency, amount: amount, from_column: cur, to: EUR, rates: fx, date: day, output: eur }
- { kind: sql, query: \"SELECT id, eur FROM input\" }",
        columns: "- { name: id, type: integer }\n- { name: eur, type: \"decimal(38,5)\" }",
    };
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Failed, "{rows:?}");
    let e = s.error.unwrap().to_string().to_lowercase();
    assert!(e.contains("overflow"), "{e}");
    // Within the limit the same conversion is exact: 10^33 x 0.91876543.
    let case = Case {
        input: "id,day,amount,cur\n1,2026-10-20,1000000000000000000000000000000.0000,USD\n",
        ..case
    };
    std::fs::remove_dir_all(tmp.path().join("wh")).ok();
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(rows, vec!["id=1, eur=918765430000000000000000000000.00000"]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_when_a_query_filters_right_after_the_input() {
    // Found while profiling: DataFusion merged a selective SQL WHERE into the input's
    // counting filter, evaluated the WHERE first and counted only the rows it kept.
    let tmp = tempfile::tempdir().unwrap();
    let mut input = String::from("id,org,cost\n");
    for i in 1..=200 {
        input.push_str(&format!("{i},{},1.0000\n", if i == 7 { "alpha-it" } else { "other" }));
    }
    let case = Case {
        input: &input,
        schema: COSTS_SCHEMA,
        references: &[],
        stages: "- { kind: sql, query: \"SELECT * FROM input WHERE org = 'alpha-it'\" }",
        columns: COSTS_SCHEMA,
    };
    let (s, rows, _) = run_case(tmp.path(), &case).await;
    assert_eq!(s.status, Status::Written, "{:?}", s.error);
    assert_eq!(rows, vec!["id=7, org=alpha-it, cost=1.0000"]);
    assert_eq!(s.rows_in, 200);
}

//! `for_each` streams: one stream for every organisation of a tier, run as one plan, with
//! one partition of the batch per organisation (its own rows and control totals). The
//! expected figures are worked out by hand in the comments.

use billflow::batches::read_manifest;
use billflow::execution::Status;

use crate::common::*;

const PIPELINE: &str = r#"
pipeline: fan-out
warehouse: warehouse
organizations:
  - { id: V, name: Vendor, tier: vendor, currency: USD }
  - { id: D1, name: Dist One, tier: distributor, upstream: V, currency: EUR }
  - { id: D2, name: Dist Two, tier: distributor, upstream: V, currency: USD }
  - { id: R1, name: Res One, tier: reseller, upstream: D1, currency: EUR }
  - { id: R2, name: Res Two, tier: reseller, upstream: D1, currency: EUR }
  - { id: R3, name: Res Three, tier: reseller, upstream: D2, currency: USD }
  - { id: R4, name: Res Four, tier: reseller, upstream: D2, currency: USD }
sources:
  usage:
    url: usage.csv
    schema:
      - { name: record_id, type: integer, nullable: false }
      - { name: reseller_id, type: string, nullable: false }
      - { name: distributor_id, type: string, nullable: false }
      - { name: amount, type: "decimal(18,4)", nullable: false }
references:
  terms:
    url: terms.csv
    schema:
      - { name: organization_id, type: string }
      - { name: markup_pct, type: "decimal(9,4)" }
streams:
  - id: vendor-usage
    kind: usage
    owner: V
    input: { source: usage }
    review: { policy: auto, max_rejected_percent: 100 }
    columns:
      - { name: record_id, type: integer, nullable: false }
      - { name: reseller_id, type: string, nullable: false }
      - { name: distributor_id, type: string, nullable: false }
      - { name: amount, type: "decimal(18,4)", nullable: false }
  - id: distributor-usage
    kind: billing
    for_each: { tier: distributor, column: distributor_id }
    input: { stream: vendor-usage }
    review: { policy: auto, max_rejected_percent: 100 }
    stages:
      - { name: markup, kind: markup, column: amount, output: price, rules: { reference: terms, keys: [{ column: distributor_id, reference_column: organization_id }], rate_column: markup_pct } }
    columns:
      - { name: record_id, type: integer, nullable: false }
      - { name: reseller_id, type: string, nullable: false }
      - { name: distributor_id, type: string, nullable: false }
      - { name: amount, type: "decimal(18,4)", nullable: false }
      - { name: price, type: "decimal(18,4)", nullable: false }
  - id: reseller-usage
    kind: billing
    for_each: { tier: reseller, column: reseller_id }
    input: { stream: distributor-usage }
    review: { policy: auto, max_rejected_percent: 100 }
    stages:
      - { name: markup, kind: markup, column: price, output: reseller_price, rules: { reference: terms, keys: [{ column: reseller_id, reference_column: organization_id }], rate_column: markup_pct } }
    columns:
      - { name: record_id, type: integer, nullable: false }
      - { name: reseller_id, type: string, nullable: false }
      - { name: distributor_id, type: string, output: false }
      - { name: amount, type: "decimal(18,4)", output: false }
      - { name: price, type: "decimal(18,4)", nullable: false }
      - { name: reseller_price, type: "decimal(18,4)", nullable: false }
  - id: d1-report
    kind: billing
    owner: D1
    input: { stream: distributor-usage }
    review: { policy: auto, max_rejected_percent: 100 }
    columns:
      - { name: record_id, type: integer, nullable: false }
      - { name: reseller_id, type: string, output: false }
      - { name: distributor_id, type: string, output: false }
      - { name: amount, type: "decimal(18,4)", output: false }
      - { name: price, type: "decimal(18,4)", nullable: false }
"#;

// Row 5 names distributor D9, which is no organisation: the distributor stream refuses it.
const USAGE: &str = "record_id,reseller_id,distributor_id,amount
1,R1,D1,10.0000
2,R2,D1,20.0000
3,R3,D2,5.5000
4,R3,D2,4.5000
5,R9,D9,1.0000
";

const TERMS: &str = "organization_id,markup_pct
D1,0.1000
D2,0.2000
D9,0.0000
R1,0.0500
R2,0.1000
R3,0.0000
";

fn scenario(pipeline: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("usage.csv"), USAGE).unwrap();
    std::fs::write(tmp.path().join("terms.csv"), TERMS).unwrap();
    let path = tmp.path().join("pipeline.yaml");
    std::fs::write(&path, pipeline).unwrap();
    (tmp, path)
}

fn totals(m: &billflow::batches::Manifest, org: &str) -> (u64, Vec<(String, String)>) {
    let part = m
        .organizations
        .get(org)
        .unwrap_or_else(|| panic!("no part for {org}: {:?}", m.organizations));
    (
        part.rows,
        part.control_totals
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_organisation_gets_its_partition_with_its_own_totals() {
    let (tmp, pipeline) = scenario(PIPELINE);
    // explain shows the tier-wide streams under their tier, and where their batches go.
    let plan = billflow::check(&engine(), &pipeline)
        .await
        .unwrap_or_else(|d| panic!("{}", d.render()));
    let tree = billflow::plan::explain::tree(&plan);
    assert!(tree.contains("  each distributor (2 organisations)\n    stream distributor-usage [billing] <- stream vendor-usage, a partition per `distributor_id`"), "{tree}");
    assert!(
        tree.contains("=> distributor/_each/distributor-usage/<batch>/data/<organisation>.part-*:"),
        "{tree}"
    );
    assert!(tree.contains("  each reseller (4 organisations)"), "{tree}");
    let wh = tmp.path().join("wh");
    let report = run(&pipeline, "2026-10", &wh).await;
    assert!(report.ok(), "{report:?}");

    // Distributors: D1 = rows 1, 2: price 10 x 1.1 + 20 x 1.1 = 11 + 22 = 33;
    // D2 = rows 3, 4: 5.5 x 1.2 + 4.5 x 1.2 = 6.6 + 5.4 = 12. Row 5 (D9) is refused.
    let d = report.stream("distributor-usage").unwrap();
    assert_eq!(d.status, Status::Written);
    assert_eq!((d.rows_in, d.rows_out, d.rows_rejected), (5, 4, 1));
    let dir = d.batch_dir.clone().unwrap();
    assert!(
        dir.starts_with(wh.join("distributor/_each/distributor-usage")),
        "{}",
        dir.display()
    );
    let m = read_manifest(&dir).unwrap();
    assert_eq!(
        totals(&m, "D1"),
        (2, pairs(&[("amount", "30.0000"), ("price", "33.0000")]))
    );
    assert_eq!(
        totals(&m, "D2"),
        (2, pairs(&[("amount", "10.0000"), ("price", "12.0000")]))
    );
    assert_eq!(m.control_totals.get("price").map(String::as_str), Some("45.0000"));
    let (_, d1_rows) = parquet_rows(&dir.join("data/D1.part-*.parquet")).await;
    assert_eq!(d1_rows.len(), 2, "{d1_rows:#?}");
    assert!(d1_rows.iter().all(|r| r.contains("distributor_id=D1")), "{d1_rows:#?}");
    let (_, refused) = parquet_rows(&dir.join("rejects/organization.parquet")).await;
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(
        refused[0].contains("record_id=5")
            && refused[0].contains("`distributor_id` `D9` is not an organisation of tier `distributor`"),
        "{refused:#?}"
    );

    // Resellers: R1 = 11 x 1.05 = 11.55; R2 = 22 x 1.1 = 24.2; R3 = 6.6 + 5.4 = 12 at 0%;
    // R4 has no rows and is listed with 0.
    let r = report.stream("reseller-usage").unwrap();
    assert_eq!((r.rows_in, r.rows_out, r.rows_rejected), (4, 4, 0));
    let m = read_manifest(r.batch_dir.as_ref().unwrap()).unwrap();
    assert_eq!(
        totals(&m, "R1"),
        (1, pairs(&[("price", "11.0000"), ("reseller_price", "11.5500")]))
    );
    assert_eq!(
        totals(&m, "R2"),
        (1, pairs(&[("price", "22.0000"), ("reseller_price", "24.2000")]))
    );
    assert_eq!(
        totals(&m, "R3"),
        (2, pairs(&[("price", "12.0000"), ("reseller_price", "12.0000")]))
    );
    assert_eq!(totals(&m, "R4"), (0, vec![]));
    assert_eq!(m.organizations.len(), 4);

    // Each organisation's batch was created, accepted and published (`review: auto`) by
    // one entry of its log: one file, not one per event (2,000 resellers made 6,000),
    // and no folder (2,000 folders cost as much as the files).
    let log_files: Vec<String> = std::fs::read_dir(wh.join("_log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for b in m.batches() {
        let entries: Vec<&String> = log_files.iter().filter(|n| n.starts_with(&b.batch_id)).collect();
        assert_eq!(
            entries,
            [&format!("{}.00000001.json", b.batch_id)],
            "{}",
            b.organization
        );
        let log = billflow::batches::lifecycle::Log::local(&wh).unwrap();
        let history = log.history(&b.batch_id).await.unwrap();
        let actions: Vec<&str> = history.iter().map(|e| e.action.name()).collect();
        assert_eq!(actions, ["create", "accept", "publish"], "{}", b.organization);
    }

    // One distributor's own stream reads its own partition of the distributors' batch.
    let own = report.stream("d1-report").unwrap();
    assert_eq!((own.rows_in, own.rows_out), (2, 2));
    assert_eq!(own.control_totals.get("price").map(String::as_str), Some("33.0000"));

    // The same inputs again: the same batches, reused.
    let again = run(&pipeline, "2026-10", &wh).await;
    for s in ["distributor-usage", "reseller-usage", "d1-report"] {
        let a = again.stream(s).unwrap();
        assert_eq!(a.status, Status::Reused, "{s}");
        assert_eq!(a.batch_id, report.stream(s).unwrap().batch_id, "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_for_each_stream_has_no_single_owner_to_template() {
    let yaml = PIPELINE.replace(
        "      - { name: markup, kind: markup, column: amount,",
        "      - { name: mine, kind: filter, column: distributor_id, equals: \"{{ owner }}\" }\n      - { name: markup, kind: markup, column: amount,",
    );
    assert_ne!(yaml, PIPELINE);
    let (tmp, pipeline) = scenario(&yaml);
    let problems = match billflow::check(&engine(), &pipeline).await {
        Ok(_) => {
            let report = run(&pipeline, "2026-10", &tmp.path().join("wh")).await;
            let d = report.stream("distributor-usage").unwrap();
            format!("{:?}", d.error)
        }
        Err(d) => d.list.iter().map(|x| x.message.clone()).collect::<Vec<_>>().join("\n"),
    };
    assert!(
        problems.contains("`{{ owner }}` has no single value in a `for_each` stream"),
        "{problems}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_names_a_tier_and_a_published_string_column() {
    let yaml = PIPELINE
        .replace(
            "for_each: { tier: distributor, column: distributor_id }",
            "for_each: { tier: distributer, column: distributor_id }",
        )
        .replace(
            "for_each: { tier: reseller, column: reseller_id }",
            "for_each: { tier: reseller, column: reseller }",
        );
    let (_tmp, pipeline) = scenario(&yaml);
    let problems = match billflow::check(&engine(), &pipeline).await {
        Ok(_) => panic!("expected the pipeline to be rejected"),
        Err(d) => d
            .list
            .iter()
            .map(|x| format!("{} / {}", x.message, x.hint.clone().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    assert!(
        problems.contains("runs for each organisation of tier `distributer`, but no organisation has that tier"),
        "{problems}"
    );
    assert!(problems.contains("did you mean `distributor`"), "{problems}");
    assert!(
        problems.contains("splits its rows by column `reseller`, which is not one of its columns"),
        "{problems}"
    );
    assert!(problems.contains("did you mean `reseller_id`"), "{problems}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organisations_rows_land_in_one_file_however_many_partitions_read_them() {
    // The distributors' stream reads its rows as two partitions (a union of the odd and
    // the even records), each with rows of both distributors. Each distributor's rows must
    // still be written by one writer, as one file (it was one file per partition).
    let yaml = PIPELINE.replace(
        "    stages:\n      - { name: markup, kind: markup, column: amount,",
        "    stages:\n      - { name: halves, kind: sql, query: \"SELECT * FROM input WHERE record_id % 2 = 0 UNION ALL SELECT * FROM input WHERE record_id % 2 = 1\" }\n      - { name: markup, kind: markup, column: amount,",
    );
    assert_ne!(yaml, PIPELINE);
    let (tmp, pipeline) = scenario(&yaml);
    let wh = tmp.path().join("wh");
    let report = run(&pipeline, "2026-10", &wh).await;
    assert!(report.ok(), "{report:?}");
    let files = |dir: &std::path::Path, org: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{org}.part-")) && n.ends_with(".parquet"))
            .collect();
        v.sort();
        v
    };
    let d = report.stream("distributor-usage").unwrap();
    let dir = d.batch_dir.clone().unwrap();
    for org in ["D1", "D2"] {
        assert_eq!(files(&dir.join("data"), org).len(), 1, "{org}");
    }
    let m = read_manifest(&dir).unwrap();
    assert_eq!(
        totals(&m, "D1"),
        (2, pairs(&[("amount", "30.0000"), ("price", "33.0000")]))
    );
}

/// The fan-out pipeline with the distributors' stream reviewed by hand.
fn manual_distributors() -> String {
    let yaml = PIPELINE.replace(
        "    input: { stream: vendor-usage }\n    review: { policy: auto, max_rejected_percent: 100 }",
        "    input: { stream: vendor-usage }\n    review: manual",
    );
    assert_ne!(yaml, PIPELINE);
    yaml
}

/// Issue 16: a `for_each` stream commits one batch per organisation, each with its own
/// totals, status and history: D1's batch is published while D2's is still under
/// review, and the tier below builds batches only for the resellers of D1. When D2
/// publishes, the next run adds D2's resellers and leaves D1's resellers' batches as
/// they were (same ids, same history: nothing they read changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_organisations_batch_is_reviewed_and_published_on_its_own() {
    use billflow::batches::lifecycle::{Action, Status as Lifecycle};
    use billflow::batches::review::{Filter, Reviewer};
    let (tmp, pipeline) = scenario(&manual_distributors());
    let wh = tmp.path().join("wh");
    let first = run(&pipeline, "2026-10", &wh).await;
    let d = first.stream("distributor-usage").unwrap();
    assert_eq!((d.status.clone(), d.organization_batches), (Status::Written, 2));
    assert_eq!(first.stream("reseller-usage").unwrap().status, Status::Waiting);

    let admin = Reviewer::open(&wh, None).unwrap();
    let of = |stream: &'static str| {
        let admin = &admin;
        async move {
            let filter = Filter {
                stream: Some(stream.into()),
                ..Filter::default()
            };
            admin.list(&filter).await.unwrap()
        }
    };
    let parts = of("distributor-usage").await;
    let seen: Vec<(&str, u64, &str, Lifecycle)> = parts
        .iter()
        .map(|e| {
            let m = &e.manifest;
            (
                m.organization.as_str(),
                m.rows,
                m.control_totals["price"].as_str(),
                e.status,
            )
        })
        .collect();
    // D1: 11 + 22 = 33; D2: 6.6 + 5.4 = 12 (as in the test above).
    assert_eq!(
        seen,
        [
            ("D1", 2, "33.0000", Lifecycle::Ready),
            ("D2", 2, "12.0000", Lifecycle::Ready)
        ]
    );
    let (d1_batch, d2_batch) = (parts[0].id().to_string(), parts[1].id().to_string());
    assert_ne!(d1_batch, d2_batch);
    // Each batch's files are its organisation's only.
    assert!(
        parts[0].data_files().iter().all(|f| f.contains("/data/D1.part-")),
        "{:?}",
        parts[0].data_files()
    );

    let d1 = Reviewer::open(&wh, Some("D1".into())).unwrap();
    let d2 = Reviewer::open(&wh, Some("D2".into())).unwrap();
    d1.act(&d1_batch, Action::Accept, Some("checked")).await.unwrap();
    d1.act(&d1_batch, Action::Publish, None).await.unwrap();
    assert!(d2.find(&d1_batch).await.is_err(), "D1's batch is not D2's to see");
    assert_eq!(d2.find(&d2_batch).await.unwrap().status, Lifecycle::Ready);
    let actions = |id: &str| {
        let id = id.to_string();
        let admin = &admin;
        async move {
            let (_, history) = admin.history(&id).await.unwrap();
            history.iter().map(|e| e.action.name()).collect::<Vec<_>>()
        }
    };
    assert_eq!(actions(&d1_batch).await, ["create", "accept", "publish"]);
    assert_eq!(actions(&d2_batch).await, ["create"]);

    // The resellers of D1 run; those of D2 wait for D2's batch.
    let second = run(&pipeline, "2026-10", &wh).await;
    let r = second.stream("reseller-usage").unwrap();
    assert_eq!(
        (r.status.clone(), r.organization_batches),
        (Status::Written, 2),
        "{r:?}"
    );
    assert!(r.notes.iter().any(|n| n.contains("below D2")), "{:?}", r.notes);
    let resellers = of("reseller-usage").await;
    let orgs: Vec<&str> = resellers.iter().map(|e| e.manifest.organization.as_str()).collect();
    assert_eq!(orgs, ["R1", "R2"]);
    // R1 = 11 x 1.05 = 11.55, R2 = 22 x 1.1 = 24.2: each read only D1's batch.
    assert_eq!(resellers[0].manifest.control_totals["reseller_price"], "11.5500");
    assert_eq!(resellers[1].manifest.control_totals["reseller_price"], "24.2000");
    for e in &resellers {
        let read: Vec<&str> = e
            .manifest
            .inputs
            .iter()
            .filter(|i| i.kind == "stream")
            .filter_map(|i| i.batch_id.as_deref())
            .collect();
        assert_eq!(read, [d1_batch.as_str()], "{}", e.manifest.organization);
    }
    let first_ids: Vec<String> = resellers.iter().map(|e| e.id().to_string()).collect();

    // D2 publishes (in bulk: every batch of the stream and period it may publish).
    let filter = Filter {
        stream: Some("distributor-usage".into()),
        period: Some("2026-10".into()),
        ..Filter::default()
    };
    assert_eq!(d2.act_on_all(&filter, Action::Accept, None).await.unwrap().len(), 1);
    assert_eq!(d2.act_on_all(&filter, Action::Publish, None).await.unwrap().len(), 1);
    let third = run(&pipeline, "2026-10", &wh).await;
    assert!(third.ok(), "{third:?}");
    let resellers = of("reseller-usage").await;
    let now: Vec<(&str, &str, usize, Lifecycle)> = resellers
        .iter()
        .map(|e| (e.manifest.organization.as_str(), e.id(), e.version, e.status))
        .collect();
    assert_eq!(
        now,
        [
            ("R1", first_ids[0].as_str(), 1, Lifecycle::Published),
            ("R2", first_ids[1].as_str(), 1, Lifecycle::Published),
            ("R3", now[2].1, 1, Lifecycle::Published),
            ("R4", now[3].1, 1, Lifecycle::Published),
        ]
    );
    assert_eq!(actions(&first_ids[0]).await, ["create", "accept", "publish"]);
    // R3 = 12 at 0%; R4 has no rows.
    assert_eq!(resellers[2].manifest.control_totals["reseller_price"], "12.0000");
    assert_eq!(resellers[3].manifest.rows, 0);
    let report = admin.reconcile("2026-10").await.unwrap();
    assert!(report.clean(), "{:?}", report.findings);
    // Published: the vendor's batch, 2 distributors', 4 resellers' and D1's report.
    assert_eq!(report.published, 8);
}

/// Issue 16: `batch publish --stream S --period P` publishes every organisation's batch
/// of a `for_each` stream in one command, each with its own event.
#[test]
fn one_command_publishes_every_organisations_batch_of_a_stream() {
    let (tmp, pipeline) = scenario(&manual_distributors());
    let wh = tmp.path().join("wh");
    let bin = env!("CARGO_BIN_EXE_billflow");
    let billflow = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("--warehouse")
            .arg(&wh)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, _) = billflow(&["run", "--quiet", "--period", "2026-10", pipeline.to_str().unwrap()]);
    assert_eq!(code, Some(1), "the resellers wait");
    let select = ["--stream", "distributor-usage", "--period", "2026-10"];
    let (code, out) = billflow(&[&["batch", "accept"][..], &select].concat());
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = billflow(&[&["batch", "publish"][..], &select].concat());
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = billflow(&["batch", "list", "--stream", "distributor-usage", "--format", "csv"]);
    assert_eq!(code, Some(0), "{out}");
    let published = out.lines().filter(|l| l.contains(",published,")).count();
    assert_eq!(published, 2, "{out}");
    let (code, out) = billflow(&["run", "--quiet", "--period", "2026-10", pipeline.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
}

/// Issue 16: `review: auto` publishes a batch only when what it read of the batch above
/// adds up to what that batch published. Here the vendor's published file lost a row
/// after publishing (a hand edit): each distributor's batch is written but left for
/// review, the run says why, and the resellers wait.
#[test]
fn auto_review_leaves_a_batch_whose_input_does_not_add_up_to_what_was_published() {
    use billflow::batches::lifecycle::Status as Lifecycle;
    use billflow::batches::review::{Filter, Reviewer};
    let (tmp, pipeline) = scenario(PIPELINE);
    let wh = tmp.path().join("wh");
    let billflow = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_billflow"))
            .args(args)
            .arg("--warehouse")
            .arg(&wh)
            .arg(&pipeline)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = billflow(&["run", "--quiet", "--period", "2026-10", "--until-tier", "vendor"]);
    assert_eq!(code, Some(0), "{out}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = Reviewer::open(&wh, None).unwrap();
    let list = |stream: &str| {
        let filter = Filter {
            stream: Some(stream.into()),
            ..Filter::default()
        };
        rt.block_on(admin.list(&filter)).unwrap()
    };
    let vendor = list("vendor-usage").remove(0);
    assert_eq!(vendor.status, Lifecycle::Published);
    for f in vendor.data_files() {
        drop_first_row(&f);
    }
    let (code, out) = billflow(&["run", "--quiet", "--period", "2026-10"]);
    assert_eq!(code, Some(1), "the resellers wait: {out}");
    // 5 rows published, 5 - 1 (the first row of each file) read.
    assert!(
        out.contains("review: auto: left for review: ")
            && out.contains(&format!("of batch {} it read rows ", vendor.id())),
        "{out}"
    );
    let parts = list("distributor-usage");
    assert_eq!(parts.len(), 2);
    assert!(parts.iter().all(|e| e.status == Lifecycle::Ready), "{parts:?}");
    let report = rt.block_on(admin.reconcile("2026-10")).unwrap();
    assert!(!report.clean());
}

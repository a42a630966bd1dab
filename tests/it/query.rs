//! `billflow query`: SQL over the committed batches, with no registration. The expected
//! figures are the sample's golden control totals (tests/golden/cloud-reseller, computed
//! independently by compute_expected.py) or worked out by hand in the comments.

use std::process::Command;

use billflow::batches::review::{Filter, Reviewer};
use billflow::query::output::{self, Format};
use billflow::query::{QueryError, Warehouse};

use crate::common::*;

fn warehouse(wh: &std::path::Path, org: Option<&str>) -> Warehouse {
    let e = engine();
    Warehouse::open(wh, org.map(String::from), e.runtime(), e.partitions())
}

/// The result as CSV lines (decimals as exact text).
async fn csv(w: &Warehouse, sql: &str) -> Vec<String> {
    let answer = w.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = Vec::new();
    output::write(&answer, Format::Csv, &mut out).unwrap();
    String::from_utf8(out).unwrap().lines().map(String::from).collect()
}

/// The sample run (every tier auto-published) for 2026-09 and 2026-10.
async fn sample_warehouse() -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, pipeline) = sample_copy();
    let wh = tmp.path().join("wh");
    for period in ["2026-09", "2026-10"] {
        let report = run(&pipeline, period, &wh).await;
        assert!(report.ok(), "{period}: {report:?}");
    }
    (tmp, wh)
}

/// Issue 15: a schema per organisation, a table per stream with all its batches and
/// their `_batch_id`, `_period`, `_status`; the catalog tables; nothing to register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_batch_is_queryable_with_no_registration() {
    let (_tmp, wh) = sample_warehouse().await;
    let w = warehouse(&wh, None);
    // Alpha IT's invoice lines for October: 391.19 (golden).
    assert_eq!(
        csv(
            &w,
            "SELECT sum(amount) AS amount, count(*) AS n FROM alpha_it.alpha_it_invoice_lines WHERE _period = '2026-10'"
        )
        .await,
        ["amount,n", "391.19,10"]
    );
    // Two periods of the vendor's usage, each its own batch, both published.
    assert_eq!(
        csv(&w, "SELECT _period, _status, count(DISTINCT _batch_id) AS batches FROM nimbus.nimbus_rated_usage GROUP BY 1, 2 ORDER BY 1").await,
        ["_period,_status,batches", "2026-09,published,1", "2026-10,published,1"]
    );
    // The catalog: 10 streams x 2 periods, each created, accepted and published.
    let admin = Reviewer::open(&wh, None).unwrap();
    let all = admin.list(&Filter::default()).await.unwrap();
    assert_eq!(
        csv(&w, "SELECT count(*) AS n FROM billflow.batches").await,
        ["n".to_string(), all.len().to_string()]
    );
    assert_eq!(
        csv(
            &w,
            "SELECT action, count(*) AS n FROM billflow.events GROUP BY action ORDER BY action"
        )
        .await,
        [
            "action,n".to_string(),
            format!("accept,{}", all.len()),
            format!("create,{}", all.len()),
            format!("publish,{}", all.len())
        ]
    );
    let id = &all
        .iter()
        .find(|e| e.manifest.stream == "eurodist-usage" && e.manifest.period.label == "2026-10")
        .unwrap()
        .manifest
        .batch_id;
    assert_eq!(
        csv(&w, &format!("SELECT stream, organization, tier, kind, period, status, version, rows, rejected, control_totals, published IS NOT NULL AS published, table_name FROM billflow.batches WHERE id = '{id}'")).await,
        [
            "stream,organization,tier,kind,period,status,version,rows,rejected,control_totals,published,table_name",
            r#"eurodist-usage,eurodist,distributor,billing,2026-10,published,1,42,0,"{""cost"":""582.2715"",""cost_usd"":""632.2954"",""price"":""652.1442"",""quantity"":""7046.726384""}",true,eurodist.eurodist_usage"#
        ]
    );
    assert_eq!(
        csv(&w, "SELECT table_name, batches, first_period, last_period FROM billflow.streams WHERE stream = 'nimbus-rated-usage'").await,
        ["table_name,batches,first_period,last_period", "nimbus.nimbus_rated_usage,2,2026-09,2026-10"]
    );
}

/// Issue 15: a filter on the period (or the batch) picks the files before anything is
/// read: the plan scans only that period's batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_on_one_period_reads_only_that_periods_files() {
    let (_tmp, wh) = sample_warehouse().await;
    let w = warehouse(&wh, None);
    let admin = Reviewer::open(&wh, None).unwrap();
    let filter = Filter {
        stream: Some("nimbus-rated-usage".into()),
        ..Filter::default()
    };
    let batches = admin.list(&filter).await.unwrap();
    let (sept, oct) = (&batches[0], &batches[1]);
    assert_eq!(
        (sept.manifest.period.label.as_str(), oct.manifest.period.label.as_str()),
        ("2026-09", "2026-10")
    );
    let plan = csv(
        &w,
        "EXPLAIN ANALYZE SELECT sum(cost_usd) FROM nimbus.nimbus_rated_usage WHERE _period = '2026-09'",
    )
    .await
    .join("\n");
    assert!(plan.contains(sept.id()), "{plan}");
    assert!(!plan.contains(oct.id()), "{plan}");
    // And the sum is September's alone: 720 h x 0.096 = 69.1200, 250.5 GB x 0.0125 =
    // 3.13125 -> 3.1312 (half even, 4 places), 88.123 GB x 0.087 = 7.666701 -> 7.6667:
    // 69.1200 + 3.1312 + 7.6667 = 79.9179.
    assert_eq!(
        csv(
            &w,
            "SELECT sum(cost_usd) AS s FROM nimbus.nimbus_rated_usage WHERE _period = '2026-09'"
        )
        .await,
        ["s", "79.9179"]
    );
    let one = csv(
        &w,
        &format!(
            "EXPLAIN SELECT * FROM nimbus.nimbus_rated_usage WHERE _batch_id = '{}'",
            oct.id()
        ),
    )
    .await
    .join("\n");
    assert!(one.contains(oct.id()) && !one.contains(sept.id()), "{one}");
}

/// Issue 15: voided (and superseded) data is not in a table unless asked for by
/// `_status`; acting as an organisation, another organisation's table does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voided_batches_are_hidden_unless_asked_for_and_organisations_see_their_own() {
    let (_tmp, wh) = sample_warehouse().await;
    void_batch(&wh, "nimbus-rated-usage", "2026-09").await;
    let w = warehouse(&wh, None);
    assert_eq!(
        csv(&w, "SELECT DISTINCT _period FROM nimbus.nimbus_rated_usage").await,
        ["_period", "2026-10"]
    );
    assert_eq!(
        csv(
            &w,
            "SELECT count(*) AS n FROM nimbus.nimbus_rated_usage WHERE _status = 'voided'"
        )
        .await,
        ["n", "3"]
    );

    let euro = warehouse(&wh, Some("eurodist"));
    // Published to it: the vendor's usage; its own: its usage.
    assert_eq!(
        csv(
            &euro,
            "SELECT sum(price) AS price FROM eurodist.eurodist_usage WHERE _period = '2026-10'"
        )
        .await,
        ["price", "652.1442"]
    );
    assert_eq!(
        csv(
            &euro,
            "SELECT count(*) AS n FROM nimbus.nimbus_rated_usage WHERE _period = '2026-10'"
        )
        .await,
        ["n", "57"]
    );
    let e = euro.query("SELECT * FROM britdist.britdist_usage").await.err().unwrap();
    assert!(matches!(e, QueryError::UnknownTable { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with("no table `britdist.britdist_usage`; tables (closest first): eurodist.eurodist_usage"),
        "{text}"
    );
    let (_, listed) = text.split_once("closest first): ").unwrap();
    assert!(!listed.contains("britdist"), "{text}");
    let tables = csv(
        &euro,
        "SELECT count(*) AS n FROM billflow.batches WHERE organization = 'britdist'",
    )
    .await;
    assert_eq!(tables, ["n", "0"]);
}

/// Issue 15: only reading: anything that defines, changes or writes is refused before it
/// runs; a syntax error shows where; a mistyped table names the closest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_and_mistakes_are_shown_where_they_are() {
    let (_tmp, wh) = sample_warehouse().await;
    let w = warehouse(&wh, None);
    let out = wh.join("stolen.csv");
    for sql in [
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        format!("COPY (SELECT 1) TO '{}'", out.display()),
        "CREATE TABLE t AS SELECT 1".to_string(),
        "INSERT INTO nimbus.nimbus_rated_usage SELECT * FROM nimbus.nimbus_rated_usage".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
        "DROP TABLE nimbus.nimbus_rated_usage".to_string(),
    ] {
        let e = w.query(&sql).await.err().unwrap_or_else(|| panic!("{sql} ran"));
        assert!(matches!(e, QueryError::ReadOnly { .. }), "{sql}: {e}");
        assert!(e.to_string().starts_with("only reading is allowed here: "), "{e}");
    }
    assert!(!out.exists());

    let e = w
        .query("SELECT sku,\n  count(*) FORM nimbus.nimbus_rated_usage")
        .await
        .err()
        .unwrap();
    let text = e.to_string();
    assert!(text.starts_with("syntax error: "), "{text}");
    // The caret sits under `nimbus` on line 2 (the parser stops at the word after FORM).
    assert!(
        text.ends_with("\n    count(*) FORM nimbus.nimbus_rated_usage\n                  ^"),
        "{text:?}"
    );

    let e = w.query("SELECT * FROM nimbus.nimbus_rated_usge").await.err().unwrap();
    assert!(
        e.to_string()
            .starts_with("no table `nimbus.nimbus_rated_usge`; tables (closest first): nimbus.nimbus_rated_usage, "),
        "{e}"
    );
}

/// Issue 15: the command: one statement in each output format, to a file or the
/// terminal, and the shell reading statements over several lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_writes_each_format_and_the_shell_reads_statements_and_meta_commands() {
    let (tmp, wh) = sample_warehouse().await;
    let bin = env!("CARGO_BIN_EXE_billflow");
    let query = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut child = Command::new(bin)
            .arg("query")
            .args(args)
            // Relative to the working directory, as a user types it.
            .current_dir(tmp.path())
            .arg("--warehouse")
            .arg(wh.strip_prefix(tmp.path()).unwrap())
            .env("HOME", tmp.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let sql = "SELECT customer_id, sum(amount) AS amount FROM alpha_it.alpha_it_invoice_lines WHERE _period = '2026-10' GROUP BY 1 ORDER BY 1";
    let (code, csv_out, err) = query(&[sql, "--format", "csv"], None);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = csv_out.lines().collect();
    assert_eq!(lines[0], "customer_id,amount");
    let (_, json_out, _) = query(&[sql, "--format", "json"], None);
    let first: serde_json::Value = serde_json::from_str(json_out.lines().next().unwrap()).unwrap();
    assert_eq!(first["customer_id"].as_str(), lines[1].split(',').next(), "{json_out}");
    let (_, table, _) = query(&[sql], None);
    assert!(
        table.contains("| customer_id ") && table.ends_with(&format!("({} rows)\n", lines.len() - 1)),
        "{table}"
    );
    let file = tmp.path().join("out.parquet");
    let (code, _, err) = query(&[sql, "--format", "parquet", "--output", file.to_str().unwrap()], None);
    assert_eq!(code, Some(0), "{err}");
    let (_, rows) = parquet_rows(&file).await;
    assert_eq!(rows.len(), lines.len() - 1);
    // A bad statement: exit 1 and the reason.
    let (code, _, err) = query(&["SELECT * FROM nope.nothing"], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("no table `nope.nothing`"), "{err}");

    // A file of SQL that starts with a comment, and a meta command, run once.
    let file = tmp.path().join("q.sql");
    std::fs::write(&file, "-- customers billed in October\nSELECT count(DISTINCT customer_id) AS n\nFROM alpha_it.alpha_it_invoice_lines WHERE _period = '2026-10';\n").unwrap();
    let (code, out, err) = query(&["--file", file.to_str().unwrap(), "--format", "csv"], None);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), format!("n\n{}\n", lines.len() - 1).as_str()),
        "{err}"
    );
    let (code, out, err) = query(&["\\d billflow.streams", "--format", "csv"], None);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("column_name,data_type,is_nullable\ntable_name,Utf8,"),
        "{out}"
    );

    // The shell: a statement over two lines, an error it survives, \d, \d NAME, \q.
    let script = "SELECT 1 +\n  1 AS two;\nSELECT * FROM nope.nothing;\n\\d\n\\d billflow.streams\nSELECT 'still here' AS s;\n\\q\nSELECT 'after quit';\n";
    let (code, out, err) = query(&[], Some(script));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("| two |") && out.contains("| 2   |"), "{out}");
    assert!(err.contains("error: no table `nope.nothing`"), "{err}");
    assert!(
        out.contains("| alpha_it ") && out.contains("| alpha_it_invoice_lines "),
        "{out}"
    );
    assert!(out.contains("| first_period "), "\\d NAME lists the columns: {out}");
    assert!(out.contains("still here") && !out.contains("after quit"), "{out}");
}

/// Issue 15: the example analyses in queries/ run against the sample and give the golden
/// figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_analyses_give_the_golden_figures() {
    let (_tmp, wh) = sample_warehouse().await;
    let w = warehouse(&wh, None);
    let analysis =
        |name: &str| std::fs::read_to_string(repo().join("queries/cloud-reseller/analyses").join(name)).unwrap();

    // Margin: EuroDist 652.1442 - 582.2715 = 69.8727 EUR; BritDist 332.9401 - 304.0549 =
    // 28.8852 GBP (golden totals of October).
    let margin = csv(&w, &analysis("margin_per_distributor.sql")).await;
    assert!(
        margin.contains(&"britdist,2026-10,GBP,304.0549,332.9401,28.8852".to_string()),
        "{margin:?}"
    );
    assert!(
        margin.contains(&"eurodist,2026-10,EUR,582.2715,652.1442,69.8727".to_string()),
        "{margin:?}"
    );

    // Month over month: September 79.9179 (worked out in the test above), October
    // 1017.6027: change 1017.6027 - 79.9179 = 937.6848.
    assert_eq!(
        csv(&w, &analysis("month_over_month.sql")).await,
        [
            "period,cost_usd,previous_cost_usd,change_usd",
            "2026-09,79.9179,,",
            "2026-10,1017.6027,79.9179,937.6848"
        ]
    );

    // Reconciled: October's vendor cost per distributor is what each distributor's batch
    // carries: 632.2954 + 385.3073 = 1017.6027.
    let rec = csv(&w, &analysis("vendor_reconciled_with_tiers.sql")).await;
    assert!(
        rec.contains(&"2026-10,britdist,385.3073,385.3073,0.0000".to_string()),
        "{rec:?}"
    );
    assert!(
        rec.contains(&"2026-10,eurodist,632.2954,632.2954,0.0000".to_string()),
        "{rec:?}"
    );
    assert!(rec.iter().skip(1).all(|l| l.ends_with(",0.0000")), "{rec:?}");

    // Revenue by product adds up, per organisation, to October's golden totals: the
    // distributors' price, the resellers' amount (in cents here: 4 places).
    let revenue = csv(&w, &analysis("revenue_by_tier_and_product.sql")).await;
    assert_eq!(revenue[0], "tier,organization,period,currency,sku,revenue");
    let october = |org: &str| -> i128 {
        revenue
            .iter()
            .skip(1)
            .filter(|l| l.split(',').nth(1) == Some(org) && l.split(',').nth(2) == Some("2026-10"))
            .map(|l| {
                let v = l.rsplit(',').next().unwrap();
                let (int, frac) = v.split_once('.').unwrap_or((v, ""));
                format!("{int}{frac:0<4}").parse::<i128>().unwrap()
            })
            .sum()
    };
    assert_eq!(october("eurodist"), 652_1442);
    assert_eq!(october("britdist"), 332_9401);
    assert_eq!(october("alpha-it"), 391_1900);
    assert_eq!(october("bergen-data"), 383_2300);
    assert_eq!(october("clyde-cloud"), 407_8600);
}

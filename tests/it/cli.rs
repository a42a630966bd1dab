//! The `billflow` command as a user runs it.

use std::process::Command;

use crate::common::*;

fn billflow(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_billflow"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn validate_explain_and_test_the_sample() {
    let (code, out, err) = billflow(&["validate"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "pipeline `cloud-reseller` is valid: 6 organisations, 3 sources, 4 references, 10 streams, 38 stages"
        ),
        "{out}"
    );

    let (code, out, _) = billflow(&["explain", "data-samples/cloud-reseller/pipeline.yaml"]);
    assert_eq!(code, 0);
    for needle in [
        "vendor nimbus (Nimbus Cloud Inc.)",
        "stream eurodist-usage [billing] <- stream nimbus-rated-usage, period column usage_date",
        "1. normalise-sku - polars with_columns(upper(trim(sku)) AS sku)  (materialises)",
        "2. subscriber - lookup subscriptions on (subscription_id) -> customer_id, reseller_id, distributor_id  [reads subscriptions]",
        "3. rate-at-cost - rate quantity against vendor_prices by (sku) at usage_date, sum per subscription_id, sku -> cost_usd (4 places half_even, proportional allocation)  [reads vendor_prices]",
        "4. publish - sql queries/cloud-reseller/vendor_publish.sql",
        "reseller clyde-cloud (Clyde Cloud Partners)",
        "=> reseller/clyde-cloud/clyde-cloud-invoice-lines/<batch>",
        "(+3 intermediate)",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
    let (_, mermaid, _) = billflow(&["explain", "--format", "mermaid"]);
    assert!(mermaid.starts_with("flowchart LR\n"));
    assert!(
        mermaid.contains("s_eurodist_usage --> s_alpha_it_invoice_lines"),
        "{mermaid}"
    );
    let (_, dot, _) = billflow(&["explain", "--format", "dot"]);
    assert!(dot.starts_with("digraph \"cloud-reseller\""));
    assert!(dot.contains("src_usage -> s_nimbus_rated_usage;"));
    assert!(
        dot.contains("ref_fx_rates -> s_eurodist_usage [style=dashed];"),
        "{dot}"
    );
    assert!(
        mermaid.contains("ref_channel_terms -.-> s_clyde_cloud_invoice_lines"),
        "{mermaid}"
    );
    let (code, verbose, err) = billflow(&["explain", "--verbose"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        verbose.contains("-- logical plan (optimised)") && verbose.contains("-- physical plan"),
        "{verbose}"
    );

    let (code, out, err) = billflow(&["test"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok    nimbus-rated-usage (6 rows)"), "{out}");
    assert!(out.contains("ok    alpha-it-invoice-lines (6 rows)"), "{out}");
    assert!(out.contains("2 of 2 samples match"), "{out}");
}

#[test]
fn test_shows_a_row_level_diff_when_the_sample_disagrees() {
    let (tmp, pipeline) = sample_copy();
    let expected = tmp
        .path()
        .join("data-samples/cloud-reseller/samples/nimbus-expected.csv");
    let text = std::fs::read_to_string(&expected).unwrap();
    // Change one expected amount: the diff must show the expected row and the actual one.
    let line = text.lines().nth(1).unwrap().to_string();
    let (head, last) = line.rsplit_once(',').unwrap();
    let changed = format!("{head},{}", if last == "9.9999" { "9.9998" } else { "9.9999" });
    std::fs::write(&expected, text.replacen(&line, &changed, 1)).unwrap();
    let (code, out, _) = billflow(&["test", pipeline.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  nimbus-rated-usage"), "{out}");
    assert!(
        out.contains("      - ") && out.contains("cost_usd=9.999"),
        "expected row shown: {out}"
    );
    assert!(out.contains("      + "), "actual row shown: {out}");
    assert!(out.contains("1 of 2 samples match"));
}

#[test]
fn run_prints_a_summary_and_a_broken_file_a_located_error() {
    let wh = tempfile::tempdir().unwrap();
    let (code, out, err) = billflow(&[
        "run",
        "--quiet",
        "--period",
        "2026-10",
        "--warehouse",
        wh.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for needle in [
        "nimbus-rated-usage",
        "clyde-cloud-invoice-lines",
        "written",
        "cost_usd 1017.6027",
        "1 row(s) rejected",
        "U-0017",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
    assert!(
        wh.path()
            .join("reseller/clyde-cloud/clyde-cloud-invoice-lines")
            .is_dir()
    );

    let (tmp, pipeline) = sample_copy();
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replacen("owner: nimbus", "owner: nimbuss", 1);
    std::fs::write(&pipeline, &text).unwrap();
    let (code, out, err) = billflow(&[
        "run",
        "--period",
        "2026-10",
        "--warehouse",
        tmp.path().join("wh").to_str().unwrap(),
        pipeline.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    let line = text[..text.find("owner: nimbuss").unwrap()].matches('\n').count() + 1;
    assert!(err.contains(&format!("pipeline.yaml:{line}:12")), "{err}");
    assert!(err.contains("did you mean `nimbus`?"), "{err}");
    assert!(
        !tmp.path().join("wh").exists(),
        "nothing is written for an invalid pipeline"
    );

    let (code, _, err) = billflow(&["run", "--period", "2026-13"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a period"), "{err}");
}

#[test]
fn a_failing_stage_stops_its_branch_and_the_others_finish() {
    let (tmp, pipeline) = sample_copy();
    // britdist divides by zero at run time: it fails, clyde-cloud (below it) is skipped,
    // the eurodist branch is written.
    let text = std::fs::read_to_string(&pipeline).unwrap().replacen(
        "    extends: eurodist-usage\n    owner: britdist\n",
        "    extends: eurodist-usage\n    owner: britdist\n    stages:\n      - { name: own-customers, kind: filter, column: distributor_id, equals: britdist }\n      - { name: channel-currency, kind: lookup, reference: channel_terms, keys: [{ column: distributor_id, reference_column: organization_id }], columns: [currency] }\n      - { name: to-local-currency, kind: convert_currency, amount: cost_usd, from: USD, to_column: currency, rates: fx_rates, date: usage_date, output: cost, rate_output: fx_rate, scale: 4 }\n      - { name: markup, kind: markup, column: cost, output: price, rate: \"0.095\" }\n      - name: boom\n        kind: sql\n        query: SELECT * FROM input WHERE cost / (quantity - quantity) > 0\n",
        1,
    );
    std::fs::write(&pipeline, text).unwrap();
    let wh = tmp.path().join("wh");
    let (code, out, err) = billflow(&[
        "run",
        "--quiet",
        "--period",
        "2026-10",
        "--warehouse",
        wh.to_str().unwrap(),
        pipeline.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        // The stages run fused into one plan; the one that fails is named.
        out.contains("error: pipeline `cloud-reseller`, stream `britdist-usage`, stage `boom`"),
        "{out}"
    );
    assert!(out.to_lowercase().contains("divide by zero"), "{out}");
    assert!(
        out.contains("skipped: pipeline `cloud-reseller`, stream `clyde-cloud-invoice-lines`"),
        "{out}"
    );
    assert!(wh.join("reseller/alpha-it/alpha-it-invoice-lines").is_dir());
    assert!(wh.join("reseller/bergen-data/bergen-data-invoice-lines").is_dir());
    let brit = wh.join("distributor/britdist/britdist-usage");
    let visible = std::fs::read_dir(&brit)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(visible, 0, "no batch for the failed stream");
    let leftovers = std::fs::read_dir(&brit).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "its staging directory is removed");
}

/// Found in review: `BILLFLOW_PLANS=DIR` with a DIR that did not exist wrote nothing and
/// said nothing. The folder is made.
#[test]
fn billflow_plans_makes_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let plans = tmp.path().join("not/yet/there");
    let out = Command::new(env!("CARGO_BIN_EXE_billflow"))
        .args(["run", "--period", "2026-10", "--quiet", "--warehouse"])
        .arg(tmp.path().join("wh"))
        .env("BILLFLOW_PLANS", &plans)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan = std::fs::read_to_string(plans.join("nimbus-rated-usage.txt")).unwrap();
    assert!(plan.contains("metrics=["), "{plan}");
}

/// Run `pipeline` (a case's, edited) over the case's `files` for 2026-10 with
/// `BILLFLOW_PLANS`: the run's summary and stream `s`'s executed plans (what its stages
/// computed once, then the stream's own).
fn run_case_with_plans(case: &std::path::Path, files: &[&str], pipeline: &str) -> (String, String) {
    let tmp = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::copy(case.join(f), tmp.path().join(f)).unwrap();
    }
    std::fs::write(tmp.path().join("pipeline.yaml"), pipeline).unwrap();
    let plans = tmp.path().join("plans");
    let out = Command::new(env!("CARGO_BIN_EXE_billflow"))
        .args(["run", "--period", "2026-10", "--quiet", "--warehouse"])
        .arg(tmp.path().join("wh"))
        .arg(tmp.path().join("pipeline.yaml"))
        .env("BILLFLOW_PLANS", &plans)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan = std::fs::read_to_string(plans.join("s.txt")).unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), plan)
}

/// Issue 17: `rate` reads its lines twice (the groups are charged, then the charges are
/// shared back over the lines). A costly stage before it, here an `aggregate` of the
/// usage, runs once: the plan as run reads the lines from memory, with no aggregate left
/// in it (before, the usage was aggregated there a second time).
#[test]
fn an_aggregate_before_rate_is_computed_once() {
    let case = repo().join("tests/stages/rate/bands_in_columns");
    // Summed per subscription and SKU first: the same groups the rate charges, so the
    // same charges (101.5000, worked in the case's pipeline), on 4 lines instead of 5.
    let pipeline = std::fs::read_to_string(case.join("pipeline.yaml")).unwrap().replace(
        "    stages:\n      - kind: rate",
        "    stages:\n      - { kind: aggregate, group_by: [sub, sku], sum: [qty], \
         aggregations: [{ function: min, column: id, as: id }] }\n      - kind: rate",
    );
    assert!(pipeline.contains("kind: aggregate"));
    let (summary, plan) = run_case_with_plans(&case, &["input.csv", "prices.csv"], &pipeline);
    assert!(summary.contains("amount 101.5000"), "{summary}");
    // The file shows each plan that ran, with its metrics: the aggregate once, in the
    // plan that computed the rate's input.
    let (computed_once, stream) = plan.split_once("-- the stream\n").expect("the stream's plan");
    assert!(
        !stream.contains("AggregateExec"),
        "the usage is aggregated again:\n{plan}"
    );
    let input = computed_once
        .split("-- computed once: ")
        .find(|p| p.starts_with("the input of stage `rate-2`"))
        .expect("the plan that computed the rate's input");
    assert!(
        input.contains("AggregateExec") && input.contains("output_rows=4"),
        "{plan}"
    );
}

/// Issue 17: an aggregate right after a lookup, grouping by the lookup's key and by the
/// columns it adds: the rows are grouped by the key alone and the groups get the columns
/// (the case `aggregate/after_a_lookup` shows the output is the same). Before, every
/// line was given the columns and grouped by all of them. An aggregate that reads an
/// added column is left as written.
#[test]
fn an_aggregate_after_a_lookup_groups_before_the_columns_are_added() {
    let case = repo().join("tests/stages/aggregate/after_a_lookup");
    let run = |pipeline: String| run_case_with_plans(&case, &["input.csv", "subs.csv"], &pipeline).1;
    let grouped_by = |plan: &str| -> Vec<String> {
        plan.lines()
            .filter(|l| l.contains("AggregateExec") && !l.contains("__ref_key"))
            .map(|l| l.trim().to_string())
            .collect()
    };
    let pipeline = std::fs::read_to_string(case.join("pipeline.yaml")).unwrap();
    let plan = run(pipeline.clone());
    let groups = grouped_by(&plan);
    assert!(!groups.is_empty(), "{plan}");
    for g in &groups {
        assert!(
            g.contains("sub@") && !g.contains("customer") && !g.contains("seller"),
            "{g}\n{plan}"
        );
    }
    // The groups' keys with several rows in `subs` failed before the grouping: each key's
    // columns are taken in bulk (`max`), not one boxed `first_value` per key.
    assert!(!plan.contains("first_value"), "{plan}");
    let reads_customer = pipeline.replace(
        "{ function: count, column: id, as: lines }",
        "{ function: count, column: customer, as: lines }",
    );
    assert_ne!(reads_customer, pipeline);
    let plan = run(reads_customer);
    assert!(grouped_by(&plan).iter().any(|g| g.contains("customer")), "{plan}");
}

#[test]
fn sandbox_refuses_a_pipeline_that_names_files_outside_it() {
    let (code, _, err) = billflow(&[
        "validate",
        "--sandbox",
        ".",
        "data-samples/cloud-reseller/pipeline.yaml",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = billflow(&[
        "validate",
        "--sandbox",
        "data-samples/cloud-reseller",
        "data-samples/cloud-reseller/pipeline.yaml",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("`../../queries/cloud-reseller/vendor_publish.sql` is outside the sandbox"),
        "{err}"
    );
    let (code, _, err) = billflow(&[
        "validate",
        "--sandbox",
        "queries",
        "data-samples/cloud-reseller/pipeline.yaml",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("the pipeline file"), "{err}");
    assert!(err.contains("is outside the sandbox"), "{err}");
}

//! Broken pipeline files: each gives a clear message at the right file, line and column,
//! with what was expected and a hint where one can be guessed. All problems at once.

use billflow::Diagnostics;

use crate::common::*;

fn base() -> String {
    std::fs::read_to_string(sample_pipeline()).unwrap()
}

/// Replace `from` (which must occur) with `to`, once or everywhere.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "test setup: `{from}` not in the pipeline");
    text.replacen(from, to, 1)
}

/// 1-based line and column where `needle` first occurs.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).unwrap_or_else(|| panic!("`{needle}` not found"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
    (line, column)
}

/// Validate `yaml` as the sample pipeline (with its data and queries) and return the
/// problems; `prepare` may change other files of the copy first.
async fn problems_with(yaml: &str, prepare: impl FnOnce(&std::path::Path)) -> Diagnostics {
    let (tmp, path) = sample_copy();
    std::fs::write(&path, yaml).unwrap();
    prepare(tmp.path());
    match billflow::check(&engine(), &path).await {
        Ok(_) => panic!("expected the pipeline to be rejected"),
        Err(d) => d,
    }
}

async fn problems(yaml: &str) -> Diagnostics {
    problems_with(yaml, |_| {}).await
}

/// The diagnostic whose message contains `message`, checked against a location.
fn expect(d: &Diagnostics, message: &str, at: (usize, usize)) -> billflow::Diagnostic {
    let found = d
        .list
        .iter()
        .find(|x| x.message.contains(message))
        .unwrap_or_else(|| panic!("no error containing `{message}` in:\n{}", d.render()));
    let loc = found
        .location
        .as_ref()
        .unwrap_or_else(|| panic!("`{message}` has no location"));
    assert_eq!(
        (loc.line, loc.column),
        at,
        "location of `{message}`:\n{}",
        found.render()
    );
    assert!(loc.file.path.ends_with("pipeline.yaml") || loc.file.path.extension().is_some_and(|e| e == "sql"));
    found.clone()
}

fn hint(d: &billflow::Diagnostic) -> String {
    d.hint.clone().unwrap_or_default()
}

#[tokio::test]
async fn e01_invalid_yaml_names_the_line() {
    let y = edit(
        &base(),
        "- { name: unit, type: string }",
        "- { name: unit, type: string",
    );
    let d = problems(&y).await;
    assert_eq!(d.len(), 1);
    let e = &d.list[0];
    assert!(e.message.contains("invalid YAML"), "{}", e.render());
    let (line, _) = position(&y, "- { name: unit, type: string");
    assert!(e.location.as_ref().unwrap().line >= line, "{}", e.render());
}

#[tokio::test]
async fn e02_unknown_top_level_key_suggests_the_right_one() {
    let y = edit(&base(), "\nstreams:\n", "\nstream:\n");
    let d = problems(&y).await;
    let e = expect(
        &d,
        "unknown key `stream` in the pipeline file",
        position(&y, "stream:\n"),
    );
    assert!(hint(&e).contains("did you mean `streams`?"));
    assert!(e.expected.unwrap().contains("`organizations`"));
    assert!(
        d.list
            .iter()
            .any(|x| x.message.contains("missing required key `streams`"))
    );
}

#[tokio::test]
async fn e03_misspelt_stream_key() {
    let y = edit(
        &base(),
        "    period: usage_date\n    stages:\n      - name: normalise-sku",
        "    periode: usage_date\n    stages:\n      - name: normalise-sku",
    );
    let d = problems(&y).await;
    let e = expect(&d, "unknown key `periode` in stream", position(&y, "periode"));
    assert!(hint(&e).contains("did you mean `period`?"), "{}", e.render());
}

#[tokio::test]
async fn e04_unknown_upstream_organisation() {
    let y = edit(&base(), "upstream: eurodist", "upstream: eurodsit");
    let d = problems(&y).await;
    let e = expect(&d, "has unknown upstream `eurodsit`", position(&y, "eurodsit"));
    assert!(hint(&e).contains("`eurodist`"));
}

#[tokio::test]
async fn e05_tier_that_does_not_match_the_chain() {
    let y = edit(
        &base(),
        "    tier: reseller\n    upstream: eurodist",
        "    tier: reseller\n    upstream: nimbus",
    );
    let d = problems(&y).await;
    let (line, col) = position(&y, "tier: reseller");
    let e = expect(
        &d,
        "organisation `alpha-it` is a reseller but sits at tier level 2",
        (line, col + "tier: ".len()),
    );
    assert!(e.expected.unwrap().contains("upstream: a distributor"));
}

#[tokio::test]
async fn e06_unknown_stream_owner() {
    let y = edit(&base(), "    owner: eurodist\n", "    owner: eurodistt\n");
    let d = problems(&y).await;
    let (line, col) = position(&y, "owner: eurodistt");
    let e = expect(&d, "has unknown owner `eurodistt`", (line, col + "owner: ".len()));
    assert!(hint(&e).contains("did you mean `eurodist`?"));
}

#[tokio::test]
async fn e07_unknown_source() {
    let y = edit(&base(), "input: { source: usage }", "input: { source: usages }");
    let d = problems(&y).await;
    let e = expect(&d, "reads unknown source `usages`", position(&y, "usages }"));
    assert!(hint(&e).contains("did you mean `usage`?"));
}

#[tokio::test]
async fn e08_unknown_input_stream() {
    let y = edit(
        &base(),
        "input: { stream: britdist-usage }",
        "input: { stream: britdist-usages }",
    );
    let d = problems(&y).await;
    let e = expect(
        &d,
        "reads unknown stream `britdist-usages`",
        position(&y, "britdist-usages"),
    );
    assert!(hint(&e).contains("`britdist-usage`"));
}

#[tokio::test]
async fn e09_streams_in_a_cycle() {
    let y = edit(
        &base(),
        "input: { stream: nimbus-rated-usage }",
        "input: { stream: alpha-it-invoice-lines }",
    );
    let d = problems(&y).await;
    assert!(
        d.list.iter().any(|x| x.message.contains("streams form a cycle")),
        "{}",
        d.render()
    );
}

#[tokio::test]
async fn e10_stream_reading_from_outside_its_chain() {
    let y = edit(
        &base(),
        "    owner: bergen-data\n",
        "    owner: bergen-data\n    input: { stream: britdist-usage }\n",
    );
    let d = problems(&y).await;
    let (line, col) = position(&y, "    owner: bergen-data\n    input: { stream: britdist-usage }");
    let e = expect(
        &d,
        "`bergen-data` is not downstream of `britdist`",
        (line + 1, col + "    input: { stream: ".len()),
    );
    assert!(hint(&e).contains("vendor -> distributor -> reseller"));
}

#[tokio::test]
async fn e11_unknown_stage_kind() {
    let y = edit(
        &base(),
        "        kind: polars\n        ops:\n          - with_columns",
        "        kind: polar\n        ops:\n          - with_columns",
    );
    let d = problems(&y).await;
    let (line, col) = position(&y, "kind: polar\n");
    let e = expect(&d, "unknown stage kind `polar`", (line, col + "kind: ".len()));
    assert!(hint(&e).contains("did you mean `polars`?"));
    assert!(e.expected.unwrap().contains("`sql`"));
}

#[tokio::test]
async fn e12_sql_with_an_unknown_column_points_into_the_query() {
    let y = edit(
        &base(),
        "        kind: sql\n        file: ../../queries/cloud-reseller/vendor_publish.sql",
        "        kind: sql\n        query: SELECT record_id, usage_dte FROM input",
    );
    let d = problems(&y).await;
    let e = d
        .list
        .iter()
        .find(|x| x.message.contains("usage_dte"))
        .unwrap_or_else(|| panic!("{}", d.render()));
    let loc = e.location.as_ref().unwrap();
    let (line, col) = position(&y, "usage_dte");
    assert_eq!(loc.line, line, "{}", e.render());
    assert_eq!(
        loc.column,
        col,
        "DataFusion's span, mapped into the YAML: {}",
        e.render()
    );
    assert!(e.message.contains("stage `publish` of stream `nimbus-rated-usage`"));
}

#[tokio::test]
async fn e13_declared_column_the_stages_do_not_produce() {
    let y = edit(
        &base(),
        "{ name: cost_usd, type: \"decimal(18,4)\", nullable: false }\n    sample",
        "{ name: cost_usdd, type: \"decimal(18,4)\", nullable: false }\n    sample",
    );
    let d = problems(&y).await;
    let e = expect(
        &d,
        "declares column `cost_usdd` but its last stage `publish` does not produce it",
        position(&y, "cost_usdd"),
    );
    assert!(hint(&e).contains("did you mean `cost_usd`?"));
    assert!(d.list.iter().any(|x| {
        x.message
            .contains("produces column `cost_usd` that the stream's columns do not declare")
    }));
}

#[tokio::test]
async fn e14_declared_type_that_would_lose_decimals() {
    let y = edit(
        &base(),
        "{ name: cost_usd, type: \"decimal(18,4)\", nullable: false }\n    sample",
        "{ name: cost_usd, type: \"decimal(18,2)\", nullable: false }\n    sample",
    );
    let d = problems(&y).await;
    let (line, col) = position(&y, "{ name: cost_usd, type: \"decimal(18,2)\"");
    let e = expect(
        &d,
        "column `cost_usd` of stream `nimbus-rated-usage` is decimal(38,4) after stage `publish` but is declared decimal(18,2)",
        (line, col + "{ name: ".len()),
    );
    assert!(hint(&e).contains("round explicitly"), "{}", e.render());
}

#[tokio::test]
async fn e15_invalid_column_type() {
    let y = edit(
        &base(),
        "type: \"decimal(18,6)\", nullable: false }",
        "type: \"decimal(40,6)\", nullable: false }",
    );
    let d = problems(&y).await;
    let e = expect(&d, "is not a valid decimal", position(&y, "\"decimal(40,6)\""));
    assert!(e.expected.unwrap().contains("`decimal(p,s)`"));
    let y = edit(&base(), "{ name: unit, type: string }", "{ name: unit, type: strng }");
    let d = problems(&y).await;
    let e = expect(&d, "unknown column type `strng`", position(&y, "strng"));
    assert!(hint(&e).contains("did you mean `string`?"));
}

#[tokio::test]
async fn e16_duplicate_key() {
    let y = edit(&base(), "    owner: nimbus\n", "    owner: nimbus\n    owner: nimbus\n");
    let d = problems(&y).await;
    let e = &d.list[0];
    assert!(e.message.contains("key `owner` appears twice"), "{}", e.render());
    let (line, _) = position(&y, "    owner: nimbus\n    owner: nimbus");
    assert_eq!(e.location.as_ref().unwrap().line, line + 1);
}

#[tokio::test]
async fn e17_duplicate_stream_id() {
    let y = edit(
        &base(),
        "  - id: bergen-data-invoice-lines",
        "  - id: alpha-it-invoice-lines",
    );
    let d = problems(&y).await;
    let at = y.match_indices("  - id: alpha-it-invoice-lines").nth(1).unwrap().0;
    let line = y[..at].matches('\n').count() + 1;
    let e = expect(&d, "stream `alpha-it-invoice-lines` is declared twice", (line, 9));
    assert!(hint(&e).contains("first declaration is at line"));
}

#[tokio::test]
async fn e18_period_column_not_in_the_input() {
    let y = edit(
        &base(),
        "    period: usage_date\n    stages:\n      - name: normalise-sku",
        "    period: usage_day\n    stages:\n      - name: normalise-sku",
    );
    let d = problems(&y).await;
    let (line, col) = position(&y, "period: usage_day");
    let e = expect(
        &d,
        "period column `usage_day` is not a column of stream `nimbus-rated-usage`'s input",
        (line, col + "period: ".len()),
    );
    assert!(hint(&e).contains("did you mean `usage_date`?"));
}

#[tokio::test]
async fn e19_missing_required_key() {
    let y = edit(&base(), "    owner: nimbus\n", "");
    let d = problems(&y).await;
    let (line, col) = position(&y, "id: nimbus-rated-usage");
    let e = expect(
        &d,
        "stream `nimbus-rated-usage` is missing required key `owner`",
        (line, col),
    );
    assert!(e.expected.unwrap().contains("organisation that owns the stream"));
}

#[tokio::test]
async fn e20_source_files_that_do_not_exist() {
    let y = edit(&base(), "url: inputs/usage-*.csv", "url: input/usage-*.csv");
    let d = problems(&y).await;
    let (line, col) = position(&y, "url: input/usage-*.csv");
    let e = expect(&d, "no file matches `input/usage-*.csv`", (line, col + "url: ".len()));
    assert!(hint(&e).contains("relative to the pipeline file"));
}

#[tokio::test]
async fn e21_polars_expression_that_does_not_parse() {
    let y = edit(&base(), "\"upper(trim(sku)) AS sku\"", "\"upper(trim(sku) AS sku\"");
    let d = problems(&y).await;
    let e = expect(
        &d,
        "Polars cannot parse expression `upper(trim(sku) AS sku`",
        position(&y, "\"upper(trim(sku) AS sku\""),
    );
    assert!(e.expected.unwrap().contains("AS name"));
}

#[tokio::test]
async fn e22_unknown_template_variable_points_into_the_query_file() {
    let d = problems_with(&base(), |root| {
        let f = root.join("queries/cloud-reseller/vendor_publish.sql");
        let text = std::fs::read_to_string(&f)
            .unwrap()
            .replace("FROM input", "FROM input WHERE '{{ ownr }}' <> ''");
        std::fs::write(f, text).unwrap();
    })
    .await;
    let e = d
        .list
        .iter()
        .find(|x| x.message.contains("unknown template variable `{{ ownr }}`"))
        .unwrap_or_else(|| panic!("{}", d.render()));
    let loc = e.location.as_ref().unwrap();
    assert!(loc.file.path.ends_with("vendor_publish.sql"), "{}", loc);
    assert_eq!(loc.line, 12, "the line with the template");
    assert_eq!(
        d.list.iter().filter(|x| x.message.contains("ownr")).count(),
        1,
        "a shared stage is reported once"
    );
}

#[tokio::test]
async fn e23_yaml_anchors_point_to_extends() {
    let y = edit(
        &base(),
        "    columns:\n      - { name: record_id, type: string, nullable: false }\n      - { name: usage_date",
        "    columns: &cols\n      - { name: record_id, type: string, nullable: false }\n      - { name: usage_date",
    );
    let d = problems(&y).await;
    let e = &d.list[0];
    assert!(e.message.contains("anchors and aliases"), "{}", e.render());
    assert!(hint(e).contains("extends"));
}

#[tokio::test]
async fn e24_extends_an_unknown_stream() {
    let y = edit(&base(), "extends: eurodist-usage", "extends: eurodist-usag");
    let d = problems(&y).await;
    let (line, col) = position(&y, "extends: eurodist-usag\n");
    let e = expect(
        &d,
        "extends unknown stream `eurodist-usag`",
        (line, col + "extends: ".len()),
    );
    assert!(hint(&e).contains("did you mean `eurodist-usage`?"));
}

#[tokio::test]
async fn e25_all_problems_are_reported_together_in_file_order() {
    let y = edit(&base(), "input: { source: usage }", "input: { source: usages }");
    let y = edit(&y, "upstream: eurodist", "upstream: eurodsit");
    let y = edit(
        &y,
        "        kind: polars\n        ops:\n          - with_columns",
        "        kind: polar\n        ops:\n          - with_columns",
    );
    let d = problems(&y).await;
    assert!(d.len() >= 3, "{}", d.render());
    let lines: Vec<usize> = d
        .list
        .iter()
        .filter_map(|x| x.location.as_ref().map(|l| l.line))
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "reported in file order");
    let rendered = d.render();
    assert!(rendered.contains("pipeline.yaml:"), "{rendered}");
    assert!(rendered.contains("errors found"), "{rendered}");
}

/// Found in review: two stages with one name (or names equal once made a file name, `chk
/// a` and `chk_a`) wrote the same rejects file, the second truncating the first.
#[tokio::test]
async fn e26_stage_names_are_unique_in_a_stream_even_as_file_names() {
    let y = edit(&base(), "      - name: subscriber", "      - name: normalise-sku");
    let d = problems(&y).await;
    let (line, col) = position(&y, "name: normalise-sku\n        kind: lookup");
    let e = expect(
        &d,
        "stage name `normalise-sku` is used twice in this stream",
        (line, col + "name: ".len()),
    );
    assert!(hint(&e).contains("rejects/stage-<name>.parquet"), "{}", hint(&e));

    let y = edit(&base(), "      - name: subscriber", "      - name: \"normalise sku\"");
    let y = edit(&y, "      - name: normalise-sku", "      - name: normalise_sku");
    let d = problems(&y).await;
    let (line, col) = position(&y, "name: \"normalise sku\"");
    expect(
        &d,
        "stage names `normalise_sku` and `normalise sku` are the same once made a file name (`stage-normalise_sku.parquet`)",
        (line, col + "name: ".len()),
    );
}

/// Found in review: below the reseller level a tier was free text, and it names the first
/// directory of the organisation's batches: `tier: '../../../x'` passed validate and the
/// run wrote outside the warehouse.
#[tokio::test]
async fn e27_a_tier_is_an_identifier_because_it_names_a_directory() {
    let y = edit(
        &base(),
        "organizations:\n",
        "organizations:\n  - { id: shop, name: Shop, tier: \"../../../x\", upstream: alpha-it }\n",
    );
    let d = problems(&y).await;
    let (line, col) = position(&y, "\"../../../x\"");
    let e = expect(&d, "`../../../x` is not a valid tier name", (line, col));
    assert!(hint(&e).contains("directories in the warehouse"), "{}", hint(&e));

    let y = edit(
        &base(),
        "    owner: alpha-it\n",
        "    for_each: { tier: \"/tmp/x\", column: reseller_id }\n",
    );
    let d = problems(&y).await;
    let (line, col) = position(&y, "\"/tmp/x\"");
    expect(&d, "`/tmp/x` is not a valid tier name", (line, col));
}

/// Found in review: 25,000 nested block sequences (60 KB) overflowed the YAML parser's
/// stack and aborted every command. The depth is checked on the text first.
#[tokio::test]
async fn e28_a_file_nested_absurdly_deep_is_refused_before_parsing() {
    for text in [
        "- ".repeat(25_000) + "x\n",
        "k: ".to_string() + &"[".repeat(25_000) + "\n",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("deep.yaml");
        std::fs::write(&path, &text).unwrap();
        let d = billflow::check(&engine(), &path).await.unwrap_err();
        let e = &d.list[0];
        assert!(e.message.contains("nests deeper than 100 levels"), "{}", d.render());
        assert_eq!(e.location.as_ref().map(|l| l.line), Some(1));
    }
}

/// Found in review: a UTF-8 byte-order mark was read as part of the first key, a second
/// YAML document was ignored without a word, and a NUL byte ended the document.
#[tokio::test]
async fn e29_a_pipeline_file_is_one_document_of_text() {
    // With a byte-order mark right before the first key, the sample is still valid.
    let (tmp, path) = sample_copy();
    let text = base();
    let from_first_key = &text[text.find("pipeline:").unwrap()..];
    std::fs::write(&path, format!("\u{feff}{from_first_key}")).unwrap();
    billflow::check(&engine(), &path)
        .await
        .unwrap_or_else(|d| panic!("{}", d.render()));
    drop(tmp);

    let y = format!("{}---\npipeline: other\n", base());
    let d = problems(&y).await;
    let line = y.lines().position(|l| l == "---").unwrap() + 1;
    expect(&d, "a second YAML document starts here", (line, 1));

    let y = edit(&base(), "pipeline: cloud-reseller", "pipeline: cloud-re\0seller");
    let d = problems(&y).await;
    let (line, col) = position(&y, "\0");
    expect(&d, "the file holds a NUL byte", (line, col));
}

/// Found in review: a filter literal that does not cast to its column's type, and a
/// condition that is no boolean, passed validate and failed at run without a location.
/// Validate optimises each stream's plan stage by stage and names the stage.
#[tokio::test]
async fn e30_a_filter_that_cannot_run_is_found_at_validate_at_its_stage() {
    for (filter, wrong) in [
        ("        column: quantity\n        equals: abc\n", "abc"),
        ("        condition: \"quantity + 1\"\n", "quantity + 1"),
    ] {
        let y = edit(
            &base(),
            "        column: distributor_id\n        equals: \"{{ owner }}\"\n",
            filter,
        );
        let d = problems(&y).await;
        let (line, col) = position(&y, "      - name: own-customers");
        let e = expect(
            &d,
            "stage `own-customers` of stream `eurodist-usage`",
            (line, col + "      - ".len()),
        );
        assert!(
            e.message.contains(wrong) || e.message.to_lowercase().contains("boolean"),
            "{}",
            e.message
        );
    }
}

/// Found in review: a rate table without its `valid_to` column got DataFusion's raw `No
/// field named valid_to. Did you mean 'fx_rates.valid_from'?`, and following that hint
/// (`valid_to: valid_from`) passed validate and failed at run.
#[tokio::test]
async fn e31_a_dated_reference_needs_two_validity_bounds() {
    for (mapping, message, help) in [
        (
            "{ valid_to: valid_until }",
            "reference `fx_rates` has no column `valid_until`",
            "end of its validity",
        ),
        (
            "{ valid_to: valid_from }",
            "the validity bounds of reference `fx_rates` are both column `valid_from`",
            "where each row's validity starts",
        ),
    ] {
        let y = edit(
            &base(),
            "        rates: fx_rates\n        date: usage_date\n        output: cost\n",
            &format!(
                "        rates: fx_rates\n        rate_columns: {mapping}\n        date: usage_date\n        output: cost\n"
            ),
        );
        let d = problems(&y).await;
        let (line, col) = position(&y, "rates: fx_rates\n        rate_columns");
        let e = expect(&d, message, (line, col + "rates: ".len()));
        assert!(e.hint.clone().unwrap_or_default().contains(help), "{:?}", e.hint);
    }
}

/// Found in review: `{{ owner }}` in a `formula` expression was published as that text.
#[tokio::test]
async fn e32_a_template_in_a_formula_is_an_error_not_text() {
    let y = edit(
        &base(),
        "      - name: own-customers\n        kind: filter\n        column: distributor_id\n        equals: \"{{ owner }}\"\n",
        "      - name: own-customers\n        kind: formula\n        drop_when: \"distributor_id <> '{{ owner }}'\"\n",
    );
    let d = problems(&y).await;
    let (line, col) = position(&y, "\"distributor_id <> '{{ owner }}'\"");
    let e = expect(&d, "template variables are not expanded in a formula", (line, col));
    assert!(hint(&e).contains("filter"), "{}", hint(&e));
}

/// Issue 14, item 8: a pipeline is trusted code (it reads the files it names); run with
/// `--sandbox DIR`, every file it names must lie under DIR, links resolved.
#[tokio::test]
async fn e33_with_a_sandbox_every_file_the_pipeline_names_lies_under_it() {
    use billflow::definition::Sandbox;
    let (tmp, path) = sample_copy();
    let root = tmp.path();
    let folder = path.parent().unwrap().to_path_buf();
    let check = |sandbox: &std::path::Path| {
        let sandbox = Sandbox::new(sandbox).unwrap();
        let path = path.clone();
        async move { billflow::check_in(&engine(), &path, Some(sandbox)).await }
    };
    // The copy holds the pipeline, its data and its queries.
    check(root).await.unwrap_or_else(|d| panic!("{}", d.render()));

    // Its own folder does not hold the query file (`../../queries/...`).
    let d = check(&folder).await.unwrap_err();
    let y = std::fs::read_to_string(&path).unwrap();
    let (line, col) = position(&y, "../../queries/cloud-reseller/vendor_publish.sql");
    expect(
        &d,
        "`../../queries/cloud-reseller/vendor_publish.sql` is outside the sandbox",
        (line, col),
    );

    // A source file that links out of the sandbox is outside it, though its path is not.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.csv"), "not billing data\n").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.csv"), folder.join("inputs/usage-zz.csv")).unwrap();
    let d = check(root).await.unwrap_err();
    let (line, col) = position(&y, "inputs/usage-*.csv");
    let e = expect(&d, "usage-zz.csv` is outside the sandbox", (line, col));
    assert!(
        e.message.contains("(a file `inputs/usage-*.csv` names)"),
        "{}",
        e.message
    );
    assert!(hint(&e).contains("--sandbox DIR"), "{}", hint(&e));
}

/// Issue 16: a stream's review policy is `manual` or `auto`, its condition a percentage.
#[tokio::test]
async fn e34_a_review_policy_is_manual_or_auto_with_a_percentage() {
    let policy = "review: { policy: auto, max_rejected_percent: 5 }";
    for (to, message, needle) in [
        ("review: sometimes", "sometimes", "sometimes"),
        (
            "review: { policy: auto, max_rejected_percent: lots }",
            "`lots` is not a percentage",
            "lots",
        ),
        (
            "review: { policy: manual, max_rejected_percent: 3 }",
            "`max_rejected_percent` applies to `policy: auto` only",
            "3 }",
        ),
    ] {
        let y = edit(&base(), policy, to);
        let d = problems(&y).await;
        expect(&d, message, position(&y, needle));
    }
}

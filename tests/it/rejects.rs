//! Bad input rows are refused with their reason into the batch's rejects file, never
//! dropped or zeroed; the rest of the batch is written.

use billflow::batches::read_manifest;
use billflow::execution::Status;

use crate::common::*;

fn append(path: &std::path::Path, lines: &str) {
    let mut text = std::fs::read_to_string(path).unwrap();
    text.push_str(lines);
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_source_values_go_to_the_rejects_file_with_their_reason() {
    let (tmp, pipeline) = sample_copy();
    let usage = tmp
        .path()
        .join("data-samples/cloud-reseller/inputs/usage-2026-10-b.csv");
    append(
        &usage,
        "X-0001,2026-10-20,SUB-1001,VM-STD-2,12.5kg,hours\n\
         X-0002,2026-10-32,SUB-1001,VM-STD-2,1,hours\n\
         X-0003,2026-09-20,SUB-1001,VM-STD-2,oops,hours\n\
         X-0004,2026-10-21,,VM-STD-2,2,hours\n",
    );
    let wh = tmp.path().join("wh");
    let report = run(&pipeline, "2026-10", &wh).await;
    let vendor = report.stream("nimbus-rated-usage").unwrap();
    assert_eq!(vendor.status, Status::Written);
    // 4 of 61 rows refused (6.6%) is more than the sample's `review: auto` publishes by
    // itself (5%): the batch waits for review, and the distributors wait for it.
    let below = report.stream("eurodist-usage").unwrap();
    assert_eq!(below.status, Status::Waiting, "{below:?}");
    let why = &below.error.as_ref().unwrap().message;
    assert!(
        why.contains("waits for a batch of stream `nimbus-rated-usage` for 2026-10 to be published"),
        "{why}"
    );
    // X-0001 (bad quantity), X-0002 (no such date: its period is unknown, so it is
    // refused here too) and X-0004 (missing subscription) belong to October; X-0003 is a
    // September row and is refused by the September run instead.
    assert_eq!(vendor.rows_in, 58 + 3);
    assert_eq!(vendor.rows_out, 57, "the good rows are untouched");
    assert_eq!(
        vendor.rows_rejected,
        3 + 1,
        "three unreadable rows and U-0017 (no price)"
    );
    let dir = vendor.batch_dir.clone().unwrap();
    let (_, input_rejects) = parquet_rows(&dir.join("rejects/input.parquet")).await;
    assert_eq!(input_rejects.len(), 3, "{input_rejects:#?}");
    let find = |id: &str| {
        input_rejects
            .iter()
            .find(|r| r.contains(&format!("record_id={id},")))
            .unwrap_or_else(|| panic!("{id} not refused: {input_rejects:#?}"))
            .clone()
    };
    let r1 = find("X-0001");
    assert!(r1.contains("quantity: cannot read '12.5kg' as decimal(18,6)"), "{r1}");
    assert!(r1.contains("quantity=12.5kg"), "the original text is kept: {r1}");
    assert!(r1.contains("_reject_stage=source usage"), "{r1}");
    assert!(find("X-0002").contains("usage_date: cannot read '2026-10-32' as date"));
    assert!(find("X-0004").contains("subscription_id is empty but declared nullable: false"));
    let m = read_manifest(&dir).unwrap();
    assert_eq!(m.rows_rejected, 4);
    assert_eq!(
        m.rejects.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        vec!["rejects/input.parquet", "rejects/stage-rate-at-cost.parquet"]
    );

    let sept = run(&pipeline, "2026-09", &wh).await;
    let v = sept.stream("nimbus-rated-usage").unwrap();
    assert_eq!(v.rows_out, 3);
    let (_, sept_rejects) = parquet_rows(&v.batch_dir.clone().unwrap().join("rejects/input.parquet")).await;
    assert!(
        sept_rejects.iter().any(|r| r.contains("record_id=X-0003")),
        "{sept_rejects:#?}"
    );
    assert!(
        sept_rejects.iter().any(|r| r.contains("record_id=X-0002")),
        "an unplaceable row is refused in every period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_whose_header_does_not_match_the_schema_is_refused_before_running() {
    let (tmp, pipeline) = sample_copy();
    let usage = tmp
        .path()
        .join("data-samples/cloud-reseller/inputs/usage-2026-10-a.csv");
    let text = std::fs::read_to_string(&usage).unwrap().replacen(
        "record_id,usage_date,subscription_id,sku,quantity,unit",
        "record_id,usage_date,subscription_id,quantity,sku,unit",
        1,
    );
    std::fs::write(&usage, text).unwrap();
    let err = billflow::check(&engine(), &pipeline)
        .await
        .expect_err("a swapped header must be caught");
    let d = &err.list[0];
    assert!(d.message.contains("header has columns [record_id, usage_date, subscription_id, quantity, sku, unit] but the declared schema is [record_id, usage_date, subscription_id, sku, quantity, unit]"), "{}", d.render());
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let url_line = text[..text.find("url: inputs/usage-*.csv").unwrap()]
        .matches('\n')
        .count()
        + 1;
    assert_eq!(
        d.location.as_ref().unwrap().line,
        url_line,
        "points at the source's url"
    );
}

/// Found in review: a row whose period value was NULL (an empty CSV field, a missing
/// NDJSON key, a NULL in an upstream batch) was in no period, in no rejects file and not
/// in `rows_in`. It is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_without_a_period_value_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("usage.csv"),
        "id,day,qty\n1,2026-10-05,10\n2,,20\n3,2026-10-20,30\n4,2026-09-30,40\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("usage.ndjson"),
        "{\"id\": 1, \"day\": \"2026-10-05\", \"qty\": 10}\n{\"id\": 2, \"qty\": 20}\n{\"id\": 3, \"day\": null, \"qty\": 30}\n",
    )
    .unwrap();
    let columns = "    columns:\n      - { name: id, type: integer, nullable: false }\n      - { name: day, type: date }\n      - { name: qty, type: integer }\n";
    let schema = "    schema:\n      - { name: id, type: integer, nullable: false }\n      - { name: day, type: date }\n      - { name: qty, type: integer }\n";
    let stream = |id: &str, input: &str, period: bool| {
        format!(
            "  - id: {id}\n    kind: usage\n    owner: v\n    input: {input}\n{}{columns}",
            if period { "    period: day\n" } else { "" }
        )
    };
    let yaml = format!(
        "pipeline: t\norganizations:\n  - {{ id: v, name: V, tier: vendor }}\nsources:\n  csv_usage:\n    url: usage.csv\n{schema}  json_usage:\n    url: usage.ndjson\n{schema}streams:\n{}{}{}{}",
        stream("from_csv", "{ source: csv_usage }", true),
        stream("from_json", "{ source: json_usage }", true),
        stream("all_days", "{ source: csv_usage }", false),
        stream("below", "{ stream: all_days }", true),
    );
    let pipeline = dir.join("p.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    let report = run(&pipeline, "2026-10", &dir.join("wh")).await;
    assert!(report.ok(), "{report:?}");
    let reason = "`day` is NULL: the row belongs to no period";
    // (stream, rows in, rows out, refused ids): ids 1 and 3 are in October, 4 in
    // September; id 2 (and in the NDJSON, id 3) has no day.
    for (id, rows_in, rows_out, refused) in [
        ("from_csv", 3, 2, vec!["2"]),
        ("from_json", 3, 1, vec!["2", "3"]),
        ("below", 3, 2, vec!["2"]),
    ] {
        let s = report.stream(id).unwrap();
        assert_eq!(
            (s.rows_in, s.rows_out, s.rows_rejected),
            (rows_in, rows_out, refused.len() as u64),
            "{id}"
        );
        let (_, rejects) = parquet_rows(&s.batch_dir.clone().unwrap().join("rejects/input.parquet")).await;
        // The id cell, wherever the input put the column (NDJSON infers its own order).
        let ids: Vec<&str> = rejects
            .iter()
            .filter_map(|r| r.split(", ").find_map(|cell| cell.strip_prefix("id=")))
            .collect();
        assert_eq!(ids, refused, "{id}: {rejects:#?}");
        assert!(rejects.iter().all(|r| r.contains(reason)), "{id}: {rejects:#?}");
    }
    assert_eq!(report.stream("all_days").unwrap().rows_out, 4);
}

/// Found in review: one line a reader could not read (a ragged row, a quote never closed,
/// bytes that are no UTF-8, a JSON line that does not parse or holds a value of the wrong
/// type) failed the whole stream. Each such line is refused into `rejects/input.parquet`
/// with its file, its line and why; a value that does not convert names its line too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_that_cannot_be_read_are_refused_with_their_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut csv = b"id,day,amount\n\
        1,2026-10-01,1.5\n\
        \n\
        2,2026-10-02\n\
        3,2026-10-03,2.5,extra\n\
        4,2026-10-04,x\n\
        5,2026-10-05,"
        .to_vec();
    csv.extend_from_slice(&[0xff, 0xfe]);
    csv.extend_from_slice(
        b"\n\
        9,\"2026-10-09\",1.25\n\
        7,\"2026-10-07,3.0\n\
        8,2026-10-08,4.0\n",
    );
    std::fs::write(dir.join("in.csv"), &csv).unwrap();
    let mut json = b"{\"id\": 1, \"day\": \"2026-10-01\", \"amount\": 1.5}\n\
         {\"id\": 2, \"day\": \"2026-10-02\", \"amount\":\n\
         {\"id\": \"three\", \"day\": \"2026-10-03\", \"amount\": 2}\n\
         {\"id\": 4, \"day\": \"2026-10-04\", \"amount\": 3}\n\
         {\"id\": 5, \"day\": \"2026-10-"
        .to_vec();
    json.extend_from_slice(&[0xff]);
    json.extend_from_slice(b"\", \"amount\": 4}\n");
    std::fs::write(dir.join("in.ndjson"), &json).unwrap();
    let schema = "    schema:\n      - { name: id, type: integer }\n      - { name: day, type: date }\n      - { name: amount, type: \"decimal(18,4)\" }\n";
    let columns = "    period: day\n    columns:\n      - { name: id, type: integer }\n      - { name: day, type: date }\n      - { name: amount, type: \"decimal(18,4)\" }\n";
    let yaml = format!(
        "pipeline: t\norganizations:\n  - {{ id: v, name: V, tier: vendor }}\nsources:\n  csv:\n    url: in.csv\n{schema}  json:\n    url: in.ndjson\n{schema}streams:\n  - id: from_csv\n    kind: billing\n    owner: v\n    input: {{ source: csv }}\n{columns}  - id: from_json\n    kind: billing\n    owner: v\n    input: {{ source: json }}\n{columns}"
    );
    let pipeline = dir.join("p.yaml");
    std::fs::write(&pipeline, &yaml).unwrap();
    let report = run(&pipeline, "2026-10", &dir.join("wh")).await;
    assert!(report.ok(), "{report:?}");

    // CSV: lines 2, 8 and 10 are read (line 10 after the quote opened on line 9 is found
    // never to close); 4 and 5 are ragged, 6 does not convert, 7 is no UTF-8, 9 opens a
    // quote that never closes. Line 3 is blank: no row.
    let s = report.stream("from_csv").unwrap();
    assert_eq!((s.rows_in, s.rows_out, s.rows_rejected), (8, 3, 5), "{s:?}");
    // 1.5 + 1.25 + 4.0 = 6.75
    assert_eq!(s.control_totals["amount"], "6.7500");
    let at = s.batch_dir.clone().unwrap();
    let (_, rows) = parquet_rows(&at.join("data")).await;
    assert_eq!(
        rows,
        vec![
            "id=1, day=2026-10-01, amount=1.5000",
            "id=8, day=2026-10-08, amount=4.0000",
            "id=9, day=2026-10-09, amount=1.2500",
        ]
    );
    let (schema, refused) = parquet_rows(&at.join("rejects/input.parquet")).await;
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        vec![
            "id",
            "day",
            "amount",
            "_reject_stage",
            "_reject_reason",
            "_reject_file",
            "_reject_line",
            "_reject_record"
        ]
    );
    let file = dir.join("in.csv").display().to_string();
    let at_line = |line: u64| {
        refused
            .iter()
            .find(|r| r.contains(&format!("_reject_file={file}, _reject_line={line},")))
            .unwrap_or_else(|| panic!("line {line} not refused: {refused:#?}"))
            .clone()
    };
    assert_eq!(refused.len(), 5, "{refused:#?}");
    let l4 = at_line(4);
    assert!(
        l4.contains("the line has 2 field(s) where 3 column(s) are declared"),
        "{l4}"
    );
    assert!(l4.contains("_reject_record=2,2026-10-02"), "{l4}");
    assert!(at_line(5).contains("the line has 4 field(s) where 3 column(s) are declared"));
    let l6 = at_line(6);
    assert!(l6.contains("amount: cannot read 'x' as decimal(18,4)"), "{l6}");
    assert!(
        l6.contains("id=4,"),
        "a value that does not convert keeps its fields: {l6}"
    );
    assert!(at_line(7).contains("field 3 (`amount`) is not valid UTF-8"));
    let l9 = at_line(9);
    assert!(
        l9.contains("a quoted value is not closed before the end of the file"),
        "{l9}"
    );
    assert!(l9.contains("_reject_record=7,\"2026-10-07,3.0"), "{l9}");

    // NDJSON: line 2 is no JSON, line 3 holds text where a number is declared, line 5
    // bytes that are no UTF-8.
    let s = report.stream("from_json").unwrap();
    assert_eq!((s.rows_in, s.rows_out, s.rows_rejected), (5, 2, 3), "{s:?}");
    let at = s.batch_dir.clone().unwrap();
    let (_, refused) = parquet_rows(&at.join("rejects/input.parquet")).await;
    let file = dir.join("in.ndjson").display().to_string();
    let line = |n: u64| {
        refused
            .iter()
            .find(|r| r.contains(&format!("_reject_file={file}, _reject_line={n},")))
            .unwrap_or_else(|| panic!("line {n} not refused: {refused:#?}"))
            .clone()
    };
    assert!(line(2).contains("not readable as JSON"), "{}", line(2));
    let l3 = line(3);
    assert!(l3.contains("not readable as JSON") && l3.contains("three"), "{l3}");
    assert!(line(5).contains("UTF-8"), "{}", line(5));
    assert_eq!(refused.len(), 3, "{refused:#?}");
}

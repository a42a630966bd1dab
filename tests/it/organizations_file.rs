//! Issue 17: organisations listed in files (`organizations: [{ url: resellers.csv }]`),
//! mixed with inline ones. The same chain from files or inline gives the same batches;
//! problems in a file point into the file.

use std::path::Path;

use billflow::Diagnostics;

use crate::common::*;

/// The sample's organisations block, from `organizations:` to the blank line after it.
fn organisations_block(yaml: &str) -> &str {
    let start = yaml.find("organizations:\n").unwrap();
    let end = start + yaml[start..].find("\n\n").unwrap();
    &yaml[start..end]
}

/// The sample with the vendor inline, its distributors in a CSV file and its resellers
/// in an NDJSON file (the same values as the sample's own block).
fn sample_with_organisation_files() -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, pipeline) = sample_copy();
    let dir = pipeline.parent().unwrap();
    std::fs::create_dir_all(dir.join("orgs")).unwrap();
    std::fs::write(
        dir.join("orgs/distributors.csv"),
        "id,name,tier,upstream,currency,country\n\
         eurodist,EuroDist GmbH,distributor,nimbus,EUR,DE\n\
         britdist,BritDist Ltd,distributor,nimbus,GBP,GB\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("orgs/resellers.ndjson"),
        "{\"id\": \"alpha-it\", \"name\": \"Alpha IT Services\", \"tier\": \"reseller\", \"upstream\": \"eurodist\", \"currency\": \"EUR\"}\n\
         {\"id\": \"bergen-data\", \"name\": \"Bergen Data AS\", \"tier\": \"reseller\", \"upstream\": \"eurodist\", \"currency\": \"EUR\"}\n\
         {\"id\": \"clyde-cloud\", \"name\": \"Clyde Cloud Partners\", \"tier\": \"reseller\", \"upstream\": \"britdist\", \"currency\": \"GBP\"}\n",
    )
    .unwrap();
    let yaml = std::fs::read_to_string(&pipeline).unwrap();
    let block = organisations_block(&yaml).to_string();
    let files = "organizations:\n  \
                 - { id: nimbus, name: Nimbus Cloud Inc., tier: vendor, currency: USD }\n  \
                 - { url: orgs/distributors.csv }\n  \
                 - { url: orgs/resellers.ndjson }";
    std::fs::write(&pipeline, yaml.replace(&block, files)).unwrap();
    (tmp, pipeline)
}

fn billflow(args: &[&str]) -> String {
    ok(billflow_with(&[], args))
}

fn run_and_list(pipeline: &Path, warehouse: &Path) -> String {
    let wh = warehouse.to_str().unwrap();
    billflow(&[
        "run",
        "--quiet",
        "--period",
        "2026-10",
        "--warehouse",
        wh,
        pipeline.to_str().unwrap(),
    ]);
    billflow(&[
        "query",
        "--format",
        "csv",
        "--warehouse",
        wh,
        "SELECT id, stream, organization, tier, rows, control_totals FROM billflow.batches ORDER BY id",
    ])
}

#[test]
fn the_sample_with_its_organisations_in_files_gives_the_same_batches() {
    let (tmp, from_files) = sample_with_organisation_files();
    let inline = run_and_list(&sample_pipeline(), &tmp.path().join("inline"));
    let files = run_and_list(&from_files, &tmp.path().join("files"));
    assert!(inline.lines().count() > 10, "{inline}");
    assert_eq!(files, inline);
    // The golden figure, read back: Alpha IT's invoice lines add up to 391.19.
    let alpha = billflow(&[
        "query",
        "--format",
        "csv",
        "--warehouse",
        tmp.path().join("files").to_str().unwrap(),
        "SELECT sum(amount) AS amount FROM alpha_it.alpha_it_invoice_lines",
    ]);
    assert_eq!(alpha, "amount\n391.19\n");
}

async fn problems(write: impl FnOnce(&Path)) -> Diagnostics {
    let (_tmp, pipeline) = sample_with_organisation_files();
    write(pipeline.parent().unwrap());
    match billflow::check(&engine(), &pipeline).await {
        Ok(_) => panic!("expected the pipeline to be rejected"),
        Err(d) => d,
    }
}

/// The diagnostic whose message contains `message`: its file name, line and column.
fn at(d: &Diagnostics, message: &str) -> (String, usize, usize, billflow::Diagnostic) {
    let found = d
        .list
        .iter()
        .find(|x| x.message.contains(message))
        .unwrap_or_else(|| panic!("no error containing `{message}` in:\n{}", d.render()));
    let loc = found.location.as_ref().expect("located");
    let name = loc.file.path.file_name().unwrap().to_string_lossy().into_owned();
    (name, loc.line, loc.column, found.clone())
}

#[tokio::test]
async fn problems_in_an_organisations_file_point_into_it() {
    // Row 3 (line 3 of the file) names an upstream that does not exist.
    let d = problems(|dir| {
        std::fs::write(
            dir.join("orgs/distributors.csv"),
            "id,name,tier,upstream,currency\n\
             eurodist,EuroDist GmbH,distributor,nimbus,EUR\n\
             britdist,BritDist Ltd,distributor,nimbuss,GBP\n",
        )
        .unwrap();
    })
    .await;
    let (file, line, column, found) = at(&d, "unknown upstream `nimbuss`");
    assert_eq!(
        (file.as_str(), line, column),
        ("distributors.csv", 3, 35),
        "{}",
        found.render()
    );
    assert!(hint(&found).contains("nimbus"));
    assert!(
        found.render().contains("nimbuss"),
        "the line is shown: {}",
        found.render()
    );

    // A misspelt column, and no tier column at all.
    let d = problems(|dir| {
        std::fs::write(
            dir.join("orgs/distributors.csv"),
            "id,name,upsteam,currency\neurodist,EuroDist GmbH,nimbus,EUR\n",
        )
        .unwrap();
    })
    .await;
    let (file, _, _, found) = at(&d, "unknown organisation column `upsteam`");
    assert_eq!(file, "distributors.csv");
    assert!(hint(&found).contains("upstream"));
    at(&d, "has no `tier` column");

    // An id that is not an identifier, on line 2 of the NDJSON file, at its value.
    let d = problems(|dir| {
        std::fs::write(
            dir.join("orgs/resellers.ndjson"),
            "{\"id\": \"alpha-it\", \"tier\": \"reseller\", \"upstream\": \"eurodist\"}\n\
             {\"id\": \"bergen data\", \"tier\": \"reseller\", \"upstream\": \"eurodist\"}\n",
        )
        .unwrap();
    })
    .await;
    let (file, line, _, _) = at(&d, "`bergen data` is not a valid organisation id");
    assert_eq!((file.as_str(), line), ("resellers.ndjson", 2));

    // An id declared inline and in a file: the hint names where the first one is.
    let d = problems(|dir| {
        std::fs::write(
            dir.join("orgs/distributors.csv"),
            "id,tier,upstream\neurodist,distributor,nimbus\nbritdist,distributor,nimbus\nnimbus,distributor,nimbus\n",
        )
        .unwrap();
    })
    .await;
    let (_, _, _, found) = at(&d, "organisation `nimbus` is declared twice");
    assert!(hint(&found).contains("pipeline.yaml:"), "{}", found.render());

    // A file that is not there: the error is at the `url` in the pipeline.
    let d = problems(|dir| std::fs::remove_file(dir.join("orgs/resellers.ndjson")).unwrap()).await;
    let (file, _, _, _) = at(&d, "cannot read organisations file `orgs/resellers.ndjson`");
    assert_eq!(file, "pipeline.yaml");
}

fn hint(d: &billflow::Diagnostic) -> String {
    d.hint.clone().unwrap_or_default()
}

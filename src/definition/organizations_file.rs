//! Organisations listed in a file (`organizations: [{ url: resellers.csv }]`), so a chain
//! with thousands of resellers is not restated in the pipeline. A CSV file (with a header)
//! or NDJSON, one organisation per row, with the keys an inline organisation has: `id`,
//! `tier`, and optionally `name`, `upstream` and `currency` (an empty cell is no value).
//! Other columns (an export's `country`, `segment`...) are ignored, except one spelled
//! like a misspelt key, which is an error. Every value keeps its file, line and column,
//! so validation points into the file as it points into the pipeline.

use std::collections::HashMap;
use std::sync::Arc;

use super::diagnostics::{Diagnostics, Location, SourceFile, did_you_mean};
use super::model::{Organization, OrganizationFile, Pipeline, is_url};
use super::reader::{Text, is_identifier, not_an_identifier};

const KEYS: &[&str] = &["id", "name", "tier", "upstream", "currency"];

/// Read every file of `p.organization_files` into `p.organizations`, each at its place in
/// the list. Problems are collected; rows with one are left out.
pub fn read_into(p: &mut Pipeline, diags: &mut Diagnostics) {
    let mut read: Vec<(usize, Vec<Organization>)> = Vec::new();
    for f in &p.organization_files {
        if let Some(orgs) = read_file(p, f, diags) {
            read.push((f.position, orgs));
        }
    }
    // From the last position back, so earlier positions stay valid.
    for (position, orgs) in read.into_iter().rev() {
        let at = position.min(p.organizations.len());
        p.organizations.splice(at..at, orgs);
    }
}

fn read_file(p: &Pipeline, f: &OrganizationFile, diags: &mut Diagnostics) -> Option<Vec<Organization>> {
    let url = &f.url;
    if is_url(&url.value) {
        diags.error(format!("organisations are read from a local file, not `{}`", url.value), Some(url.location.clone())).hint =
            Some("copy the file next to the pipeline: organisations are needed to check the pipeline, before any data is read".into());
        return None;
    }
    let path = match p.confine(&url.value) {
        Ok(path) => path,
        Err(e) => {
            diags.error(e.to_string(), Some(url.location.clone())).hint =
                Some("with --sandbox DIR, every file the pipeline names lies under DIR".into());
            return None;
        }
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            diags
                .error(
                    format!("cannot read organisations file `{}`: {e}", url.value),
                    Some(url.location.clone()),
                )
                .hint = Some("the path is relative to the pipeline file".into());
            return None;
        }
    };
    let format = match (&f.format, path.extension().and_then(|e| e.to_str())) {
        (Some(t), _) => t.value.clone(),
        (None, Some("csv" | "tsv" | "txt")) => "csv".into(),
        (None, Some("json" | "ndjson" | "jsonl")) => "ndjson".into(),
        (None, _) => {
            let d = diags.error(
                format!("cannot tell the format of `{}` from its name", url.value),
                Some(url.location.clone()),
            );
            d.expected = Some("a .csv, .tsv, .ndjson or .jsonl file, or `format: csv` or `format: ndjson`".into());
            return None;
        }
    };
    let file = SourceFile::new(&path, text.strip_prefix('\u{feff}').unwrap_or(&text));
    let rows = if format == "csv" {
        let tab = path.extension().is_some_and(|e| e == "tsv");
        let delimiter = match &f.delimiter {
            Some(d) if d.value == "\\t" => b'\t',
            Some(d) if d.value.len() == 1 => d.value.as_bytes()[0],
            Some(d) => {
                diags
                    .error(format!("`{}` is not one character", d.value), Some(d.location.clone()))
                    .expected = Some("one character, or `\\t` for a tab".into());
                return None;
            }
            None if tab => b'\t',
            None => b',',
        };
        csv_rows(&file, delimiter, diags)?
    } else {
        ndjson_rows(&file, diags)?
    };
    Some(
        rows.into_iter()
            .filter_map(|row| organization(row, &file, diags))
            .collect(),
    )
}

/// One row: the values of the known keys present in it, located.
type Row = HashMap<&'static str, Text>;

fn csv_rows(file: &Arc<SourceFile>, delimiter: u8, diags: &mut Diagnostics) -> Option<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(file.text.as_bytes());
    let header = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            diags.error(
                format!("not a CSV file of organisations: {e}"),
                Some(Location::start_of(file)),
            );
            return None;
        }
    };
    let columns = known_columns(header.iter().map(str::trim).enumerate(), file, diags)?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(1);
                diags.error(
                    format!("not a CSV row: {e}"),
                    Some(Location::at_line_column(file, line, 1)),
                );
                continue;
            }
        };
        let Some(position) = record.position() else { continue };
        let line = position.line() as usize;
        let row: Row = columns
            .iter()
            .filter_map(|&(i, key)| {
                let value = record.get(i)?.trim();
                let range = record.range(i)?;
                // The field's byte offset: the record's start, the bytes of the fields
                // before it and their delimiters (exact for unquoted fields).
                let offset = position.byte() as usize + range.start + i;
                (!value.is_empty()).then(|| (key, located(file, value, line, offset)))
            })
            .collect();
        if !row.is_empty() {
            rows.push(row);
        }
    }
    Some(rows)
}

fn ndjson_rows(file: &Arc<SourceFile>, diags: &mut Diagnostics) -> Option<Vec<Row>> {
    let mut rows = Vec::new();
    let mut offset = 0;
    let mut checked_keys = false;
    for (i, line) in file.text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        if line.trim().is_empty() {
            continue;
        }
        let object: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(line) {
            Ok(o) => o,
            Err(e) => {
                let d = diags.error(
                    format!("not a JSON object: {e}"),
                    Some(Location::at_line_column(file, i + 1, e.column().max(1))),
                );
                d.expected = Some("one JSON object per line, with `id` and `tier`".into());
                continue;
            }
        };
        if !checked_keys {
            // As for a CSV header: the first row's keys say what the file holds.
            checked_keys = true;
            known_columns(object.keys().map(String::as_str).enumerate(), file, diags)?;
        }
        let row: Row = KEYS
            .iter()
            .filter_map(|&key| {
                let value = match object.get(key)? {
                    serde_json::Value::String(s) => s.trim().to_string(),
                    serde_json::Value::Null => return None,
                    other => other.to_string(),
                };
                let at = line.find(&format!("\"{key}\"")).unwrap_or(0);
                (!value.is_empty()).then(|| (key, located(file, &value, i + 1, start + at)))
            })
            .collect();
        rows.push(row);
    }
    Some(rows)
}

/// The columns that are organisation keys, by position. A column named like a misspelt
/// key is an error (`upsteam`); others are ignored.
fn known_columns<'a>(
    names: impl Iterator<Item = (usize, &'a str)>,
    file: &Arc<SourceFile>,
    diags: &mut Diagnostics,
) -> Option<Vec<(usize, &'static str)>> {
    let mut known = Vec::new();
    let mut ok = true;
    for (i, name) in names {
        if let Some(key) = KEYS.iter().find(|k| **k == name) {
            known.push((i, *key));
        } else if let Some(hint) = did_you_mean(name, KEYS.iter().copied()) {
            let d = diags.error(
                format!("unknown organisation column `{name}`"),
                Some(Location::start_of(file)),
            );
            d.expected = Some("id, tier, name, upstream, currency (other columns are ignored)".into());
            d.hint = Some(hint);
            ok = false;
        }
    }
    for required in ["id", "tier"] {
        if !known.iter().any(|(_, k)| *k == required) {
            let d = diags.error(
                format!("the organisations file has no `{required}` column"),
                Some(Location::start_of(file)),
            );
            d.expected = Some("a header with id and tier, and optionally name, upstream, currency".into());
            ok = false;
        }
    }
    ok.then_some(known)
}

fn located(file: &Arc<SourceFile>, value: &str, line: usize, offset: usize) -> Text {
    let offset = offset.min(file.text.len());
    let line_start = file.text[..offset].rfind('\n').map_or(0, |n| n + 1);
    Text {
        value: value.to_string(),
        location: Location {
            file: file.clone(),
            line,
            column: file.text[line_start..offset].chars().count() + 1,
            offset,
            len: value.chars().count().max(1),
        },
    }
}

fn organization(mut row: Row, file: &Arc<SourceFile>, diags: &mut Diagnostics) -> Option<Organization> {
    let line = row.values().map(|t| t.location.line).min().unwrap_or(1);
    let mut missing = |key: &str| {
        let d = diags.error(
            format!("this organisation has no `{key}`"),
            Some(Location::at_line_column(file, line, 1)),
        );
        d.expected = Some(format!("a value in the `{key}` column"));
    };
    for key in ["id", "tier"] {
        if !row.contains_key(key) {
            missing(key);
            return None;
        }
    }
    let (Some(id), Some(tier)) = (row.remove("id"), row.remove("tier")) else {
        return None;
    };
    let mut ok = true;
    for (text, what) in [(&id, "organisation id"), (&tier, "tier name")] {
        if !is_identifier(&text.value) {
            not_an_identifier(diags, text, what);
            ok = false;
        }
    }
    ok.then(|| Organization {
        name: row.remove("name").map(|n| n.value).unwrap_or_else(|| id.value.clone()),
        id,
        tier,
        upstream: row.remove("upstream"),
        currency: row.remove("currency"),
        level: 0,
    })
}

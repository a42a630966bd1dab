//! Stage cases as files: `tests/stages/<kind>/<case>/` holds a pipeline (`pipeline.yaml`,
//! whose comments say what the case shows and how its expected values were computed),
//! its input and reference files, and `expected.txt`: what checking and running it for
//! period 2026-10 gives, rendered by [`render`] (each stream's status, counts, control
//! totals, published rows and refused rows, or the diagnostics of a pipeline that does
//! not check). One harness runs them all.
//!
//! `BILLFLOW_BLESS=1 cargo test --test it cases` rewrites every `expected.txt` from what
//! billflow gives now: read the diff before committing it.
//!
//! The registry test checks that every stage kind has a case folder and a docs section.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use billflow::execution::{NoProgress, Status};
use billflow::{Period, RunOptions};

use crate::common::*;

fn cases_root() -> PathBuf {
    repo().join("tests/stages")
}

/// Every case folder, sorted: `tests/stages/<kind>/<case>/`.
fn case_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for kind in sorted_dirs(&cases_root()) {
        out.extend(sorted_dirs(&kind));
    }
    out
}

fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_files(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Where a diagnostic points, without the temporary directory: `file:line:column`.
fn location(l: &Option<billflow::definition::Location>) -> String {
    match l {
        Some(l) => {
            let file = l
                .file
                .path
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default();
            format!("{file}:{}:{}", l.line, l.column)
        }
        None => "-".into(),
    }
}

/// What checking and running the case's pipeline gives, as text.
pub async fn render(case: &Path) -> String {
    let tmp = tempfile::tempdir().unwrap();
    copy_files(case, tmp.path());
    let pipeline = tmp.path().join("pipeline.yaml");
    let engine = engine();
    let mut out = String::new();
    let plan = match billflow::check(&engine, &pipeline).await {
        Ok(plan) => plan,
        Err(diags) => {
            out.push_str("invalid\n");
            for d in &diags.list {
                let _ = writeln!(out, "-- {}: {}", location(&d.location), d.message);
                if let Some(e) = &d.expected {
                    let _ = writeln!(out, "   expected: {e}");
                }
                if let Some(h) = &d.hint {
                    let _ = writeln!(out, "   hint: {h}");
                }
            }
            return out;
        }
    };
    let options = RunOptions {
        period: Period::parse("2026-10").unwrap(),
        warehouse: tmp.path().join("warehouse").into(),
        until_level: None,
    };
    let report = engine.run(Arc::new(plan), options, Arc::new(NoProgress)).await;
    for s in &report.streams {
        let status = format!("{:?}", s.status).to_lowercase();
        let _ = writeln!(out, "== stream {}: {status}", s.stream);
        if let Some(e) = &s.error {
            if let Some(stage) = &e.stage {
                let _ = writeln!(out, "stage: {stage}");
            }
            let _ = writeln!(out, "error: {}", e.message);
            let _ = writeln!(out, "at: {}", location(&e.location));
            if let Some(h) = &e.hint {
                let _ = writeln!(out, "hint: {h}");
            }
        }
        if s.status != Status::Written {
            continue;
        }
        let _ = writeln!(
            out,
            "rows in {}, out {}, rejected {}",
            s.rows_in, s.rows_out, s.rows_rejected
        );
        for (stage, what, n) in &s.removed {
            let _ = writeln!(out, "removed by {stage}: {n} ({what})");
        }
        if !s.control_totals.is_empty() {
            let totals: Vec<String> = s.control_totals.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "control totals: {}", totals.join(", "));
        }
        let dir = s.batch_dir.clone().unwrap();
        out.push_str("-- rows\n");
        if s.rows_out > 0 {
            for row in parquet_rows(&dir.join("data")).await.1 {
                let _ = writeln!(out, "{row}");
            }
        }
        let mut rejects: Vec<PathBuf> = std::fs::read_dir(dir.join("rejects"))
            .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        rejects.sort();
        for file in rejects {
            let _ = writeln!(out, "-- rejects/{}", file.file_name().unwrap().to_string_lossy());
            for row in parquet_rows(&file).await.1 {
                let _ = writeln!(out, "{row}");
            }
        }
    }
    out
}

/// The first lines where `want` and `got` differ, for the failure message.
fn first_difference(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let at = w.iter().zip(&g).take_while(|(a, b)| a == b).count();
    format!(
        "first difference at line {}:\n  expected: {}\n  got:      {}",
        at + 1,
        w.get(at).copied().unwrap_or("<end>"),
        g.get(at).copied().unwrap_or("<end>")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_case_gives_its_expected_output() {
    let bless = std::env::var_os("BILLFLOW_BLESS").is_some();
    let mut failures = Vec::new();
    let cases = case_dirs();
    assert!(!cases.is_empty(), "no cases under {}", cases_root().display());
    for case in &cases {
        let got = render(case).await;
        let expected_file = case.join("expected.txt");
        if bless {
            std::fs::write(&expected_file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if want != got {
            let name = case.strip_prefix(cases_root()).unwrap().display().to_string();
            failures.push(format!("{name}: {}\n--- got:\n{got}", first_difference(&want, &got)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from their expected.txt (BILLFLOW_BLESS=1 rewrites them; read the diff):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// The heading names of the stage-kind sections in the docs: `## kind: markup, discount,
/// margin` names three.
fn documented_kinds() -> Vec<String> {
    let mut out = Vec::new();
    for doc in ["docs/transformations.md", "docs/pipeline-reference.md"] {
        let text = std::fs::read_to_string(repo().join(doc)).unwrap();
        for line in text.lines() {
            let heading = line.trim_start_matches('#');
            if heading.len() == line.len() {
                continue;
            }
            if let Some(names) = heading.trim().strip_prefix("kind:") {
                out.extend(names.split(',').map(|n| n.trim().to_string()));
            }
        }
    }
    out
}

#[test]
fn every_stage_kind_has_a_docs_section_and_a_case() {
    let documented = documented_kinds();
    let mut missing = Vec::new();
    for kind in billflow::stages::kind_names() {
        if !documented.iter().any(|d| d == kind) {
            missing.push(format!("`{kind}` has no `## kind: {kind}` section in docs/"));
        }
        let cases = sorted_dirs(&cases_root().join(kind));
        if !cases
            .iter()
            .any(|c| c.join("pipeline.yaml").exists() && c.join("expected.txt").exists())
        {
            missing.push(format!(
                "`{kind}` has no case folder tests/stages/{kind}/<case>/ with pipeline.yaml and expected.txt"
            ));
        }
    }
    for dir in sorted_dirs(&cases_root()) {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if billflow::stages::kind(&name).is_none() {
            missing.push(format!("tests/stages/{name}/ is not a stage kind"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// Each `kind:` section's settings table, from the first `| key |` line to the end of the
/// table: (doc file, kinds the heading names, first line, line after the table).
fn settings_tables(doc: &str, text: &str) -> Vec<(String, Vec<String>, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let heading = line.trim_start_matches('#');
        let Some(names) = (heading.len() < line.len())
            .then(|| heading.trim().strip_prefix("kind:"))
            .flatten()
        else {
            continue;
        };
        let kinds: Vec<String> = names.split(',').map(|n| n.trim().to_string()).collect();
        let section_end = (i + 1..lines.len())
            .find(|j| lines[*j].starts_with('#'))
            .unwrap_or(lines.len());
        let Some(start) = (i + 1..section_end).find(|j| lines[*j].starts_with("| key |")) else {
            out.push((doc.to_string(), kinds, section_end, section_end));
            continue;
        };
        let end = (start..section_end)
            .find(|j| !lines[*j].starts_with('|'))
            .unwrap_or(section_end);
        out.push((doc.to_string(), kinds, start, end));
    }
    out
}

#[test]
fn every_kind_documents_the_settings_it_declares() {
    let bless = std::env::var_os("BILLFLOW_BLESS").is_some();
    let mut problems = Vec::new();
    for doc in ["docs/transformations.md", "docs/pipeline-reference.md"] {
        let path = repo().join(doc);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        // From the last section up, so earlier line numbers stay valid while rewriting.
        for (doc, kinds, start, end) in settings_tables(doc, &text).into_iter().rev() {
            let tables: Vec<String> = kinds
                .iter()
                .filter_map(|k| billflow::stages::kind(k))
                .map(|k| billflow::stages::settings_table(k.settings()))
                .collect();
            let Some(want) = tables.first() else { continue };
            if tables.iter().any(|t| t != want) {
                problems.push(format!(
                    "{doc}: the kinds {kinds:?} share a section but not their settings"
                ));
                continue;
            }
            let got: String = lines[start..end].iter().map(|l| format!("{l}\n")).collect();
            if &got != want {
                if bless {
                    lines.splice(start..end, want.lines().map(str::to_string));
                } else {
                    problems.push(format!(
                        "{doc}:{}: the settings table of {kinds:?} differs from their declaration \
                         (BILLFLOW_BLESS=1 rewrites it):\n{}",
                        start + 1,
                        first_difference(want, &got)
                    ));
                }
            }
        }
        if bless {
            let mut new = lines.join("\n");
            new.push('\n');
            if new != text {
                std::fs::write(&path, new).unwrap();
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

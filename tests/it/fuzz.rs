//! A fuzz target for the pipeline reader, run by `cargo test` for a bounded time: the
//! sample pipeline mutated (bytes flipped, spans cut, lines moved, duplicated and
//! re-indented, YAML-significant text and keys inserted), then read, validated, compiled
//! and, when it passes, checked against its files. Whatever the text, billflow must not
//! panic, and every problem it reports has a message and points inside the text it read.
//!
//! Each mutant is a function of (seed, index), so a failure names the mutant to replay:
//! `BILLFLOW_FUZZ_SEED=S BILLFLOW_FUZZ_ONLY=I cargo test --test it fuzz`.
//! `BILLFLOW_FUZZ_SECS` (default 20) and `BILLFLOW_FUZZ_MUTANTS` (default 4000) bound a run.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use billflow::generate::Rng;
use futures::FutureExt;

use crate::common::*;

const TOKENS: &[&str] = &[
    ":",
    ": ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "- ",
    "#",
    "&a ",
    "*a",
    "!tag ",
    "|\n",
    ">\n",
    "'",
    "\"",
    "%",
    "@",
    "`",
    "\n",
    "  ",
    "\t",
    "~",
    "null",
    "true",
    "0",
    "-1",
    "1e400",
    "2026-13-45",
    "\u{feff}",
    "\u{0}",
    "é",
    "{{ owner }}",
    "{{",
    "}}",
    "'; DROP TABLE x; --",
    "../../",
    "/etc/passwd",
    "---\n",
    "...\n",
];

const KEYS: &[&str] = &[
    "stages:",
    "- name: x",
    "- kind: rate",
    "- kind: sql",
    "kind: filter",
    "query: SELECT * FROM input",
    "extends: nimbus-rated-usage",
    "input: { stream: nope }",
    "input: { source: usage }",
    "for_each: { tier: reseller, column: reseller_id }",
    "period: usage_date",
    "columns:",
    "- { name: x, type: \"decimal(40,2)\" }",
    "schema:",
    "tier: '../x'",
    "upstream: nimbus",
    "order_by: [nope]",
    "sample: { input: a.csv, expected: b.csv }",
    "on_error: explode",
];

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len().max(1) as u64;
        let at = rng.below(len) as usize;
        match rng.below(8) {
            0 => {
                if let Some(b) = bytes.get_mut(at) {
                    *b = rng.below(128) as u8;
                }
            }
            1 => {
                let end = (at + 1 + rng.below(40) as usize).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len() as u64) as usize];
                bytes.splice(at.min(bytes.len())..at.min(bytes.len()), t.bytes());
            }
            3 => bytes.truncate(at),
            _ => {
                // Line edits: duplicate, swap, re-indent, or insert a key at some depth.
                let mut lines: Vec<String> = String::from_utf8_lossy(&bytes).lines().map(String::from).collect();
                if lines.is_empty() {
                    continue;
                }
                let i = rng.below(lines.len() as u64) as usize;
                let j = rng.below(lines.len() as u64) as usize;
                match rng.below(4) {
                    0 => {
                        let l = lines[i].clone();
                        lines.insert(j, l);
                    }
                    1 => lines.swap(i, j),
                    2 => {
                        let l = &mut lines[i];
                        if rng.below(2) == 0 {
                            l.insert_str(0, "  ");
                        } else {
                            *l = l.strip_prefix("  ").unwrap_or(l).to_string();
                        }
                    }
                    _ => {
                        let indent = " ".repeat(2 * rng.below(6) as usize);
                        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
                        lines.insert(j, format!("{indent}{key}"));
                    }
                }
                bytes = (lines.join("\n") + "\n").into_bytes();
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What reading one mutant found wrong: a panic, or a problem pointing outside the text.
async fn read_mutant(path: &std::path::Path, text: String, engine: &billflow::Engine) -> Result<&'static str, String> {
    let lines = text.lines().count() + 1;
    let outcome = AssertUnwindSafe(async {
        match billflow::definition::load_str(path, text.clone()) {
            Err(d) => {
                for e in &d.list {
                    if e.message.trim().is_empty() {
                        return Err(format!("a problem without a message: {e:?}"));
                    }
                    if let Some(loc) = &e.location
                        && loc.file.path == path
                        && (loc.line == 0 || loc.line > lines || loc.column == 0)
                    {
                        return Err(format!(
                            "`{}` points at {}:{} of {lines} lines",
                            e.message, loc.line, loc.column
                        ));
                    }
                }
                let _ = d.render();
                Ok("refused")
            }
            Ok(p) => match billflow::plan::compile(p) {
                Err(d) => {
                    let _ = d.render();
                    Ok("refused when built")
                }
                Ok(plan) => {
                    let d = engine.check(&plan).await;
                    let _ = d.render();
                    Ok(if d.is_empty() { "valid" } else { "refused when checked" })
                }
            },
        }
    })
    .catch_unwind()
    .await;
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {why}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pipeline_text_makes_the_reader_panic_or_point_outside_it() {
    let (_tmp, path) = sample_copy();
    let original = std::fs::read_to_string(&path).unwrap();
    let engine = engine();
    let seed = env_u64("BILLFLOW_FUZZ_SEED", 20261203);
    let budget = Duration::from_secs(env_u64("BILLFLOW_FUZZ_SECS", 20));
    let most = env_u64("BILLFLOW_FUZZ_MUTANTS", 4000);
    let only = std::env::var("BILLFLOW_FUZZ_ONLY")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let started = Instant::now();
    let mut seen: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut failures = Vec::new();
    for i in only.map_or(0..most, |i| i..i + 1) {
        if only.is_none() && started.elapsed() > budget {
            break;
        }
        let mut rng = Rng::new(seed, i);
        let text = mutate(&original, &mut rng);
        match read_mutant(&path, text, &engine).await {
            Ok(what) => *seen.entry(what).or_default() += 1,
            Err(why) => failures.push(format!(
                "mutant {i} (BILLFLOW_FUZZ_SEED={seed} BILLFLOW_FUZZ_ONLY={i}): {why}"
            )),
        }
    }
    println!("fuzz: seed {seed}, {:?} in {:.1?}", seen, started.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(seen.values().sum::<u64>() > 0, "no mutant was read");
    assert!(
        seen.get("refused").copied().unwrap_or(0) > 0,
        "no mutant was refused: {seen:?}"
    );
}

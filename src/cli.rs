//! Terminal rendering: progress bars while streams run, the summary table after.

use std::collections::HashMap;
use std::sync::Mutex;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, ContentArrangement, Table};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::batches::catalog::Entry;
use crate::batches::lifecycle::Event;
use crate::execution::{Progress, RunReport, Status, StreamReport};

/// One spinner per running stream, showing its current stage.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    /// Drawn on stderr when it is a terminal; invisible otherwise (logs and CI stay clean).
    pub fn new() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bars {
    fn started(&self, stream: &str, stages: usize) {
        let bar = self.multi.add(ProgressBar::new(stages as u64 + 1));
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<32} [{bar:12}] {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(stream.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        if let Ok(mut m) = self.bars.lock() {
            m.insert(stream.to_string(), bar);
        }
    }
    fn stage(&self, stream: &str, index: usize, name: &str) {
        if let Some(b) = self.bars.lock().ok().and_then(|m| m.get(stream).cloned()) {
            b.set_position(index as u64);
            b.set_message(format!("planning {name}"));
        }
    }
    fn writing(&self, stream: &str) {
        if let Some(b) = self.bars.lock().ok().and_then(|m| m.get(stream).cloned()) {
            b.set_message("executing and writing the batch");
        }
    }
    fn finished(&self, report: &StreamReport) {
        if let Some(b) = self.bars.lock().ok().and_then(|mut m| m.remove(&report.stream)) {
            b.set_position(b.length().unwrap_or(0));
            b.finish_and_clear();
        }
    }
}

fn status_text(s: &StreamReport) -> &'static str {
    match s.status {
        Status::Written => "written",
        Status::Reused => "unchanged",
        Status::Failed => "FAILED",
        Status::Skipped => "skipped",
        Status::Waiting => "WAITING",
    }
}

/// The end-of-run table: per stream and tier, rows in/out/rejected, control totals,
/// time and the batch.
pub fn summary_table(report: &RunReport) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(vec![
        "tier",
        "organisation",
        "stream",
        "status",
        "rows in",
        "rows out",
        "rejected",
        "control totals",
        "time",
        "batch",
    ]);
    for s in &report.streams {
        let totals = s
            .control_totals
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join("\n");
        t.add_row(vec![
            Cell::new(&s.tier),
            Cell::new(&s.organization),
            Cell::new(&s.stream),
            Cell::new(status_text(s)),
            Cell::new(s.rows_in).set_alignment(CellAlignment::Right),
            Cell::new(s.rows_out).set_alignment(CellAlignment::Right),
            Cell::new(s.rows_rejected).set_alignment(CellAlignment::Right),
            Cell::new(totals),
            Cell::new(format!("{:.2}s", s.elapsed.as_secs_f64())).set_alignment(CellAlignment::Right),
            Cell::new(match s.organization_batches {
                0 => s.batch_id.clone().unwrap_or_default(),
                n => format!("{}\n({n} organisation batches)", s.batch_id.clone().unwrap_or_default()),
            }),
        ]);
    }
    let mut out = format!(
        "pipeline {} - period {} - warehouse {}\n{t}\n",
        report.pipeline, report.period, report.warehouse
    );
    for s in &report.streams {
        if s.rows_rejected > 0 {
            out.push_str(&format!("{}: {} row(s) rejected, e.g.:\n", s.stream, s.rows_rejected));
            for r in &s.reject_samples {
                out.push_str(&format!("  - {r}\n"));
            }
            match (&s.batch_dir, &s.batch_location) {
                (Some(dir), _) => out.push_str(&format!(
                    "  all of them with their values: {}\n",
                    dir.join(crate::batches::REJECTS_DIR).display()
                )),
                (None, Some(url)) => out.push_str(&format!(
                    "  all of them with their values: the `rejects` files named in {url}/{}\n",
                    crate::batches::MANIFEST
                )),
                (None, None) => {}
            }
        }
    }
    for s in &report.streams {
        for (stage, what, n) in &s.removed {
            if *n > 0 {
                out.push_str(&format!("{}: stage `{stage}` removed {n} row(s) ({what})\n", s.stream));
            }
        }
    }
    for s in &report.streams {
        for note in &s.notes {
            out.push_str(&format!("{}: {note}\n", s.stream));
        }
    }
    for s in &report.streams {
        if let Some(e) = &s.error {
            let tag = if s.status == Status::Skipped {
                "skipped"
            } else {
                "error"
            };
            match &e.location {
                Some(_) => out.push_str(&format!("{tag}:\n{}\n", e.render())),
                None => out.push_str(&format!("{tag}: {e}\n")),
            }
        }
    }
    out
}

/// The columns `batch list` shows, for every output format.
const BATCH_COLUMNS: [&str; 11] = [
    "id",
    "tier",
    "organization",
    "stream",
    "period",
    "version",
    "status",
    "stale",
    "rows",
    "rejected",
    "created",
];

fn batch_row(e: &Entry) -> [String; 11] {
    let m = &e.manifest;
    [
        m.batch_id.clone(),
        m.tier.clone(),
        m.organization.clone(),
        m.stream.clone(),
        m.period.label.clone(),
        e.version.to_string(),
        e.status.name().to_string(),
        if e.stale { "stale" } else { "" }.to_string(),
        m.rows.to_string(),
        m.rows_rejected.to_string(),
        m.created_at.clone(),
    ]
}

/// `batch list` as a table.
pub fn batch_table(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "no batches\n".into();
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(BATCH_COLUMNS);
    for e in entries {
        t.add_row(batch_row(e));
    }
    format!("{t}\n")
}

/// `batch list --format json`: one JSON object a line, with the control totals.
pub fn batch_json_lines(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        let mut obj = serde_json::Map::new();
        for (k, v) in BATCH_COLUMNS.iter().zip(batch_row(e)) {
            let value = match *k {
                "version" | "rows" | "rejected" => v.parse::<u64>().map(serde_json::Value::from).unwrap_or_default(),
                _ => serde_json::Value::from(v),
            };
            obj.insert(k.to_string(), value);
        }
        obj.insert(
            "control_totals".into(),
            serde_json::to_value(&e.manifest.control_totals).unwrap_or_default(),
        );
        out.push_str(&serde_json::Value::Object(obj).to_string());
        out.push('\n');
    }
    out
}

/// `batch list --format csv`.
pub fn batch_csv(entries: &[Entry]) -> String {
    let quote = |v: &str| {
        if v.contains([',', '"', '\n']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_string()
        }
    };
    let mut out = BATCH_COLUMNS.join(",");
    out.push('\n');
    for e in entries {
        let row: Vec<String> = batch_row(e).iter().map(|v| quote(v)).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// `batch history`: one line an event.
pub fn batch_history(history: &[Event]) -> String {
    let mut out = String::new();
    for e in history {
        out.push_str(&format!(
            "{:>3}  {}  {:<9}  {:>10} -> {:<10}  {}{}{}\n",
            e.seq,
            e.at,
            e.action.name(),
            e.from.map_or("-", |s| s.name()),
            e.to.name(),
            e.actor,
            e.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default(),
            e.by.as_ref().map(|b| format!(" (by {b})")).unwrap_or_default(),
        ));
    }
    if out.is_empty() {
        out.push_str("no events: the batch is ready (its run recorded nothing yet)\n");
    }
    out
}

/// `batch show`: what the batch is, its totals, what it refused, and its history.
pub fn batch_details(e: &Entry, history: &[Event]) -> String {
    let m = &e.manifest;
    let mut out = format!(
        "batch {}\n  stream {} of {} ({} tier), period {} [{} .. {})\n  version {}, status {}{}\n  rows {} (in {}, rejected {}), created {}\n  at {}\n",
        m.batch_id,
        m.stream,
        m.organization,
        m.tier,
        m.period.label,
        m.period.start,
        m.period.end,
        e.version,
        e.status.name(),
        if e.stale {
            " (stale: built from a superseded or voided batch)"
        } else {
            ""
        },
        m.rows,
        m.rows_in,
        m.rows_rejected,
        m.created_at,
        e.dir()
    );
    if !m.audience.is_empty() {
        out.push_str(&format!("  published to: {}\n", m.audience.join(", ")));
    }
    out.push_str("control totals:\n");
    for (k, v) in &m.control_totals {
        out.push_str(&format!("  {k} {v}\n"));
    }
    if !m.rejects.is_empty() {
        out.push_str("rejects:\n");
        for f in &m.rejects {
            out.push_str(&format!("  {}\n", f.path));
        }
    }
    out.push_str("history:\n");
    for line in batch_history(history).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

/// `batch diff`: the rows and totals a new version changes.
pub fn batch_diff(a: &Entry, b: &Entry, d: &crate::batches::diff::Diff) -> String {
    let mut out = format!(
        "{} (version {}) -> {} (version {})\nrows: {} added, {} removed, {} changed, {} unchanged\n",
        a.id(),
        a.version,
        b.id(),
        b.version,
        d.added,
        d.removed,
        d.changed,
        d.unchanged
    );
    if !d.changed_columns.is_empty() {
        let cols: Vec<String> = d.changed_columns.iter().map(|(c, n)| format!("{c} ({n})")).collect();
        out.push_str(&format!("changed columns: {}\n", cols.join(", ")));
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(["control total", a.id(), b.id()]);
    for (name, (x, y)) in &d.totals {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        t.add_row([name.clone(), show(x), show(y)]);
    }
    out.push_str(&format!("{t}\n"));
    out
}

/// `billflow reconcile`: what was checked, and each difference found.
pub fn reconcile_report(period: &str, report: &crate::batches::reconcile::Report) -> String {
    use crate::batches::reconcile::Against;
    let mut out = format!(
        "period {period}: {} published batch(es), {} batch(es) built from them\n",
        report.published, report.consumers
    );
    if report.clean() {
        out.push_str("everything reconciles: each published batch's files add up to its control totals, and each batch below read exactly what was published\n");
        return out;
    }
    let name = |e: &Entry| {
        format!(
            "{} ({} {} `{}`)",
            e.id(),
            e.manifest.tier,
            e.manifest.organization,
            e.manifest.stream
        )
    };
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(vec!["published batch", "against", "what", "published", "found"]);
    for f in &report.findings {
        let against = match &f.against {
            Against::DataFiles { .. } => "its data files".to_string(),
            Against::Consumer(c) => format!("read by {}", name(c)),
            Against::Stale { consumer, .. } => format!("{} (stale)", name(consumer)),
        };
        let extra = match &f.against {
            Against::DataFiles { problem: Some(p) } => Some(p.clone()),
            Against::Stale { read, .. } => Some(format!("built from {read}, not from the published version")),
            _ => None,
        };
        if let Some(extra) = extra {
            t.add_row(vec![
                name(&f.batch),
                against.clone(),
                extra,
                String::new(),
                String::new(),
            ]);
        }
        for d in &f.differences {
            t.add_row(vec![
                name(&f.batch),
                against.clone(),
                d.what.clone(),
                d.published.clone(),
                d.found.clone(),
            ]);
        }
    }
    out.push_str(&format!("{t}\n{} difference(s)\n", report.findings.len()));
    out
}

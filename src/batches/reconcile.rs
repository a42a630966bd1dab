//! `billflow reconcile`: for every published batch of a period, its data files still add
//! up to the control totals it was published with, and every current batch of the tier
//! below that was built from it read exactly that (rows and totals, recorded by its run),
//! from the version that is published now.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::{Expr, ParquetReadOptions, SessionContext, ident, lit};

use super::Consumed;
use super::catalog::Entry;
use super::lifecycle::Status;

/// One total that differs: what was published and what was found.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// `rows`, or a decimal column.
    pub what: String,
    pub published: String,
    pub found: String,
}

/// A published batch and one place that does not agree with it.
#[derive(Clone, Debug)]
pub struct Finding {
    pub batch: Entry,
    /// What disagrees: its own data files, or a batch of the tier below.
    pub against: Against,
    pub differences: Vec<Difference>,
}

#[derive(Clone, Debug)]
pub enum Against {
    /// The batch's data files (a file changed or went missing after it was written).
    DataFiles { problem: Option<String> },
    /// A current batch built from it, and what its run read.
    Consumer(Box<Entry>),
    /// A current batch built from an older version of it (superseded or voided), which
    /// has not been built again from this one.
    Stale { consumer: Box<Entry>, read: String },
}

/// What `reconcile` checked and found.
#[derive(Debug, Default)]
pub struct Report {
    pub published: usize,
    pub consumers: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// How `read` differs from what was published (`rows`, `totals`), if it does.
pub fn differences(rows: u64, totals: &BTreeMap<String, String>, read: &Consumed) -> Vec<Difference> {
    let mut out = Vec::new();
    if rows != read.rows {
        out.push(Difference {
            what: "rows".into(),
            published: rows.to_string(),
            found: read.rows.to_string(),
        });
    }
    let names: std::collections::BTreeSet<&String> = totals.keys().chain(read.control_totals.keys()).collect();
    for name in names {
        let (a, b) = (totals.get(name), read.control_totals.get(name));
        // A batch without rows has no totals where a sum over no rows is zero.
        let zero = |v: Option<&String>| v.is_none_or(|t| t.chars().all(|c| matches!(c, '0' | '.' | '-')));
        if a != b && !(zero(a) && zero(b)) {
            let text = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(none)".into());
            out.push(Difference {
                what: name.clone(),
                published: text(a),
                found: text(b),
            });
        }
    }
    out
}

/// [`differences`] as one line, if any.
pub fn difference(rows: u64, totals: &BTreeMap<String, String>, read: &Consumed) -> Option<String> {
    let d = differences(rows, totals, read);
    (!d.is_empty()).then(|| {
        d.iter()
            .map(|d| format!("{} {} (published {})", d.what, d.found, d.published))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Reconcile the published batches of `period` among `entries` (what the reviewer sees).
pub async fn reconcile(entries: &[Entry], period: &str) -> Result<Report, datafusion::error::DataFusionError> {
    let ctx = SessionContext::new();
    if let Some(e) = entries.first() {
        e.root.register(&ctx.runtime_env());
    }
    let mut report = Report::default();
    let current = |e: &Entry| !matches!(e.status, Status::Superseded | Status::Voided | Status::Rejected);
    for b in entries
        .iter()
        .filter(|e| e.status == Status::Published && e.manifest.period.label == period)
    {
        report.published += 1;
        let (found, problem) = match recompute(&ctx, b).await {
            Ok(found) => (Some(found), None),
            Err(e) => (None, Some(e)),
        };
        let in_files = match &found {
            Some(found) => differences(b.manifest.rows, &b.manifest.control_totals, found),
            None => Vec::new(),
        };
        if problem.is_some() || !in_files.is_empty() {
            report.findings.push(Finding {
                batch: b.clone(),
                against: Against::DataFiles { problem },
                differences: in_files,
            });
        }
        // The versions of this batch: other batches of its stream, organisation and period.
        let versions: Vec<&Entry> = entries
            .iter()
            .filter(|o| {
                let (m, n) = (&o.manifest, &b.manifest);
                (&m.stream, &m.organization, &m.period.label) == (&n.stream, &n.organization, &n.period.label)
            })
            .collect();
        for c in entries.iter().filter(|c| current(c)) {
            for input in &c.manifest.inputs {
                let Some(read_id) = &input.batch_id else { continue };
                if *read_id == b.manifest.batch_id {
                    report.consumers += 1;
                    let Some(read) = &input.consumed else { continue };
                    let found = differences(b.manifest.rows, &b.manifest.control_totals, read);
                    if !found.is_empty() {
                        report.findings.push(Finding {
                            batch: b.clone(),
                            against: Against::Consumer(Box::new(c.clone())),
                            differences: found,
                        });
                    }
                } else if let Some(old) = versions.iter().find(|v| v.id() == read_id && !current(v)) {
                    report.consumers += 1;
                    report.findings.push(Finding {
                        batch: b.clone(),
                        against: Against::Stale {
                            consumer: Box::new(c.clone()),
                            read: format!("{} ({})", old.id(), old.status.name()),
                        },
                        differences: Vec::new(),
                    });
                }
            }
        }
    }
    Ok(report)
}

/// A batch's rows and the sum of each decimal column, from its data files.
async fn recompute(ctx: &SessionContext, b: &Entry) -> Result<Consumed, String> {
    let files = b.data_files();
    for (key, _) in b.data_keys() {
        let found =
            object_store::ObjectStoreExt::head(&*b.root.store(), &object_store::path::Path::from(key.as_str())).await;
        if let Err(e) = found {
            let f = b.root.url_of(&key);
            return Err(match e {
                object_store::Error::NotFound { .. } => format!("data file {f} is missing"),
                e => format!("data file {f} cannot be read: {e}"),
            });
        }
    }
    if files.is_empty() {
        // No rows: every total it was published with is zero.
        return Ok(Consumed {
            rows: 0,
            control_totals: b.manifest.control_totals.clone(),
        });
    }
    let failed = |e: datafusion::error::DataFusionError| format!("reading its data files: {}", e.strip_backtrace());
    let df = ctx
        .read_parquet(files, ParquetReadOptions::default().file_extension(".parquet"))
        .await
        .map_err(failed)?;
    let decimals = crate::engine::money::decimal_columns(df.schema().as_arrow());
    let mut aggs: Vec<Expr> = vec![count(lit(1)).alias("rows")];
    aggs.extend(decimals.iter().map(|(c, _)| sum(ident(c)).alias(c)));
    let batches = df
        .aggregate(vec![], aggs)
        .map_err(failed)?
        .collect()
        .await
        .map_err(failed)?;
    let mut out = Consumed::default();
    if let Some(row) = batches.iter().find(|b| b.num_rows() > 0) {
        out.rows = row.column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0) as u64;
        for (i, (name, scale)) in decimals.iter().enumerate() {
            let a = row.column(1 + i).as_primitive::<arrow::datatypes::Decimal128Type>();
            let v = if a.is_valid(0) { a.value(0) } else { 0 };
            out.control_totals
                .insert(name.clone(), super::format_decimal(v, *scale));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_empty_batch_without_totals_reconciles_with_zero_sums() {
        let read = Consumed {
            rows: 0,
            control_totals: totals(&[("cost", "0.0000")]),
        };
        assert_eq!(differences(0, &BTreeMap::new(), &read), vec![]);
        // A missing total is zero only when the other side is zero too.
        let read = Consumed {
            rows: 0,
            control_totals: totals(&[("cost", "0.0100")]),
        };
        let d = differences(0, &BTreeMap::new(), &read);
        assert_eq!(
            (d[0].what.as_str(), d[0].published.as_str(), d[0].found.as_str()),
            ("cost", "(none)", "0.0100")
        );
        assert_eq!(
            difference(
                2,
                &totals(&[("cost", "1.50")]),
                &Consumed {
                    rows: 1,
                    control_totals: totals(&[("cost", "1.25")])
                }
            ),
            Some("rows 1 (published 2), cost 1.25 (published 1.50)".into())
        );
    }
}

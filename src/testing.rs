//! `billflow test`: run each stream that declares a `sample` on its sample input and
//! compare the result with the expected rows, the way dbt users test models before a run.

use std::ops::Not;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{CsvReadOptions, DataFrame};

use crate::definition::{InputRef, TableDef, TableFormat, arrow_schema};
use crate::execution::{Engine, contract, inputs};
use crate::plan::{Period, Plan};

#[derive(Debug)]
pub struct SampleOutcome {
    pub stream: String,
    pub expected_rows: usize,
    pub actual_rows: usize,
    /// Expected rows the stream did not produce.
    pub missing: Vec<String>,
    /// Rows the stream produced that were not expected.
    pub unexpected: Vec<String>,
    /// Rows refused by the input or the contract, with their reason.
    pub rejected: Vec<String>,
    pub error: Option<String>,
}

impl SampleOutcome {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.missing.is_empty() && self.unexpected.is_empty()
    }
}

/// Each row as `col=value, ...` text, sorted: order-insensitive comparison.
pub fn rows_as_text(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<String>, String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        for row in 0..b.num_rows() {
            let cells: Vec<String> = schema
                .fields()
                .iter()
                .zip(&formatters)
                .map(|(f, fmt)| format!("{}={}", f.name(), fmt.value(row)))
                .collect();
            out.push(cells.join(", "));
        }
    }
    out.sort();
    Ok(out)
}

/// Multiset difference a - b of sorted lists.
fn minus(a: &[String], b: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() {
        if j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && b[j] < a[i] {
            j += 1;
        } else {
            out.push(a[i].clone());
            i += 1;
        }
    }
    out
}

pub async fn run_samples(engine: &Engine, plan: &Plan) -> Vec<SampleOutcome> {
    let mut out = Vec::new();
    for ps in &plan.streams {
        let s = plan.def(ps);
        let Some(sample) = &s.sample else { continue };
        let mut outcome = SampleOutcome {
            stream: s.id.value.clone(),
            expected_rows: 0,
            actual_rows: 0,
            missing: vec![],
            unexpected: vec![],
            rejected: vec![],
            error: None,
        };
        if let Err(e) = run_one(
            engine,
            plan,
            ps,
            &sample.input.value,
            &sample.expected.value,
            &mut outcome,
        )
        .await
        {
            outcome.error = Some(e);
        }
        out.push(outcome);
    }
    out
}

async fn run_one(
    engine: &Engine,
    plan: &Plan,
    ps: &crate::plan::PlannedStream,
    input_path: &str,
    expected_path: &str,
    outcome: &mut SampleOutcome,
) -> Result<(), String> {
    let p = &plan.pipeline;
    let s = plan.def(ps);
    let ctx = engine.session();
    inputs::register_references(&ctx, p, &[]).await?;
    let input_file: PathBuf = p.resolve(input_path);
    let format_of = |path: &PathBuf| {
        let lower = path.to_string_lossy().to_ascii_lowercase();
        if lower.ends_with(".parquet") {
            TableFormat::Parquet
        } else if lower.ends_with(".json") || lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
            TableFormat::Ndjson
        } else {
            TableFormat::Csv {
                delimiter: b',',
                has_header: true,
            }
        }
    };
    let mut rejects: Option<DataFrame> = None;
    let input = match &s.input {
        InputRef::Source(name) => {
            let t = p
                .source(&name.value)
                .ok_or_else(|| format!("unknown source `{}`", name.value))?;
            let as_sample = TableDef {
                name: t.name.clone(),
                url: t.url.clone(),
                format: format_of(&input_file),
                schema: t.schema.clone(),
                location: t.location.clone(),
            };
            let si = inputs::read_source_files(&ctx, &as_sample, std::slice::from_ref(&input_file), None).await?;
            rejects = si.rejects;
            si.df
        }
        InputRef::Stream(name) => {
            let up = p
                .stream(&name.value)
                .ok_or_else(|| format!("unknown stream `{}`", name.value))?;
            let schema = arrow_schema(&up.columns, true);
            inputs::read_files(
                &ctx,
                std::slice::from_ref(&input_file),
                format_of(&input_file),
                Some(&schema),
            )
            .await?
        }
    };
    let vars = Engine::vars(plan, ps, &Period::current_month());
    let side = crate::stages::side::SideOutputs::default();
    let df = crate::execution::apply_stages(ps, input, &ctx, &vars, &side, false, &|_, _| {})
        .await
        .map_err(|(st, e)| format!("stage `{}`: {e}", st.name))?;
    let raw: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    if let Some(d) = contract::check_schema(&s.id.value, "last", &raw, &s.columns)
        .into_iter()
        .next()
    {
        return Err(d.to_string());
    }
    let checks = contract::row_checks(&raw, &s.columns);
    let contract_rejects = inputs::reject_rows(df.clone(), checks.bad.clone(), checks.reason, "contract")?;
    let actual = df
        .filter(checks.bad.not())
        .and_then(|d| d.select(contract::output_projection(&raw, &s.columns)))
        .map_err(|e| e.strip_backtrace())?;
    let out_schema: SchemaRef = Arc::new(arrow_schema(&s.columns, true));
    let actual_batches = actual.collect().await.map_err(|e| e.strip_backtrace())?;
    let expected_file = p.resolve(expected_path);
    let expected = ctx
        .read_csv(
            expected_file.to_string_lossy().to_string(),
            CsvReadOptions::new()
                .has_header(true)
                .schema(&out_schema)
                .file_extension(""),
        )
        .await
        .map_err(|e| e.strip_backtrace())?
        .collect()
        .await
        .map_err(|e| format!("reading {}: {}", expected_file.display(), e.strip_backtrace()))?;
    let a = rows_as_text(&out_schema, &actual_batches)?;
    let e = rows_as_text(&out_schema, &expected)?;
    outcome.actual_rows = a.len();
    outcome.expected_rows = e.len();
    outcome.missing = minus(&e, &a);
    outcome.unexpected = minus(&a, &e);
    let stage_rejects = side.take_rejects().into_iter().map(|r| r.rows);
    for rej in rejects
        .into_iter()
        .chain(stage_rejects)
        .chain(std::iter::once(contract_rejects))
    {
        let batches = rej.collect().await.map_err(|e| e.strip_backtrace())?;
        let schema: SchemaRef = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
        outcome.rejected.extend(rows_as_text(&schema, &batches)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::minus;

    #[test]
    fn multiset_difference() {
        let a: Vec<String> = ["a", "b", "b", "c"].iter().map(|s| s.to_string()).collect();
        let b: Vec<String> = ["b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(minus(&a, &b), vec!["a", "b"]);
        assert_eq!(minus(&b, &a), vec!["d"]);
    }
}

//! Reading a stream's input and the pipeline's references into DataFusion, lazily.
//!
//! A source with a declared schema is read as text first and converted column by column
//! with `try_cast`, so a row that does not parse is refused (and written to the rejects
//! file with its reason) instead of failing the run or turning into a silent NULL.

use std::ops::Not;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::{Expr, cast, try_cast};
use datafusion::prelude::{CsvReadOptions, DataFrame, JsonReadOptions, ParquetReadOptions, SessionContext, ident, lit};
use datafusion::scalar::ScalarValue;

use super::contract;
use crate::batches::{InputInfo, file_fingerprint};
use crate::definition::{Pipeline, TableDef, TableFormat, arrow_schema};
use crate::stages::tap::Tap;

/// The files a table's url names, sorted (so fingerprints and reads are stable).
pub fn table_files(pipeline: &Pipeline, t: &TableDef) -> Result<Vec<PathBuf>, String> {
    let full = pipeline.resolve(&t.url.value);
    let pattern = full.to_string_lossy().to_string();
    let mut files: Vec<PathBuf> = glob::glob(&pattern)
        .map_err(|e| format!("`{}` is not a valid glob: {}", t.url.value, e.msg))?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "no file matches `{}` (in {})",
            t.url.value,
            pipeline.dir.display()
        ));
    }
    Ok(files)
}

pub fn fingerprint_table(kind: &str, pipeline: &Pipeline, t: &TableDef) -> Result<InputInfo, String> {
    let files = table_files(pipeline, t)?;
    let mut parts = Vec::with_capacity(files.len());
    for f in &files {
        let fp = file_fingerprint(f).map_err(|e| format!("reading {}: {e}", f.display()))?;
        parts.push(format!(
            "{}={fp}",
            f.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        ));
    }
    let joined = parts.join(";");
    Ok(InputInfo {
        kind: kind.into(),
        name: t.name.value.clone(),
        fingerprint: crate::batches::fingerprint(&[("files", &joined), ("format", t.format.name())]),
        files: files.iter().map(|f| f.display().to_string()).collect(),
        batch_id: None,
    })
}

fn paths(files: &[PathBuf]) -> Vec<String> {
    files.iter().map(|p| p.to_string_lossy().to_string()).collect()
}

/// Check a CSV header against the declared column names: the reader maps by position,
/// so a reordered file would otherwise load values into the wrong columns.
fn check_csv_header(file: &Path, delimiter: u8, declared: &Schema) -> Result<(), String> {
    use std::io::BufRead;
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(f)
        .read_line(&mut line)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let found: Vec<String> = line
        .trim_end_matches(['\r', '\n'])
        .trim_start_matches('\u{feff}')
        .split(delimiter as char)
        .map(|h| h.trim().trim_matches('"').to_string())
        .collect();
    let expected: Vec<&str> = declared.fields().iter().map(|f| f.name().as_str()).collect();
    if found != expected {
        return Err(format!(
            "{}: header has columns [{}] but the declared schema is [{}]",
            file.display(),
            found.join(", "),
            expected.join(", ")
        ));
    }
    Ok(())
}

/// Read a table's files as declared (or inferred) types. Values that do not parse fail
/// the read: this is for references, which are curated lookup tables.
pub async fn read_table(ctx: &SessionContext, pipeline: &Pipeline, t: &TableDef) -> Result<DataFrame, String> {
    let files = table_files(pipeline, t)?;
    let declared = t.schema.as_ref().map(|cols| arrow_schema(cols, false));
    read_files(ctx, &files, t.format, declared.as_ref()).await
}

pub async fn read_files(
    ctx: &SessionContext,
    files: &[PathBuf],
    format: TableFormat,
    schema: Option<&Schema>,
) -> Result<DataFrame, String> {
    let p = paths(files);
    let df = match format {
        TableFormat::Csv { delimiter, has_header } => {
            if let (Some(s), true) = (schema, has_header) {
                for f in files {
                    check_csv_header(f, delimiter, s)?;
                }
            }
            let mut o = CsvReadOptions::new()
                .has_header(has_header)
                .delimiter(delimiter)
                .file_extension("");
            if let Some(s) = schema {
                o = o.schema(s);
            }
            ctx.read_csv(p, o).await
        }
        TableFormat::Parquet => {
            ctx.read_parquet(p, ParquetReadOptions::default().file_extension(""))
                .await
        }
        TableFormat::Ndjson => {
            let mut o = JsonReadOptions::default().file_extension("");
            if let Some(s) = schema {
                o = o.schema(s);
            }
            ctx.read_json(p, o).await
        }
    };
    df.map_err(|e| e.strip_backtrace())
}

/// Register every reference under its name, lazily (nothing is read until a query runs).
/// Register every reference of the pipeline under its name. Those in `load` are read into
/// memory first: a run reads them once, and their exact size lets the planner build each
/// lookup join's hash table on them once, shared by every partition of the usage rows.
pub async fn register_references(ctx: &SessionContext, pipeline: &Pipeline, load: &[String]) -> Result<(), String> {
    for r in &pipeline.references {
        let name = r.name.value.as_str();
        let df = read_table(ctx, pipeline, r)
            .await
            .map_err(|e| format!("reference `{name}`: {e}"))?;
        let table: Arc<dyn datafusion::datasource::TableProvider> = if load.iter().any(|l| l == name) {
            let schema = Arc::new(df.schema().as_arrow().clone());
            let batches = df
                .collect()
                .await
                .map_err(|e| format!("reference `{name}`: {}", e.strip_backtrace()))?;
            Arc::new(
                datafusion::datasource::MemTable::try_new(schema, vec![batches])
                    .map_err(|e| format!("reference `{name}`: {}", e.strip_backtrace()))?,
            )
        } else {
            df.into_view()
        };
        ctx.register_table(name, table)
            .map_err(|e| format!("reference `{name}`: {}", e.strip_backtrace()))?;
    }
    Ok(())
}

/// The rows of one period: `[start, end)` on a date or timestamp column.
#[derive(Clone, Copy)]
pub struct PeriodSelection<'a> {
    pub column: &'a str,
    pub period: &'a crate::plan::Period,
}

/// True where `value` (of type `dtype`) falls in the period; NULL counts as outside.
fn in_period(value: Expr, dtype: &DataType, p: &crate::plan::Period) -> Expr {
    let bound = |days: i32| cast(lit(ScalarValue::Date32(Some(days))), dtype.clone());
    value
        .clone()
        .gt_eq(bound(p.start_days()))
        .and(value.lt(bound(p.end_days())))
        .is_true()
}

/// A stream's input: the rows of the period (typed), the refused rows (lazily), and the
/// tap that counts both in the same pass.
pub struct StreamInput {
    pub df: DataFrame,
    pub rejects: Option<DataFrame>,
    pub tap: Tap,
}

impl StreamInput {
    /// Rows that entered the stream for this period (kept plus refused), if a read of the
    /// input was complete.
    pub fn rows_in(&self) -> Option<u64> {
        self.tap.complete().map(|c| c.kept + c.flagged)
    }
}

/// Read a source. With a declared schema, CSV/NDJSON text is converted per column and
/// rows that do not convert are refused; Parquet columns of another type are converted
/// the same way. Without one, the reader's inferred types are used as they are. A refused
/// row belongs to this period's batch if its period value is in the period or unreadable.
pub async fn read_source(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    t: &TableDef,
    period: Option<PeriodSelection<'_>>,
) -> Result<StreamInput, String> {
    let files = table_files(pipeline, t)?;
    read_source_files(ctx, t, &files, period).await
}

/// [`read_source`] over other files of the same shape (e.g. a stream's sample input).
pub async fn read_source_files(
    ctx: &SessionContext,
    t: &TableDef,
    files: &[PathBuf],
    period: Option<PeriodSelection<'_>>,
) -> Result<StreamInput, String> {
    let tap = Tap::new("input");
    let Some(cols) = &t.schema else {
        let df = read_files(ctx, files, t.format, None).await?;
        let keep = match period {
            Some(sel) => {
                let field = df
                    .schema()
                    .field_with_unqualified_name(sel.column)
                    .map_err(|_| format!("no period column `{}`", sel.column))?
                    .clone();
                in_period(ident(sel.column), field.data_type(), sel.period)
            }
            None => lit(true),
        };
        let df = count_period_rows(df, keep, &tap)?;
        return Ok(StreamInput { df, rejects: None, tap });
    };
    let declared = arrow_schema(cols, false);
    let raw = match t.format {
        // Typed formats: read as they are, then convert what differs from the declaration.
        TableFormat::Parquet | TableFormat::Ndjson => read_files(ctx, files, t.format, None).await?,
        _ => {
            // Everything as text first; the declared types are applied below.
            let text = Schema::new(
                declared
                    .fields()
                    .iter()
                    .map(|f| Field::new(f.name(), DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            );
            read_files(ctx, files, t.format, Some(&text)).await?
        }
    };
    let raw_schema: SchemaRef = Arc::new(raw.schema().as_arrow().clone());
    for c in cols {
        if raw_schema.field_with_name(&c.name.value).is_err() {
            return Err(format!(
                "source `{}` has no column `{}` (declared in its schema)",
                t.name.value, c.name.value
            ));
        }
    }
    let checks = contract::row_checks(&raw_schema, cols);
    let (keep_period, refused_here) = match period {
        Some(sel) => {
            let c = cols
                .iter()
                .find(|c| c.name.value == sel.column)
                .ok_or_else(|| format!("no period column `{}`", sel.column))?;
            let target = c.ty.to_arrow();
            let value = if raw_schema
                .field_with_name(sel.column)
                .map(|f| f.data_type() == &target)
                .unwrap_or(false)
            {
                ident(sel.column)
            } else {
                try_cast(ident(sel.column), target.clone())
            };
            let inside = in_period(value.clone(), &target, sel.period);
            (inside.clone(), checks.bad.clone().and(inside.or(value.is_null())))
        }
        None => (lit(true), checks.bad.clone()),
    };
    let keep = checks.bad.clone().not().and(keep_period);
    let typed = contract::output_projection(&raw_schema, cols);
    let df = tap
        .apply(raw.clone(), refused_here.clone(), keep)
        .and_then(|d| d.select(typed))
        .map_err(|e| e.strip_backtrace())?;
    let rejects = reject_rows(raw, refused_here, checks.reason, &format!("source {}", t.name.value))?;
    Ok(StreamInput {
        df,
        rejects: Some(rejects),
        tap,
    })
}

/// A committed upstream batch as the input of a stream below it, restricted to the period.
pub async fn read_stream_batch(
    ctx: &SessionContext,
    batch_dir: &Path,
    schema: &Schema,
    period: Option<PeriodSelection<'_>>,
    organizations: Option<&[String]>,
) -> Result<StreamInput, String> {
    let df = read_batch(ctx, batch_dir, schema, organizations).await?;
    let keep = match period {
        Some(sel) => {
            let field = df
                .schema()
                .field_with_unqualified_name(sel.column)
                .map_err(|_| format!("no period column `{}`", sel.column))?
                .clone();
            in_period(ident(sel.column), field.data_type(), sel.period)
        }
        None => lit(true),
    };
    let tap = Tap::new("input");
    let df = count_period_rows(df, keep, &tap)?;
    Ok(StreamInput { df, rejects: None, tap })
}

/// The rows of the period, counted: an ordinary filter (so the scan can prune row groups
/// and pages with it), then a checkpoint that counts what it let through.
fn count_period_rows(df: DataFrame, keep: Expr, tap: &Tap) -> Result<DataFrame, String> {
    df.filter(keep)
        .and_then(|d| tap.apply(d, lit(false), lit(true)))
        .map_err(|e| e.strip_backtrace())
}

pub use crate::stages::side::reject_rows;

/// A committed upstream batch, read as the downstream stream's input. A `for_each`
/// batch's organisation partitions (`data/<organisation>/`) are all read, or only
/// `organizations` when given.
pub async fn read_batch(
    ctx: &SessionContext,
    batch_dir: &Path,
    schema: &Schema,
    organizations: Option<&[String]>,
) -> Result<DataFrame, String> {
    let data = batch_dir.join(crate::batches::DATA_DIR);
    let parquet = |dir: &Path| -> Result<Vec<PathBuf>, String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        files.sort();
        Ok(files)
    };
    let mut files = parquet(&data)?;
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&data)
        .map_err(|e| format!("{}: {e}", data.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| {
            organizations.is_none_or(|orgs| {
                p.file_name()
                    .is_some_and(|n| orgs.iter().any(|o| o.as_str() == n.to_string_lossy()))
            })
        })
        .collect();
    parts.sort();
    for part in parts {
        files.extend(parquet(&part)?);
    }
    if files.is_empty() {
        return ctx
            .read_batch(arrow::array::RecordBatch::new_empty(Arc::new(schema.clone())))
            .map_err(|e| e.strip_backtrace());
    }
    ctx.read_parquet(paths(&files), ParquetReadOptions::default().schema(schema))
        .await
        .map_err(|e| e.strip_backtrace())
}

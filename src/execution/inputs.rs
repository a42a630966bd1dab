//! Reading a stream's input and the pipeline's references into DataFusion, lazily.
//!
//! A source with a declared schema is read as text first and converted column by column
//! with `try_cast`, so a row that does not parse is refused (and written to the rejects
//! file with its reason) instead of failing the run or turning into a silent NULL.

use std::ops::Not;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::{Expr, cast, try_cast, when};
use datafusion::prelude::{CsvReadOptions, DataFrame, JsonReadOptions, ParquetReadOptions, SessionContext, ident, lit};
use datafusion::scalar::ScalarValue;

use super::contract;
use crate::batches::{InputInfo, file_fingerprint};
use crate::definition::{Pipeline, TableDef, TableFormat, arrow_schema};
use crate::engine::tap::{KeptTotals, Tap, TotalsSpec};
use crate::engine::text_scan::{self, TextFile, TextFormat};

/// Why a source, a reference or a batch could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("`{url}` is not a valid glob: {why}")]
    Glob { url: String, why: String },
    #[error("no file matches `{url}` (in {})", .dir.display())]
    NoFiles { url: String, dir: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: header has columns [{}] but the declared schema is [{}]", .file.display(), .found.join(", "), .declared.join(", "))]
    Header {
        file: PathBuf,
        found: Vec<String>,
        declared: Vec<String>,
    },
    #[error("source `{source_name}` has no column `{column}` (declared in its schema)")]
    MissingColumn { source_name: String, column: String },
    #[error("no period column `{0}`")]
    NoPeriodColumn(String),
    #[error(
        "column `{column}` of source `{source_name}` is declared {declared} but its files hold {found} values: \
         a float cannot be read as exact money; write the files with a decimal column, or declare it `double` \
         and convert it in a stage"
    )]
    FloatAsDecimal {
        source_name: String,
        column: String,
        declared: String,
        found: DataType,
    },
    #[error(transparent)]
    OutsideSandbox(#[from] crate::definition::OutsideSandbox),
    #[error(transparent)]
    Fetch(#[from] super::fetch::FetchError),
    #[error("reference `{name}`: {cause}")]
    Reference { name: String, cause: Box<InputError> },
    #[error("{}", .0.strip_backtrace())]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InputError + '_ {
    move |source| InputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The files a table's url names, sorted (so fingerprints and reads are stable): local
/// files, or local copies of the objects an `s3://` URL names.
pub async fn table_files(pipeline: &Pipeline, t: &TableDef) -> Result<Vec<PathBuf>, InputError> {
    Ok(table_files_named(pipeline, t)
        .await?
        .into_iter()
        .map(|(path, _)| path)
        .collect())
}

/// [`table_files`], each with what the user calls it (its path, or its object's URL).
pub async fn table_files_named(pipeline: &Pipeline, t: &TableDef) -> Result<Vec<(PathBuf, String)>, InputError> {
    if crate::definition::model::is_url(&t.url.value) {
        return Ok(super::fetch::fetch(&t.url.value).await?);
    }
    let full = pipeline.resolve(&t.url.value);
    let pattern = full.to_string_lossy().to_string();
    let mut files: Vec<PathBuf> = glob::glob(&pattern)
        .map_err(|e| InputError::Glob {
            url: t.url.value.clone(),
            why: e.msg.to_string(),
        })?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if let Some(sandbox) = &pipeline.sandbox {
        for f in &files {
            sandbox.admit(f, &f.display().to_string())?;
        }
    }
    if files.is_empty() {
        return Err(InputError::NoFiles {
            url: t.url.value.clone(),
            dir: pipeline.dir.clone(),
        });
    }
    Ok(files
        .into_iter()
        .map(|f| {
            let name = f.display().to_string();
            (f, name)
        })
        .collect())
}

/// The table's fingerprint: its files' contents hashed, a share of the files per core
/// (off the async workers), in the files' order.
pub async fn fingerprint_table(kind: &str, pipeline: &Pipeline, t: &TableDef) -> Result<InputInfo, InputError> {
    let named = table_files_named(pipeline, t).await?;
    let files: Vec<PathBuf> = named.iter().map(|(f, _)| f.clone()).collect();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let tasks: Vec<_> = files
        .chunks(files.len().div_ceil(cores).max(1))
        .map(|chunk| {
            let chunk = chunk.to_vec();
            tokio::task::spawn_blocking(move || {
                chunk
                    .iter()
                    .map(|f| {
                        let fp = file_fingerprint(f).map_err(io(f))?;
                        let name = f
                            .file_name()
                            .map(|n| n.to_string_lossy().to_string())
                            .unwrap_or_default();
                        Ok(format!("{name}={fp}"))
                    })
                    .collect::<Result<Vec<String>, InputError>>()
            })
        })
        .collect();
    let mut parts = Vec::with_capacity(files.len());
    for task in tasks {
        let hashed = task
            .await
            .map_err(|e| InputError::from(datafusion::error::DataFusionError::External(Box::new(e))))?;
        parts.extend(hashed?);
    }
    let joined = parts.join(";");
    Ok(InputInfo {
        kind: kind.into(),
        name: t.name.value.clone(),
        fingerprint: crate::batches::fingerprint(&[("files", &joined), ("format", t.format.name())]),
        files: named.into_iter().map(|(_, name)| name).collect(),
        batch_id: None,
        organization: None,
        consumed: None,
    })
}

fn paths(files: &[PathBuf]) -> Vec<String> {
    files.iter().map(|p| p.to_string_lossy().to_string()).collect()
}

/// Check a CSV header against the declared column names: the reader maps by position,
/// so a reordered file would otherwise load values into the wrong columns.
fn check_csv_header(file: &Path, delimiter: u8, declared: &Schema) -> Result<(), InputError> {
    use std::io::BufRead;
    let f = std::fs::File::open(file).map_err(io(file))?;
    let mut line = String::new();
    std::io::BufReader::new(f).read_line(&mut line).map_err(io(file))?;
    let found: Vec<String> = line
        .trim_end_matches(['\r', '\n'])
        .trim_start_matches('\u{feff}')
        .split(delimiter as char)
        .map(|h| h.trim().trim_matches('"').to_string())
        .collect();
    let expected: Vec<String> = declared.fields().iter().map(|f| f.name().clone()).collect();
    if found != expected {
        return Err(InputError::Header {
            file: file.to_path_buf(),
            found,
            declared: expected,
        });
    }
    Ok(())
}

/// Read a table's files as declared (or inferred) types. Values that do not parse fail
/// the read: this is for references, which are curated lookup tables.
pub async fn read_table(ctx: &SessionContext, pipeline: &Pipeline, t: &TableDef) -> Result<DataFrame, InputError> {
    let files = table_files(pipeline, t).await?;
    let declared = t.schema.as_ref().map(|cols| arrow_schema(cols, false));
    read_files(ctx, &files, t.format, declared.as_ref()).await
}

pub async fn read_files(
    ctx: &SessionContext,
    files: &[PathBuf],
    format: TableFormat,
    schema: Option<&Schema>,
) -> Result<DataFrame, InputError> {
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
    Ok(df?)
}

/// Register every reference under its name, lazily (nothing is read until a query runs).
/// Register every reference of the pipeline under its name. Those in `load` are read into
/// memory first: a run reads them once, and their exact size lets the planner build each
/// lookup join's hash table on them once, shared by every partition of the usage rows.
pub async fn register_references(ctx: &SessionContext, pipeline: &Pipeline, load: &[String]) -> Result<(), InputError> {
    for r in &pipeline.references {
        let name = r.name.value.as_str();
        register_reference(ctx, pipeline, r, load.iter().any(|l| l == name))
            .await
            .map_err(|cause| InputError::Reference {
                name: name.to_string(),
                cause: Box::new(cause),
            })?;
    }
    Ok(())
}

async fn register_reference(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    r: &TableDef,
    load: bool,
) -> Result<(), InputError> {
    let df = read_table(ctx, pipeline, r).await?;
    let table: Arc<dyn datafusion::datasource::TableProvider> = if load {
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![batches])?)
    } else {
        df.into_view()
    };
    ctx.register_table(r.name.value.as_str(), table)?;
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
    /// An input read as a whole, with nothing refused on the way in (an empty table of the
    /// input's schema, a sample of an upstream stream's rows). Its tap counts nothing: a
    /// run never reads such an input.
    pub fn whole(df: DataFrame) -> Self {
        StreamInput {
            df,
            rejects: None,
            tap: Tap::new("input"),
        }
    }

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
) -> Result<StreamInput, InputError> {
    let files = table_files(pipeline, t).await?;
    read_source_files(ctx, t, &files, period).await
}

/// [`read_source`] over other files of the same shape (e.g. a stream's sample input).
pub async fn read_source_files(
    ctx: &SessionContext,
    t: &TableDef,
    files: &[PathBuf],
    period: Option<PeriodSelection<'_>>,
) -> Result<StreamInput, InputError> {
    let tap = Tap::new("input");
    let Some(cols) = &t.schema else {
        let df = read_files(ctx, files, t.format, None).await?;
        return select_period(df, period, &format!("source {}", t.name.value), tap);
    };
    let declared = arrow_schema(cols, false);
    // `origin`: the same rows with the file and line each came from, read only to write
    // the rejects file (counting lines costs a second pass over each range's prefix).
    let (raw, origin) = match t.format {
        // Parquet: read as stored, then convert what differs from the declaration.
        TableFormat::Parquet => (read_files(ctx, files, t.format, None).await?, None),
        // CSV as text (the declared types are applied below); NDJSON decoded straight
        // into the declared types (a number's text into a Decimal128, exactly, never
        // through a float; a missing key is NULL, refused below where the column is
        // required). A line that cannot be read is a row with its problem.
        TableFormat::Csv { delimiter, has_header } => {
            if has_header {
                for f in files {
                    check_csv_header(f, delimiter, &declared)?;
                }
            }
            let text = Schema::new(
                declared
                    .fields()
                    .iter()
                    .map(|f| Field::new(f.name(), DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            );
            read_text(ctx, files, TextFormat::Csv { delimiter, has_header }, &text)?
        }
        TableFormat::Ndjson => read_text(ctx, files, TextFormat::Ndjson, &arrow_schema(cols, true))?,
    };
    let raw_schema: SchemaRef = Arc::new(raw.schema().as_arrow().clone());
    for c in cols {
        let Ok(field) = raw_schema.field_with_name(&c.name.value) else {
            return Err(InputError::MissingColumn {
                source_name: t.name.value.clone(),
                column: c.name.value.clone(),
            });
        };
        // Money never passes through a float: a float column is not read as a decimal.
        if c.ty.is_decimal()
            && matches!(
                field.data_type(),
                DataType::Float16 | DataType::Float32 | DataType::Float64
            )
        {
            return Err(InputError::FloatAsDecimal {
                source_name: t.name.value.clone(),
                column: c.name.value.clone(),
                declared: c.ty.to_string(),
                found: field.data_type().clone(),
            });
        }
    }
    let checks = contract::row_checks(&raw_schema, cols);
    // A line the reader could not read is refused with its problem, before anything else.
    let read_by_lines = raw_schema.index_of(text_scan::PROBLEM).is_ok();
    let unreadable = if read_by_lines {
        ident(text_scan::PROBLEM).is_not_null()
    } else {
        lit(false)
    };
    let bad = unreadable.clone().or(checks.bad.clone());
    let (keep_period, refused_here) = match period {
        Some(sel) => {
            let c = cols
                .iter()
                .find(|c| c.name.value == sel.column)
                .ok_or_else(|| InputError::NoPeriodColumn(sel.column.to_string()))?;
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
            // A row whose period value is missing (or does not convert) is in no period:
            // it is refused with the reason, never dropped without a word.
            (inside.clone(), value.is_null().or(bad.clone().and(inside)))
        }
        None => (lit(true), bad.clone()),
    };
    let otherwise = match period {
        Some(sel) => when(checks.bad.clone(), checks.reason.clone()).otherwise(lit(no_period_reason(sel.column)))?,
        None => checks.reason.clone(),
    };
    let reason = if read_by_lines {
        when(unreadable, ident(text_scan::PROBLEM)).otherwise(otherwise)?
    } else {
        otherwise
    };
    let keep = bad.not().and(keep_period);
    let typed = contract::input_projection(&raw_schema, cols);
    let df = tap
        .apply(raw.clone(), refused_here.clone(), keep)
        .and_then(|d| d.select(typed))?;
    let rejects = reject_rows(
        origin.unwrap_or(raw),
        refused_here,
        reason,
        &format!("source {}", t.name.value),
    )?;
    Ok(StreamInput {
        df,
        rejects: Some(rejects),
        tap,
    })
}

/// CSV or NDJSON files as a table whose unreadable lines are rows with their problem
/// (`engine::text_scan`), and the same table with each row's file and line.
fn read_text(
    ctx: &SessionContext,
    files: &[PathBuf],
    format: TextFormat,
    columns: &Schema,
) -> Result<(DataFrame, Option<DataFrame>), InputError> {
    let files: Vec<TextFile> = files
        .iter()
        .map(|p| TextFile {
            path: p.clone(),
            name: super::fetch::shown_name(p),
        })
        .collect();
    let partitions = ctx.state().config().target_partitions();
    let kept = ctx.read_table(text_scan::text_table(&files, format, columns, false, partitions)?)?;
    let origin = ctx.read_table(text_scan::text_table(&files, format, columns, true, partitions)?)?;
    Ok((kept, Some(origin)))
}

/// Committed upstream batches (their data files) as the input of a stream below them,
/// restricted to the period.
/// Its input tap totals what it reads ([`upstream_totals`]), for the run's accounting.
pub async fn read_stream_batch(
    ctx: &SessionContext,
    data_files: &[String],
    schema: &Schema,
    period: Option<PeriodSelection<'_>>,
    by: Option<&str>,
) -> Result<StreamInput, InputError> {
    let df = read_batch(ctx, data_files, schema).await?;
    let tap = Tap::totalling("input", upstream_totals(schema, by));
    select_period(df, period, "upstream batch", tap)
}

/// What a run accounts for of an upstream batch: its rows and the sum of each decimal
/// column, per organisation when the batch is a `for_each` stream's (`by`).
pub fn upstream_totals(schema: &Schema, by: Option<&str>) -> TotalsSpec {
    TotalsSpec {
        by: by.map(str::to_string),
        decimals: crate::engine::money::decimal_columns(schema)
            .into_iter()
            .map(|(name, _)| name)
            .collect(),
    }
}

/// [`consumed`]'s answer from the totals the input tap took while the run read the
/// batch (`schema`: the batch's, for the decimal columns' scales).
pub fn consumed_from_tap(
    totals: &KeptTotals,
    schema: &Schema,
) -> std::collections::BTreeMap<Option<String>, crate::batches::Consumed> {
    let scales = crate::engine::money::decimal_columns(schema);
    totals
        .iter()
        .map(|(key, g)| {
            let control_totals = scales
                .iter()
                .zip(&g.sums)
                .map(|((name, scale), v)| (name.clone(), super::write::format_decimal(*v, *scale)))
                .collect();
            (
                key.clone(),
                crate::batches::Consumed {
                    rows: g.rows,
                    control_totals,
                },
            )
        })
        .collect()
}

/// What a run reads of each upstream batch: its rows in the period and the exact sum of
/// each decimal column, read from the batches' files again (so that `billflow reconcile`
/// compares what was read, not what the manifest says). A run takes these totals while
/// it reads ([`consumed_from_tap`]); this second read is for a run whose plan did not
/// read its input to the end. `by`: the batches are a
/// `for_each` stream's organisations, told apart by this column; the answer is keyed by
/// organisation (`None` for a whole batch).
pub async fn consumed(
    ctx: &SessionContext,
    data_files: &[String],
    schema: &Schema,
    period: Option<PeriodSelection<'_>>,
    by: Option<&str>,
) -> Result<std::collections::BTreeMap<Option<String>, crate::batches::Consumed>, InputError> {
    use arrow::array::{Array, AsArray};
    use datafusion::functions_aggregate::expr_fn::{count, sum};
    let mut df = read_batch(ctx, data_files, schema).await?;
    if let Some(sel) = period {
        let field = schema
            .field_with_name(sel.column)
            .map_err(|_| InputError::NoPeriodColumn(sel.column.to_string()))?;
        df = df.filter(in_period(ident(sel.column), field.data_type(), sel.period))?;
    }
    let decimals = crate::engine::money::decimal_columns(schema);
    let mut aggs = vec![count(lit(1)).alias("rows")];
    aggs.extend(decimals.iter().map(|(c, _)| sum(ident(c)).alias(c)));
    let group: Vec<Expr> = by.map(|c| vec![ident(c)]).unwrap_or_default();
    let first = group.len();
    let mut out = std::collections::BTreeMap::new();
    for b in df.aggregate(group, aggs)?.collect().await? {
        let keys = match by {
            Some(_) => Some(
                arrow::compute::cast(b.column(0), &DataType::Utf8).map_err(datafusion::error::DataFusionError::from)?,
            ),
            None => None,
        };
        for row in 0..b.num_rows() {
            let key = keys.as_ref().map(|k| k.as_string::<i32>().value(row).to_string());
            let rows = b.column(first).as_primitive::<arrow::datatypes::Int64Type>().value(row) as u64;
            let mut totals = std::collections::BTreeMap::new();
            for (i, (name, scale)) in decimals.iter().enumerate() {
                let a = b
                    .column(first + 1 + i)
                    .as_primitive::<arrow::datatypes::Decimal128Type>();
                let v = if a.is_valid(row) { a.value(row) } else { 0 };
                totals.insert(name.clone(), super::write::format_decimal(v, *scale));
            }
            out.insert(
                key,
                crate::batches::Consumed {
                    rows,
                    control_totals: totals,
                },
            );
        }
    }
    Ok(out)
}

fn no_period_reason(column: &str) -> String {
    format!("`{column}` is NULL: the row belongs to no period")
}

/// The rows of the period of an input whose columns are typed already (a source read
/// without a declared schema, an upstream batch), counted by the input tap; a row whose
/// period value is NULL is refused (into the rejects) with the reason.
fn select_period(
    df: DataFrame,
    period: Option<PeriodSelection<'_>>,
    origin: &str,
    tap: Tap,
) -> Result<StreamInput, InputError> {
    let Some(sel) = period else {
        let df = count_period_rows(df, lit(true), lit(false), &tap)?;
        return Ok(StreamInput { df, rejects: None, tap });
    };
    let field = df
        .schema()
        .field_with_unqualified_name(sel.column)
        .map_err(|_| InputError::NoPeriodColumn(sel.column.to_string()))?
        .clone();
    let missing = ident(sel.column).is_null();
    let keep = in_period(ident(sel.column), field.data_type(), sel.period);
    let rejects = reject_rows(df.clone(), missing.clone(), lit(no_period_reason(sel.column)), origin)?;
    let df = count_period_rows(df, keep, missing, &tap)?;
    Ok(StreamInput {
        df,
        rejects: Some(rejects),
        tap,
    })
}

/// The rows of the period, counted: an ordinary filter (so the scan can prune row groups
/// and pages with it) that also lets the `refused` rows through, then a checkpoint that
/// counts them and keeps the period's rows.
fn count_period_rows(df: DataFrame, keep: Expr, refused: Expr, tap: &Tap) -> Result<DataFrame, InputError> {
    Ok(df
        .filter(keep.clone().or(refused.clone()))
        .and_then(|d| tap.apply(d, refused, keep))?)
}

pub use crate::engine::side::reject_rows;

/// Committed batches' data files (as their manifests list them: paths, or URLs of a
/// warehouse in an object store), read as one table.
pub async fn read_batch(ctx: &SessionContext, files: &[String], schema: &Schema) -> Result<DataFrame, InputError> {
    if files.is_empty() {
        return Ok(ctx.read_batch(arrow::array::RecordBatch::new_empty(Arc::new(schema.clone())))?);
    }
    Ok(ctx
        .read_parquet(files.to_vec(), ParquetReadOptions::default().schema(schema))
        .await?)
}

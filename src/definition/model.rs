//! The typed pipeline definition, as parsed from YAML. Every name keeps its location so
//! later checks (validation, planning, schema inference) can point back into the file.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use marked_yaml::Node;

use super::diagnostics::{Location, SourceFile};
use super::reader::Text;

#[derive(Debug)]
pub struct Pipeline {
    pub id: Text,
    pub description: Option<String>,
    pub file: Arc<SourceFile>,
    /// Directory of the pipeline file: relative paths in the file resolve against it.
    pub dir: PathBuf,
    /// A folder (relative to the pipeline's), or a URL (`s3://`, `gs://`, `az://bucket/prefix`).
    pub warehouse: Option<String>,
    pub organizations: Vec<Organization>,
    /// Files listing more organisations (`organizations: [{ url: resellers.csv }]`), read
    /// into `organizations` when the pipeline is loaded.
    pub organization_files: Vec<OrganizationFile>,
    pub sources: Vec<TableDef>,
    pub references: Vec<TableDef>,
    pub streams: Vec<StreamDef>,
    /// With `--sandbox DIR`: the folder every file the pipeline names must lie under.
    pub sandbox: Option<super::Sandbox>,
    /// Organisations by id, built at the first lookup (once files are read): a chain of
    /// thousands is looked up once per stream and per link.
    pub organization_index: std::sync::OnceLock<std::collections::HashMap<String, usize>>,
}

impl Pipeline {
    /// A path the pipeline wrote, resolved against its folder and, with a sandbox,
    /// checked to lie under it.
    pub fn confine(&self, relative: &str) -> Result<PathBuf, super::OutsideSandbox> {
        let full = self.resolve(relative);
        match &self.sandbox {
            Some(s) => s.admit(&full, relative),
            None => Ok(full),
        }
    }
    pub fn organization(&self, id: &str) -> Option<&Organization> {
        let index = self.organization_index.get_or_init(|| {
            let mut index = std::collections::HashMap::with_capacity(self.organizations.len());
            for (i, o) in self.organizations.iter().enumerate() {
                index.entry(o.id.value.clone()).or_insert(i); // the first of a duplicate, as before
            }
            index
        });
        index.get(id).map(|&i| &self.organizations[i])
    }
    /// The organisation `id` and those above it, nearest first, up to the vendor (stops at
    /// an unknown upstream or a cycle, which validation reports).
    pub fn chain(&self, id: &str) -> Vec<&Organization> {
        let mut out: Vec<&Organization> = Vec::new();
        let mut cur = self.organization(id);
        while let Some(o) = cur {
            if out.iter().any(|seen| seen.id.value == o.id.value) {
                break;
            }
            out.push(o);
            cur = o.upstream.as_ref().and_then(|u| self.organization(&u.value));
        }
        out
    }
    /// The organisations whose `tier` is `tier`, in file order.
    pub fn organizations_of<'a>(&'a self, tier: &'a str) -> impl Iterator<Item = &'a Organization> + 'a {
        self.organizations.iter().filter(move |o| o.tier.value == tier)
    }
    pub fn stream(&self, id: &str) -> Option<&StreamDef> {
        self.streams.iter().find(|s| s.id.value == id)
    }
    pub fn source(&self, name: &str) -> Option<&TableDef> {
        self.sources.iter().find(|s| s.name.value == name)
    }
    pub fn reference(&self, name: &str) -> Option<&TableDef> {
        self.references.iter().find(|s| s.name.value == name)
    }
    pub fn resolve(&self, relative: &str) -> PathBuf {
        let p = PathBuf::from(relative);
        if p.is_absolute() { p } else { self.dir.join(p) }
    }
}

#[derive(Debug)]
pub struct Organization {
    pub id: Text,
    pub name: String,
    pub tier: Text,
    pub upstream: Option<Text>,
    pub currency: Option<Text>,
    /// 1 for the vendor, 2 for its distributors, and so on (set by validation).
    pub level: usize,
}

/// A file of organisations, one per row (CSV with a header, or NDJSON), with the columns
/// an inline organisation has: `id`, `tier`, and optionally `name`, `upstream`, `currency`.
#[derive(Debug)]
pub struct OrganizationFile {
    pub url: Text,
    /// `csv` or `ndjson`; by default from the file's extension.
    pub format: Option<Text>,
    pub delimiter: Option<Text>,
    /// How many inline organisations come before it in the list: its rows go there.
    pub position: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    Csv { delimiter: u8, has_header: bool },
    Parquet,
    Ndjson,
}

impl TableFormat {
    pub fn name(&self) -> &'static str {
        match self {
            TableFormat::Csv { .. } => "csv",
            TableFormat::Parquet => "parquet",
            TableFormat::Ndjson => "ndjson",
        }
    }
}

/// A source or a reference table: files plus an optional declared schema.
#[derive(Debug)]
pub struct TableDef {
    pub name: Text,
    pub url: Text,
    pub format: TableFormat,
    pub schema: Option<Vec<ColumnDef>>,
    pub location: Location,
}

/// Why a column type's text names no type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ColumnTypeError {
    #[error("`decimal` needs a precision and scale, e.g. `decimal(18,4)`")]
    DecimalWithoutScale,
    #[error("`{0}` is not a valid decimal: precision must be 1 to 38 and scale 0 to the precision")]
    BadDecimal(String),
    #[error("unknown column type `{0}`")]
    Unknown(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Integer,
    Decimal { precision: u8, scale: i8 },
    Boolean,
    Date,
    Timestamp,
    Double,
}

impl ColumnType {
    pub const NAMES: &'static [&'static str] = &[
        "string",
        "integer",
        "decimal(p,s)",
        "boolean",
        "date",
        "timestamp",
        "double",
    ];

    /// Parse `string`, `integer`, `decimal(18,4)`, ... The caller attaches the location.
    pub fn parse(text: &str) -> Result<Self, ColumnTypeError> {
        let t = text.trim().to_ascii_lowercase();
        Ok(match t.as_str() {
            "string" | "utf8" | "text" => ColumnType::String,
            "integer" | "int" | "int64" | "bigint" => ColumnType::Integer,
            "boolean" | "bool" => ColumnType::Boolean,
            "date" => ColumnType::Date,
            "timestamp" | "datetime" => ColumnType::Timestamp,
            "double" | "float64" => ColumnType::Double,
            "decimal" => return Err(ColumnTypeError::DecimalWithoutScale),
            _ if t.starts_with("decimal(") && t.ends_with(')') => {
                let inner = &t["decimal(".len()..t.len() - 1];
                let mut parts = inner.split(',').map(|p| p.trim().parse::<i64>());
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(Ok(p)), Some(Ok(s)), None) if (1..=38).contains(&p) && (0..=p).contains(&s) => {
                        ColumnType::Decimal {
                            precision: p as u8,
                            scale: s as i8,
                        }
                    }
                    _ => return Err(ColumnTypeError::BadDecimal(text.to_string())),
                }
            }
            _ => return Err(ColumnTypeError::Unknown(text.to_string())),
        })
    }

    pub fn to_arrow(self) -> DataType {
        match self {
            ColumnType::String => DataType::Utf8,
            ColumnType::Integer => DataType::Int64,
            ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            ColumnType::Double => DataType::Float64,
        }
    }

    pub fn is_decimal(self) -> bool {
        matches!(self, ColumnType::Decimal { .. })
    }
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnType::String => f.write_str("string"),
            ColumnType::Integer => f.write_str("integer"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::Double => f.write_str("double"),
        }
    }
}

/// Whether values of `from` convert to the declared type without rounding or guessing.
/// Narrowing precision is allowed (a value that does not fit is refused per row); dropping
/// decimal places is not: rounding money must be an explicit stage.
pub fn converts_losslessly(from: &DataType, to: ColumnType) -> bool {
    use DataType as D;
    match (from, to) {
        (D::Null, _) => true,
        (D::Utf8 | D::LargeUtf8 | D::Utf8View, ColumnType::String) => true,
        (
            D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64,
            ColumnType::Integer,
        ) => true,
        (
            D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64,
            ColumnType::Decimal { .. },
        ) => true,
        (
            D::Decimal32(_, s) | D::Decimal64(_, s) | D::Decimal128(_, s) | D::Decimal256(_, s),
            ColumnType::Decimal { scale, .. },
        ) => *s <= scale,
        (D::Boolean, ColumnType::Boolean) => true,
        (D::Date32 | D::Date64, ColumnType::Date) => true,
        (D::Timestamp(_, _) | D::Date32 | D::Date64, ColumnType::Timestamp) => true,
        (D::Float16 | D::Float32 | D::Float64, ColumnType::Double) => true,
        (D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32, ColumnType::Double) => true,
        _ => false,
    }
}

#[derive(Clone, Debug)]
pub struct ColumnDef {
    pub name: Text,
    pub ty: ColumnType,
    pub nullable: bool,
    /// false: the column must exist after the stages but stays out of the published batch.
    pub output: bool,
    pub description: Option<String>,
}

/// The Arrow schema of a list of declared columns.
pub fn arrow_schema(columns: &[ColumnDef], only_output: bool) -> Schema {
    Schema::new(
        columns
            .iter()
            .filter(|c| c.output || !only_output)
            .map(|c| Field::new(&c.name.value, c.ty.to_arrow(), c.nullable))
            .collect::<Vec<_>>(),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Usage,
    Billing,
    Pricing,
}

impl StreamKind {
    pub const NAMES: &'static [&'static str] = &["usage", "billing", "pricing"];
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Usage => "usage",
            StreamKind::Billing => "billing",
            StreamKind::Pricing => "pricing",
        }
    }
}

#[derive(Clone, Debug)]
pub enum InputRef {
    Source(Text),
    Stream(Text),
}

impl InputRef {
    pub fn name(&self) -> &Text {
        match self {
            InputRef::Source(t) | InputRef::Stream(t) => t,
        }
    }
}

/// A stage as written: its kind and settings stay as YAML until the plan builds it with
/// the stage registry (which owns each kind's settings).
#[derive(Clone, Debug)]
pub struct StageDef {
    pub name: String,
    pub kind: Text,
    pub node: Node,
    pub location: Location,
}

/// A stage name as a file name (`rejects/stage-<this>.parquet`): letters, digits, `-` and
/// `_` stay, anything else becomes `_`.
pub fn stage_file_name(name: &str) -> String {
    name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_', "_")
}

#[derive(Clone, Debug)]
pub struct SampleDef {
    pub input: Text,
    pub expected: Text,
}

/// What happens to a stream's new batch: it waits for a person's review (`manual`), or
/// is accepted and published at once when it meets the conditions (`auto`).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Review {
    #[default]
    Manual,
    Auto {
        /// The most rows it may have refused, as a percentage of the rows that came in.
        max_rejected_percent: f64,
    },
}

#[derive(Debug)]
pub struct StreamDef {
    pub id: Text,
    pub kind: StreamKind,
    /// The owning organisation; for a `for_each` stream, `each <tier>` (no organisation).
    pub owner: Text,
    /// One stream for every organisation of a tier, run as one plan: each row belongs to
    /// the organisation named in `column`, and each organisation gets its own partition of
    /// the batch, with its own row count and control totals.
    pub for_each: Option<ForEach>,
    pub input: InputRef,
    /// The date or timestamp column of the input that picks the rows of a period.
    pub period: Option<Text>,
    /// Published rows sorted by these columns: row groups then prune well for readers
    /// that filter on them (e.g. each distributor's share of the vendor's batch).
    pub order_by: Vec<Text>,
    pub stages: Vec<StageDef>,
    pub columns: Vec<ColumnDef>,
    pub sample: Option<SampleDef>,
    pub review: Review,
    pub extends: Option<Text>,
    pub location: Location,
    /// The effective definition as stable text (no locations): part of the batch id.
    pub canonical: String,
}

#[derive(Clone, Debug)]
pub struct ForEach {
    pub tier: Text,
    pub column: Text,
}

impl StreamDef {
    pub fn output_columns(&self) -> impl Iterator<Item = &ColumnDef> {
        self.columns.iter().filter(|c| c.output)
    }
}

/// The object stores billflow reads and writes: Amazon S3 (and S3-compatible stores),
/// Google Cloud Storage, Azure Blob Storage (`az://container`, or ADLS Gen2's
/// `abfss://container@account.dfs.core.windows.net`).
pub const STORE_SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];

/// Whether `text` is a URL (`s3://bucket/key`) rather than a local path.
pub fn is_url(text: &str) -> bool {
    text.split_once("://")
        .is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()))
}

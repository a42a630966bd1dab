//! SQL over what a warehouse holds (`billflow query`, `billflow serve`): everything
//! committed, with no registration. A schema per organisation and in it a table per
//! stream holding all its batches (`_batch_id`, `_period`, `_status` beside the batch's
//! columns); schema `billflow` holds the catalog: `batches`, `events` (the lifecycle
//! log) and `streams`. Names are the ids with `-` written `_` (`alpha_it.
//! alpha_it_invoice_lines`), so they need no quotes. Acting as an organisation, only its
//! batches and those published to it exist. Statements are read-only: anything that
//! would define, change or write something is refused before it runs.

mod catalog_tables;
pub mod errors;
pub mod output;
pub mod stream_table;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SQLOptions, SessionContext};

use crate::batches::StoreLocation;
use crate::batches::catalog::{self, Entry};
use crate::batches::lifecycle::{LifecycleError, Log};
pub use errors::QueryError;
use stream_table::{StreamTable, TableBatch};

/// The schema of the catalog tables.
pub const CATALOG_SCHEMA: &str = "billflow";

/// Schemas a session has that are not an organisation's: DataFusion's and the Postgres
/// catalog a server adds.
const NOT_OURS: [&str; 3] = ["public", "information_schema", "pg_catalog"];

/// A warehouse as one organisation (or, with none, everyone) sees it, for SQL.
pub struct Warehouse {
    root: StoreLocation,
    organization: Option<String>,
    runtime: Arc<RuntimeEnv>,
    partitions: usize,
    /// The columns of each committed run's data files (by the run's directory), read once
    /// from a footer: a committed file never changes, and the server registers every
    /// table again when the catalog changes.
    footers: Arc<Mutex<HashMap<String, SchemaRef>>>,
    /// The manifests and lifecycle events read so far: the server reads the catalog
    /// before every statement, and then reads only what is new.
    catalog: Arc<tokio::sync::Mutex<catalog::Cache>>,
}

/// What a session's tables were last registered from (a fingerprint of the batches and
/// their statuses), kept in the session's config.
#[derive(Debug, Default)]
struct Registered(Mutex<Option<String>>);

/// A statement's result.
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl Warehouse {
    /// `root`: a local folder, or a prefix in an object store (registered with `runtime`
    /// here, so that the sessions' scans find it).
    pub fn open(
        root: impl Into<StoreLocation>,
        organization: Option<String>,
        runtime: Arc<RuntimeEnv>,
        partitions: usize,
    ) -> Self {
        let root: StoreLocation = root.into();
        root.register(&runtime);
        Warehouse {
            root,
            organization,
            runtime,
            partitions,
            footers: Arc::default(),
            catalog: Arc::default(),
        }
    }

    /// The same warehouse as `organization` sees it.
    pub fn as_organization(&self, organization: Option<String>) -> Warehouse {
        Warehouse {
            root: self.root.clone(),
            organization,
            runtime: self.runtime.clone(),
            partitions: self.partitions,
            footers: self.footers.clone(),
            catalog: self.catalog.clone(),
        }
    }

    /// The batches this warehouse's reader may see, with their status now.
    async fn visible(&self) -> Result<Vec<Entry>, QueryError> {
        let log = Log::open(&self.root);
        let mut cache = self.catalog.lock().await;
        let all = catalog::entries_with(&self.root, &log, &mut cache)
            .await
            .map_err(|e| match e {
                LifecycleError::Warehouse { .. } => QueryError::Warehouse(e.to_string()),
                e => QueryError::Lifecycle(e),
            })?;
        Ok(all
            .into_iter()
            .filter(|e| e.visible_to(self.organization.as_deref()))
            .collect())
    }

    /// A session over what is committed now: each call sees new batches and statuses.
    pub async fn session(&self) -> Result<SessionContext, QueryError> {
        let ctx = self.empty_session();
        self.register(&ctx).await?;
        Ok(ctx)
    }

    /// A fresh session with no batches registered yet ([`Warehouse::register`] adds them):
    /// the server keeps one per connection and brings it up to date before each statement.
    pub fn empty_session(&self) -> SessionContext {
        crate::engine::session::session(&self.runtime, self.partitions)
    }

    /// Bring `ctx` up to date with what is committed now: the catalog schema and a schema
    /// per visible organisation, replacing what an earlier call registered and dropping
    /// the schemas of organisations no longer visible (a voided batch).
    pub async fn register(&self, ctx: &SessionContext) -> Result<(), QueryError> {
        let entries = self.visible().await?;
        // The batches and histories this session's tables show: when they are those of
        // the last call (a client sending statement after statement), nothing changes.
        let states: Vec<String> = entries
            .iter()
            .map(|e| format!("{}:{}", e.status.name(), e.history.len()))
            .collect();
        let seen = crate::batches::fingerprint(
            &entries
                .iter()
                .zip(&states)
                .map(|(e, state)| (e.id(), state.as_str()))
                .collect::<Vec<_>>(),
        );
        let marker = {
            let state = ctx.state_ref();
            let found = state.read().config().get_extension::<Registered>();
            found.unwrap_or_else(|| {
                let made = Arc::new(Registered::default());
                state.write().config_mut().set_extension(made.clone());
                made
            })
        };
        if marker.0.lock().is_ok_and(|last| last.as_deref() == Some(seen.as_str())) {
            return Ok(());
        }
        let Some(root) = ctx.catalog("datafusion") else {
            return Err(QueryError::Internal("the session has no default catalog".into()));
        };
        let billflow = Arc::new(MemorySchemaProvider::new());
        for (name, table) in catalog_tables::tables(&entries)? {
            billflow.register_table(name.into(), table)?;
        }
        root.register_schema(CATALOG_SCHEMA, billflow)?;
        let mut registered = BTreeSet::from([CATALOG_SCHEMA.to_string()]);
        for (schema_name, tables) in stream_tables(&self.root, &entries, &self.footers).await? {
            if schema_name == CATALOG_SCHEMA || NOT_OURS.contains(&schema_name.as_str()) {
                tracing::warn!("organisation `{schema_name}` is not queryable: its name is a reserved schema's");
                continue;
            }
            let schema = Arc::new(MemorySchemaProvider::new());
            for (table_name, table) in tables {
                schema.register_table(table_name, Arc::new(table))?;
            }
            root.register_schema(&schema_name, schema)?;
            registered.insert(schema_name);
        }
        for gone in root.schema_names() {
            if !NOT_OURS.contains(&gone.as_str()) && !registered.contains(&gone) {
                root.deregister_schema(&gone, true)?;
            }
        }
        if let Ok(mut last) = marker.0.lock() {
            *last = Some(seen);
        }
        Ok(())
    }

    /// Run one read-only statement.
    pub async fn query(&self, sql: &str) -> Result<Answer, QueryError> {
        let ctx = self.session().await?;
        execute(&ctx, sql).await
    }
}

/// Run one statement on `ctx`, refusing any that defines, changes or writes something.
pub async fn execute(ctx: &SessionContext, sql: &str) -> Result<Answer, QueryError> {
    let wrap = |e| QueryError::from_datafusion(ctx, sql, e);
    let df = ctx.sql_with_options(sql, read_only()).await.map_err(wrap)?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(wrap)?;
    Ok(Answer { schema, batches })
}

/// What a statement may do: read.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A name as SQL writes it without quotes: the id in lower case with `-` as `_` (SQL
/// folds unquoted names to lower case, as Postgres does).
pub fn sql_name(id: &str) -> String {
    id.to_lowercase().replace('-', "_")
}

/// The stream tables, by schema (organisation) and table (stream) name.
async fn stream_tables(
    root: &StoreLocation,
    entries: &[Entry],
    footers: &Mutex<HashMap<String, SchemaRef>>,
) -> Result<BTreeMap<String, Vec<(String, StreamTable)>>, QueryError> {
    let mut by_table: BTreeMap<(String, String), Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        let m = &e.manifest;
        by_table
            .entry((sql_name(&m.organization), sql_name(&m.stream)))
            .or_default()
            .push(e);
    }
    let mut out: BTreeMap<String, Vec<(String, StreamTable)>> = BTreeMap::new();
    let (store, _) = root.scan_path("")?;
    for ((schema, table), batches) in by_table {
        let columns = columns_of(root, &batches, footers).await?;
        let batches = batches
            .iter()
            .map(|e| {
                Ok(TableBatch {
                    batch_id: e.id().to_string(),
                    period: e.manifest.period.label.clone(),
                    status: e.status.name().to_string(),
                    files: e
                        .data_keys()
                        .into_iter()
                        .map(|(key, bytes)| root.scan_path(&key).map(|(_, path)| (path, bytes)))
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<Vec<_>, QueryError>>()?;
        out.entry(schema)
            .or_default()
            .push((table, StreamTable::new(columns, store.clone(), batches)));
    }
    Ok(out)
}

/// A stream's columns: those of the newest of its batches that has a data file (read
/// from the file's footer, or remembered from an earlier read), without metadata.
async fn columns_of(
    root: &StoreLocation,
    batches: &[&Entry],
    footers: &Mutex<HashMap<String, SchemaRef>>,
) -> Result<SchemaRef, QueryError> {
    let newest = batches
        .iter()
        .rev()
        .find_map(|e| e.data_keys().into_iter().next().map(|file| (&e.key, file)));
    let Some((dir, (key, size))) = newest else {
        return Ok(Arc::new(Schema::empty()));
    };
    // Every file of one run's directory has the same columns: a `for_each` run's
    // thousands of organisations' tables need one footer read, not one each.
    if let Some(known) = footers.lock().ok().and_then(|f| f.get(dir).cloned()) {
        return Ok(known);
    }
    let unreadable = |e: &dyn std::fmt::Display| QueryError::Warehouse(format!("{}: {e}", root.url_of(&key)));
    let footer = read_footer(root, &key, size).await.map_err(|e| unreadable(&e))?;
    let metadata =
        parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer).map_err(|e| unreadable(&e))?;
    let file = metadata.file_metadata();
    let schema = parquet::arrow::parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())
        .map_err(|e| unreadable(&e))?;
    let columns: SchemaRef = Arc::new(Schema::new(schema.fields().clone()));
    if let Ok(mut f) = footers.lock() {
        f.insert(dir.clone(), columns.clone());
    }
    Ok(columns)
}

/// A Parquet file's metadata bytes (what its footer's length names), read from the end
/// of the file: one read when it fits the last 64 KiB, as it nearly always does.
async fn read_footer(root: &StoreLocation, key: &str, size: u64) -> Result<bytes::Bytes, String> {
    use object_store::ObjectStoreExt;
    let path = object_store::path::Path::from(key);
    let store = root.store();
    let tail_len = size.min(64 * 1024);
    if tail_len < 8 {
        return Err("not a Parquet file: shorter than its footer".into());
    }
    let tail = store
        .get_range(&path, size - tail_len..size)
        .await
        .map_err(|e| e.to_string())?;
    let n = tail.len();
    if &tail[n - 4..] != b"PAR1" {
        return Err("not a Parquet file: no PAR1 at its end".into());
    }
    let len = u64::from(u32::from_le_bytes([tail[n - 8], tail[n - 7], tail[n - 6], tail[n - 5]]));
    if len + 8 > size {
        return Err(format!("its footer names {len} bytes of metadata in a file of {size}"));
    }
    if len + 8 <= tail_len {
        let end = n - 8;
        return Ok(tail.slice(end - len as usize..end));
    }
    store
        .get_range(&path, size - 8 - len..size - 8)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_need_no_quotes() {
        assert_eq!(sql_name("alpha-it-invoice-lines"), "alpha_it_invoice_lines");
        assert_eq!(sql_name("nimbus"), "nimbus");
        assert_eq!(sql_name("D1"), "d1");
    }
}

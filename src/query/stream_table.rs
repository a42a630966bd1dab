//! One stream's table: every committed batch of one organisation's stream, its Parquet
//! files read as one table with three columns of each batch's own (`_batch_id`,
//! `_period`, `_status`). Filters on those three pick the batches at planning time, so
//! a query on one period opens only that period's files; other filters go on down into
//! the Parquet scan (row groups and pages pruned by their statistics).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result, ScalarValue, project_schema};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::{TableSchema, TableSchemaBuilder};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;

/// The columns every stream table adds, in this order, after the batch's own.
pub const BATCH_COLUMNS: [&str; 3] = ["_batch_id", "_period", "_status"];

/// The statuses a table shows unless a query asks for `_status` itself: each batch's
/// current version, as far as it got (not rejected, superseded or voided).
pub const CURRENT: [&str; 4] = ["ready", "accepted", "held", "published"];

/// One batch of the table: its values for the three columns and its files.
#[derive(Clone, Debug)]
pub struct TableBatch {
    pub batch_id: String,
    pub period: String,
    pub status: String,
    /// Each Parquet file's path in the warehouse's store and its size in bytes.
    pub files: Vec<(object_store::path::Path, u64)>,
}

#[derive(Debug)]
pub struct StreamTable {
    /// The files' columns, then the three batch columns.
    schema: TableSchema,
    /// The store every file is in (registered with the session's runtime).
    store: ObjectStoreUrl,
    batches: Vec<TableBatch>,
}

impl StreamTable {
    /// `columns`: the stream's columns as its newest batch wrote them.
    pub fn new(columns: SchemaRef, store: ObjectStoreUrl, batches: Vec<TableBatch>) -> Self {
        let batch_columns: Vec<FieldRef> = BATCH_COLUMNS
            .iter()
            .map(|n| Arc::new(Field::new(*n, DataType::Utf8, false)))
            .collect();
        let schema = TableSchemaBuilder::new(columns)
            .with_table_partition_cols(batch_columns)
            .build();
        StreamTable { schema, store, batches }
    }

    /// Which batches `filters` (on the batch columns only) keep, evaluated once over a
    /// table of one row per batch. Without a filter on `_status`, only current batches.
    fn chosen(&self, state: &dyn Session, filters: &[Expr]) -> Result<Vec<&TableBatch>> {
        let asks_for_status = filters
            .iter()
            .any(|f| f.column_refs().iter().any(|c| c.name == BATCH_COLUMNS[2]));
        let mut batches: Vec<&TableBatch> = self
            .batches
            .iter()
            .filter(|b| asks_for_status || CURRENT.contains(&b.status.as_str()))
            .collect();
        let on_batches: Vec<Expr> = filters
            .iter()
            .filter(|f| expr_applicable_for_cols(&BATCH_COLUMNS, f))
            .cloned()
            .collect();
        let Some(predicate) = conjunction(on_batches) else {
            return Ok(batches);
        };
        let schema = Arc::new(Schema::new(self.schema.table_partition_cols().clone()));
        let predicate = state.create_physical_expr(predicate, &DFSchema::try_from(schema.clone())?)?;
        let column = |f: fn(&TableBatch) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(batches.iter().map(|b| f(b))))
        };
        let rows = RecordBatch::try_new(
            schema,
            vec![column(|b| &b.batch_id), column(|b| &b.period), column(|b| &b.status)],
        )?;
        let keep = predicate.evaluate(&rows)?.into_array(rows.num_rows())?;
        let keep = keep.as_boolean();
        let mut i = 0;
        batches.retain(|_| {
            i += 1;
            keep.is_valid(i - 1) && keep.value(i - 1)
        });
        Ok(batches)
    }
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.schema.table_schema().clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // On the batch columns: decided here, per batch (exact). Any other: handed to the
        // Parquet scan for pruning, and applied again above it.
        Ok(filters
            .iter()
            .map(|f| match expr_applicable_for_cols(&BATCH_COLUMNS, f) {
                true => TableProviderFilterPushDown::Exact,
                false => TableProviderFilterPushDown::Inexact,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut files = Vec::new();
        for b in self.chosen(state, filters)? {
            let values = vec![
                ScalarValue::Utf8(Some(b.batch_id.clone())),
                ScalarValue::Utf8(Some(b.period.clone())),
                ScalarValue::Utf8(Some(b.status.clone())),
            ];
            for (location, size) in &b.files {
                let meta = object_store::ObjectMeta {
                    location: location.clone(),
                    last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
                    size: *size,
                    e_tag: None,
                    version: None,
                };
                files.push(PartitionedFile::new_from_meta(meta).with_partition_values(values.clone()));
            }
        }
        if files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(project_schema(&self.schema(), projection)?)));
        }
        let source =
            ParquetSource::new(self.schema.clone()).with_table_parquet_options(state.default_table_options().parquet);
        let groups = FileGroup::new(files).split_files(state.config().target_partitions());
        let config = FileScanConfigBuilder::new(self.store.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

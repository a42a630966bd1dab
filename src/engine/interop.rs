//! arrow-rs <-> Polars through the Arrow C Data Interface: buffers are shared, not copied
//! (see ../shared/recipes/polars_ffi.rs). Both crates implement the same #[repr(C)] structs.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, make_array};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use polars::prelude as pl;
use polars_arrow::ffi as pffi;

/// Why data could not cross between Arrow and Polars.
#[derive(Debug, thiserror::Error)]
pub enum InteropError {
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Polars(#[from] pl::PolarsError),
    #[error("column `{column}`: {source}")]
    Column { column: String, source: pl::PolarsError },
}

fn arrow_to_polars_array(array: &ArrayRef) -> Result<Box<dyn polars_arrow::array::Array>, InteropError> {
    let (ffi_array, ffi_schema) = to_ffi(&array.to_data()).map_err(InteropError::from)?;
    // SAFETY: FFI_ArrowSchema/FFI_ArrowArray and polars' ArrowSchema/ArrowArray are the
    // same C Data Interface structs; ownership (and the release callback) moves across.
    let schema: pffi::ArrowSchema = unsafe { std::mem::transmute::<FFI_ArrowSchema, pffi::ArrowSchema>(ffi_schema) };
    let array: pffi::ArrowArray = unsafe { std::mem::transmute::<FFI_ArrowArray, pffi::ArrowArray>(ffi_array) };
    let field = unsafe { pffi::import_field_from_c(&schema) }.map_err(InteropError::from)?;
    unsafe { pffi::import_array_from_c(array, field.dtype().clone()) }.map_err(InteropError::from)
}

/// Record batches (all of one schema) -> one Polars DataFrame whose columns keep one chunk
/// per batch, without copying the buffers.
pub fn to_polars(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<pl::DataFrame, InteropError> {
    let empty;
    let batches = if batches.is_empty() {
        empty = [RecordBatch::new_empty(schema.clone())];
        &empty[..]
    } else {
        batches
    };
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let chunks = batches
            .iter()
            .map(|b| arrow_to_polars_array(b.column(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let series = pl::Series::try_from((pl::PlSmallStr::from(field.name().as_str()), chunks)).map_err(|source| {
            InteropError::Column {
                column: field.name().clone(),
                source,
            }
        })?;
        columns.push(pl::Column::from(series));
    }
    pl::DataFrame::new_infer_height(columns).map_err(InteropError::from)
}

/// A Polars DataFrame -> record batches of at most `parts` slices (so DataFusion can work
/// on them in parallel). Polars' string view type stays Utf8View; the contract casts.
pub fn to_arrow(df: &pl::DataFrame, parts: usize) -> Result<(SchemaRef, Vec<RecordBatch>), InteropError> {
    let mut fields = Vec::with_capacity(df.width());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(df.width());
    for column in df.columns() {
        let series = column.as_materialized_series().rechunk();
        let parr = series.to_arrow(0, pl::CompatLevel::newest());
        let pfield = series.field().to_arrow(pl::CompatLevel::newest());
        let ffi_schema = pffi::export_field_to_c(&pfield);
        let ffi_array = pffi::export_array_to_c(parr);
        // SAFETY: see arrow_to_polars_array.
        let ffi_schema: FFI_ArrowSchema =
            unsafe { std::mem::transmute::<pffi::ArrowSchema, FFI_ArrowSchema>(ffi_schema) };
        let ffi_array: FFI_ArrowArray = unsafe { std::mem::transmute::<pffi::ArrowArray, FFI_ArrowArray>(ffi_array) };
        let data = unsafe { from_ffi(ffi_array, &ffi_schema) }.map_err(InteropError::from)?;
        let array = make_array(data);
        fields.push(Field::new(series.name().as_str(), array.data_type().clone(), true));
        arrays.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(InteropError::from)?;
    let rows = batch.num_rows();
    let parts = parts.max(1);
    let chunk = rows.div_ceil(parts).max(1);
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < rows {
        let len = chunk.min(rows - offset);
        out.push(batch.slice(offset, len)); // zero-copy
        offset += len;
    }
    if out.is_empty() {
        out.push(batch);
    }
    Ok((schema, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, Int64Array, StringArray};
    use arrow::datatypes::DataType;

    #[test]
    fn round_trip_keeps_values_and_shares_int_buffers() {
        let ids = Int64Array::from(vec![1, 2, 3]);
        let ptr = ids.values().as_ptr();
        let amounts = Decimal128Array::from(vec![Some(12_3456), None, Some(-1)])
            .with_precision_and_scale(18, 4)
            .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("sku", DataType::Utf8, true),
            Field::new("amount", DataType::Decimal128(18, 4), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(ids),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("ü")])),
                Arc::new(amounts),
            ],
        )
        .unwrap();
        let df = to_polars(&schema, std::slice::from_ref(&batch)).unwrap();
        let imported = df.column("id").unwrap().as_materialized_series().i64().unwrap();
        let imported_ptr = imported.downcast_iter().next().unwrap().values().as_ptr();
        assert_eq!(imported_ptr, ptr, "int64 column must cross without a copy");

        let (back_schema, back) = to_arrow(&df, 2).unwrap();
        assert_eq!(back.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        assert_eq!(back.len(), 2);
        assert_eq!(back_schema.field(2).data_type(), &DataType::Decimal128(18, 4));
        let joined = arrow::compute::concat_batches(&back_schema, &back).unwrap();
        let amount = joined.column(2).as_any().downcast_ref::<Decimal128Array>().unwrap();
        assert_eq!(amount.value(0), 12_3456);
        assert!(amount.is_null(1));
        assert_eq!(amount.value(2), -1);
        let sku = arrow::compute::cast(joined.column(1), &DataType::Utf8).unwrap();
        let sku = sku.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(sku.value(2), "ü");
    }

    #[test]
    fn empty_input_keeps_the_schema() {
        let schema = Arc::new(Schema::new(vec![Field::new("q", DataType::Decimal128(18, 6), true)]));
        let df = to_polars(&schema, &[]).unwrap();
        assert_eq!(df.height(), 0);
        let (s, batches) = to_arrow(&df, 4).unwrap();
        assert_eq!(s.field(0).data_type(), &DataType::Decimal128(18, 6));
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    }
}

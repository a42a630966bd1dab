//! Results on the wire, with money exact. The library's encoder goes through
//! `rust_decimal`, which holds 28 digits: a `Decimal128(38, s)` value past that fails
//! the whole query. Here a Decimal128 column is written as Postgres `numeric` straight
//! from its i128 (text and binary), and every other column through the library's
//! encoder.

use std::error::Error;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Decimal128Type};
use bytes::{BufMut, BytesMut};
use datafusion::prelude::DataFrame;
use datafusion_postgres::arrow_pg::datatypes::arrow_schema_to_pg_fields;
use datafusion_postgres::arrow_pg::encoder::encode_value;
use datafusion_postgres::pgwire::api::Type;
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::data::DataRow;
use datafusion_postgres::pgwire::types::ToSqlText;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use futures::{StreamExt, stream};
use postgres_types::{IsNull, ToSql, to_sql_checked};

/// A decimal as Postgres `numeric`: `mantissa * 10^-scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgNumeric {
    pub mantissa: i128,
    pub scale: i8,
}

impl PgNumeric {
    /// The digits left and right of the point, without sign.
    fn parts(&self) -> (String, String) {
        let digits = self.mantissa.unsigned_abs().to_string();
        if self.scale <= 0 {
            let zeros = "0".repeat(self.scale.unsigned_abs() as usize);
            let whole = if digits == "0" { digits } else { digits + &zeros };
            return (whole, String::new());
        }
        let scale = self.scale as usize;
        if digits.len() <= scale {
            ("0".into(), format!("{digits:0>scale$}"))
        } else {
            let (whole, fraction) = digits.split_at(digits.len() - scale);
            (whole.into(), fraction.into())
        }
    }

    /// The text form, as Postgres prints it: every digit of the scale.
    pub fn text(&self) -> String {
        let (whole, fraction) = self.parts();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        if fraction.is_empty() {
            format!("{sign}{whole}")
        } else {
            format!("{sign}{whole}.{fraction}")
        }
    }

    /// The binary form: base-10000 digits with a weight (the power of 10000 of the first
    /// digit), the sign and the display scale.
    pub fn binary(&self, out: &mut BytesMut) {
        let (whole, fraction) = self.parts();
        let whole_width = whole.len().div_ceil(4) * 4;
        let fraction_width = fraction.len().div_ceil(4) * 4;
        let padded = format!("{whole:0>whole_width$}{fraction:0<fraction_width$}");
        let mut groups: Vec<i16> = padded
            .as_bytes()
            .chunks(4)
            .map(|g| g.iter().fold(0i16, |n, d| n * 10 + (d - b'0') as i16))
            .collect();
        let mut weight = (whole_width / 4) as i16 - 1;
        let leading = groups.iter().take_while(|g| **g == 0).count();
        groups.drain(..leading);
        weight -= leading as i16;
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let sign: u16 = if self.mantissa < 0 { 0x4000 } else { 0 };
        out.put_i16(groups.len() as i16);
        out.put_i16(weight);
        out.put_u16(sign);
        out.put_u16(self.scale.max(0) as u16);
        for g in groups {
            out.put_i16(g);
        }
    }
}

impl ToSql for PgNumeric {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        self.binary(out);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

impl ToSqlText for PgNumeric {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _format_options: &FormatOptions,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_slice(self.text().as_bytes());
        Ok(IsNull::No)
    }
}

/// Run `df` and stream its rows in the formats the client asked for.
pub async fn encode_dataframe(
    df: DataFrame,
    format: &Format,
    options: Option<Arc<FormatOptions>>,
) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(arrow_schema_to_pg_fields(df.schema().as_arrow(), format, options)?);
    let batches = df
        .execute_stream()
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let row_fields = fields.clone();
    let rows = batches
        .map(move |batch| {
            let rows: Vec<PgWireResult<DataRow>> = match batch {
                Ok(batch) => encode_batch(&batch, &row_fields),
                Err(e) => vec![Err(PgWireError::ApiError(Box::new(e)))],
            };
            stream::iter(rows)
        })
        .flatten();
    Ok(QueryResponse::new(fields, rows))
}

/// The rows of one batch. The wire protocol is row by row, so this is the one place a
/// result is walked a value at a time.
fn encode_batch(batch: &RecordBatch, fields: &Arc<Vec<FieldInfo>>) -> Vec<PgWireResult<DataRow>> {
    let schema = batch.schema();
    let mut encoder = DataRowEncoder::new(fields.clone());
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let encoded = (0..batch.num_columns()).try_for_each(|col| {
            let array = batch.column(col);
            match array.data_type() {
                DataType::Decimal128(_, scale) => {
                    let decimals = array.as_primitive::<Decimal128Type>();
                    let value = (!decimals.is_null(row)).then(|| PgNumeric {
                        mantissa: decimals.value(row),
                        scale: *scale,
                    });
                    encoder.encode_field_with_type_and_format(
                        &value,
                        fields[col].datatype(),
                        fields[col].format(),
                        fields[col].format_options(),
                    )
                }
                _ => encode_value(&mut encoder, array, row, schema.field(col), &fields[col]),
            }
        });
        match encoded {
            Ok(()) => rows.push(Ok(encoder.take_row())),
            Err(e) => {
                rows.push(Err(e));
                break;
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(mantissa: i128, scale: i8) -> PgNumeric {
        PgNumeric { mantissa, scale }
    }

    fn binary(v: PgNumeric) -> Vec<i16> {
        let mut out = BytesMut::new();
        v.binary(&mut out);
        out.chunks(2).map(|c| i16::from_be_bytes([c[0], c[1]])).collect()
    }

    #[test]
    fn text_keeps_every_digit_of_the_scale() {
        assert_eq!(n(123456, 4).text(), "12.3456");
        assert_eq!(n(-5, 4).text(), "-0.0005");
        assert_eq!(n(0, 2).text(), "0.00");
        assert_eq!(n(42, -3).text(), "42000");
        // 38 digits: past what rust_decimal holds.
        assert_eq!(
            n(12345678901234567890123456789012345678, 10).text(),
            "1234567890123456789012345678.9012345678"
        );
    }

    #[test]
    fn binary_is_base_10000_digits_with_weight_sign_and_scale() {
        // 12.3456 = 12 . 3456 -> digits [12, 3456], weight 0, scale 4.
        assert_eq!(binary(n(123456, 4)), vec![2, 0, 0, 4, 12, 3456]);
        // -0.0005 = 0 . 0005 -> leading zero group dropped: [5], weight -1.
        assert_eq!(binary(n(-5, 4)), vec![1, -1, 0x4000, 4, 5]);
        // 1000000.50 = 100 0000 . 5000 -> an inner zero group stays, weight 1.
        assert_eq!(binary(n(100000050, 2)), vec![3, 1, 0, 2, 100, 0, 5000]);
        // zero: no digits.
        assert_eq!(binary(n(0, 2)), vec![0, 0, 0, 2]);
        // 42000 with scale -3: 4 2000 -> weight 1.
        assert_eq!(binary(n(42, -3)), vec![2, 1, 0, 0, 4, 2000]);
    }
}

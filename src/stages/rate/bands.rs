//! Phase 0 of rating, for a price list with its bands in columns (one row per plan, the
//! band limits and prices side by side, as price lists are often kept in a spreadsheet):
//! the rows are turned into one row per band, the shape the other phases read. One
//! projection per band declared under `bands`, unioned: it runs on the price list only.
//!
//! A band gives its upper limit (`to`) or its lower limit (`from`), or both; a missing
//! limit is the neighbouring band's (the first band starts at 0, the last is open). A band
//! is absent from a plan whose row leaves its prices empty, or where the band before it
//! is open-ended, so plans with fewer bands sit in the same table.

use arrow::datatypes::DataType;
use datafusion::logical_expr::type_coercion::binary::type_union_resolution;
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::{DataFrame, ident, lit};
use datafusion::scalar::ScalarValue;

use super::RateStage;
use crate::definition::{Fields, Reader, Text};
use crate::stages::StageError;
use crate::stages::settings::plan_err;

/// The price columns a band may have, by the role the long form gives them.
pub const BAND_PRICES: &[&str] = &["unit_price", "flat_fee", "percent"];
const BAND_KEYS: &[&str] = &["from", "to", "unit_price", "flat_fee", "percent"];

/// One band's columns in a wide price list, by role (`from`, `to`, `unit_price`, ...).
#[derive(Debug)]
pub struct BandColumns {
    pub at: Text,
    columns: Vec<(&'static str, Text)>,
}

impl BandColumns {
    fn get(&self, role: &str) -> Option<&Text> {
        self.columns.iter().find(|(r, _)| *r == role).map(|(_, c)| c)
    }
}

/// `bands: [{ to: band1_to, unit_price: band1_price }, { unit_price: band2_price }]`.
pub fn read_bands(f: &mut Fields, r: &mut Reader) -> Option<Option<Vec<BandColumns>>> {
    let Some(node) = f.get("bands") else {
        return Some(None);
    };
    let items = r.sequence(node, "bands")?;
    let mut bands = Vec::new();
    for item in items {
        let mut m = r.mapping(item, "band")?;
        let at = Text {
            value: format!("band {}", bands.len() + 1),
            location: m.location.clone(),
        };
        let columns: Vec<(&'static str, Text)> =
            BAND_KEYS.iter().filter_map(|k| m.text(r, k).map(|t| (*k, t))).collect();
        m.finish(r, BAND_KEYS);
        bands.push(BandColumns { at, columns });
    }
    let last = bands.len().saturating_sub(1);
    let mut ok = !bands.is_empty();
    if bands.is_empty() {
        r.error("`bands` lists no band", r.loc(node)).expected =
            Some("one mapping per band, e.g. `- { to: band1_to, unit_price: band1_price }`".into());
    }
    for (i, b) in bands.iter().enumerate() {
        let problem = if !BAND_PRICES.iter().any(|p| b.get(p).is_some()) {
            Some("names no price column".to_string())
        } else if i > 0 && b.get("from").is_none() && bands[i - 1].get("to").is_none() {
            Some(format!("has no `from`, and band {i} no `to` to start at"))
        } else if i < last && b.get("to").is_none() && bands[i + 1].get("from").is_none() {
            Some(format!("has no `to`, and band {} no `from` to end at", i + 2))
        } else {
            None
        };
        if let Some(problem) = problem {
            let d = r.error(format!("{} {problem}", b.at.value), b.at.location.clone());
            d.expected = Some(
                "`unit_price`, `flat_fee` or `percent` (the band's price columns) and the limits: `to` \
                 (or the next band's `from`); the first band starts at 0 and the last may be open"
                    .into(),
            );
            ok = false;
        }
    }
    ok.then_some(Some(bands))
}

impl RateStage {
    /// The price list with one row per band: the band columns replaced by the roles
    /// `band_from`, `band_to` and the band's prices (under the names `columns` gives them).
    pub(super) fn bands_in_rows(&self, plans: DataFrame, bands: &[BandColumns]) -> Result<DataFrame, StageError> {
        let mut roles: Vec<&str> = vec!["band_from", "band_to"];
        roles.extend(BAND_PRICES.iter().filter(|p| bands.iter().any(|b| b.get(p).is_some())));
        // Every band column, checked, with its type; a role takes the type all its columns fit.
        let mut band_columns: Vec<&str> = Vec::new();
        for b in bands {
            for (_, c) in &b.columns {
                if plans.schema().field_with_unqualified_name(&c.value).is_err() {
                    let names: Vec<&str> = plans.schema().fields().iter().map(|f| f.name().as_str()).collect();
                    let mut e = StageError::new(format!(
                        "price list `{}` has no column `{}` for {}",
                        self.price_list.value, c.value, b.at.value
                    ))
                    .at(Some(c.location.clone()));
                    e.hint = crate::definition::diagnostics::did_you_mean(&c.value, names.iter().copied())
                        .or(Some(format!("its columns are: {}", names.join(", "))));
                    return Err(e);
                }
                band_columns.push(&c.value);
            }
        }
        let type_of = |c: &str| -> DataType {
            plans
                .schema()
                .field_with_unqualified_name(c)
                .map(|f| f.data_type().clone())
                .unwrap_or(DataType::Null)
        };
        let limit_types: Vec<DataType> = bands
            .iter()
            .flat_map(|b| [b.get("from"), b.get("to")])
            .flatten()
            .map(|c| type_of(&c.value))
            .chain([DataType::Int64])
            .collect();
        let role_type = |role: &str| -> Option<DataType> {
            match role {
                "band_from" | "band_to" => type_union_resolution(&limit_types),
                price => {
                    let types: Vec<DataType> = bands
                        .iter()
                        .filter_map(|b| b.get(price))
                        .map(|c| type_of(&c.value))
                        .collect();
                    type_union_resolution(&types)
                }
            }
        };
        let kept: Vec<Expr> = plans
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|n| !band_columns.contains(n) && !roles.iter().any(|r| self.col(r) == *n))
            .map(ident)
            .collect();
        let mut rows: Option<DataFrame> = None;
        for (i, b) in bands.iter().enumerate() {
            let limit = |own: Option<&Text>, neighbour: Option<&Text>, default: ScalarValue| -> Expr {
                own.or(neighbour)
                    .map(|c| ident(&c.value))
                    .unwrap_or_else(|| lit(default))
            };
            let from = limit(
                b.get("from"),
                i.checked_sub(1).and_then(|p| bands[p].get("to")),
                ScalarValue::Int64(Some(0)),
            );
            let to = limit(
                b.get("to"),
                bands.get(i + 1).and_then(|n| n.get("from")),
                ScalarValue::Null,
            );
            let mut select = kept.clone();
            let mut priced: Option<Expr> = None;
            for role in &roles {
                let value = match *role {
                    "band_from" => from.clone(),
                    "band_to" => to.clone(),
                    price => b.get(price).map(|c| ident(&c.value)).unwrap_or(lit(ScalarValue::Null)),
                };
                if BAND_PRICES.contains(role) && b.get(role).is_some() {
                    let present = ident(&b.get(role).expect("checked").value).is_not_null();
                    priced = Some(priced.map_or(present.clone(), |p| p.or(present)));
                }
                let value = match role_type(role) {
                    Some(t) => cast(value, t),
                    None => value,
                };
                select.push(value.alias(self.col(role)));
            }
            // Present: a price on this row, and (past the first) a lower limit to start at.
            let mut present = priced.expect("a band names a price column (checked when read)");
            if i > 0 {
                present = present.and(from.is_not_null());
            }
            let band = plans
                .clone()
                .filter(present)
                .and_then(|d| d.select(select))
                .map_err(plan_err)?;
            rows = Some(match rows {
                None => band,
                Some(all) => all.union(band).map_err(plan_err)?,
            });
        }
        rows.ok_or_else(|| StageError::new("`bands` lists no band"))
    }
}

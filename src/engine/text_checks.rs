//! Checks on text that a cast would accept silently: a decimal with more places than its
//! column (the cast rounds it) and a date not written `YYYY-MM-DD` (the cast reads
//! `20261001`, `2026-10-1`, and drops a time of day). One pass over each string array's
//! bytes: no regular expression, no trimmed copy of the text.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanBuilder};
use arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// What a text value must look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TextRule {
    /// No digit other than 0 past `scale` places after the decimal point.
    DecimalPlaces(u8),
    /// Exactly `YYYY-MM-DD` (surrounding blanks allowed).
    IsoDate,
}

impl TextRule {
    /// Whether `text` breaks the rule.
    fn breaks(self, text: &str) -> bool {
        let t = text.trim_ascii().as_bytes();
        match self {
            TextRule::IsoDate => {
                t.len() != 10
                    || !t.iter().enumerate().all(|(i, b)| match i {
                        4 | 7 => *b == b'-',
                        _ => b.is_ascii_digit(),
                    })
            }
            TextRule::DecimalPlaces(scale) => match t.iter().position(|b| *b == b'.') {
                None => false,
                Some(dot) => t[dot + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .skip(scale as usize)
                    .any(|b| *b != b'0'),
            },
        }
    }
}

/// True where `text` breaks `rule`, NULL where it is NULL.
pub fn breaks(text: Expr, rule: TextRule) -> Expr {
    ScalarUDF::new_from_impl(TextRuleUdf {
        signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        rule,
    })
    .call(vec![text])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TextRuleUdf {
    signature: Signature,
    rule: TextRule,
}

impl ScalarUDFImpl for TextRuleUdf {
    fn name(&self) -> &str {
        match self.rule {
            TextRule::DecimalPlaces(_) => "billflow_too_many_places",
            TextRule::IsoDate => "billflow_not_iso_date",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let values = args.args[0].to_array(args.number_rows)?;
        let Some(text) = values.as_string_opt::<i32>() else {
            return Err(DataFusionError::Internal(format!("{}: expected text", self.name())));
        };
        let mut out = BooleanBuilder::with_capacity(text.len());
        for v in text.iter() {
            out.append_option(v.map(|s| self.rule.breaks(s)));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_match_what_a_cast_would_change() {
        let places = TextRule::DecimalPlaces(4);
        for ok in ["1.2345", "1.234500", " 1.5 ", "12", "-0.0001", "1."] {
            assert!(!places.breaks(ok), "{ok}");
        }
        for bad in ["1.23456", "0.00001", "-1.00009"] {
            assert!(places.breaks(bad), "{bad}");
        }
        assert!(TextRule::DecimalPlaces(0).breaks("3.5"));
        assert!(!TextRule::DecimalPlaces(0).breaks("3.0"));
        for ok in ["2026-10-01", " 2026-10-01 "] {
            assert!(!TextRule::IsoDate.breaks(ok), "{ok}");
        }
        for bad in [
            "20261001",
            "2026-10-1",
            "2026-10-01T12:00:00",
            "2026/10/01",
            "",
            "2026-1a-01",
        ] {
            assert!(TextRule::IsoDate.breaks(bad), "{bad}");
        }
    }
}

//! Phase 1 of rating: each usage line gets the price version valid on its date (or the
//! one version of its keys when the price list is not dated). A line with several
//! versions fails the stream; a line with none follows `on_missing_price`.

use arrow::datatypes::DataType;
use datafusion::functions::expr_fn::{coalesce, concat_ws};
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::{DataFrame, ident, lit};

use super::{RateStage, Usage};
use crate::engine::side::{OnError, apply_policy};
use crate::stages::reference::{Join, MATCHES, join_frame};
use crate::stages::settings::plan_err;
use crate::stages::{StageEnv, StageError};

impl RateStage {
    /// The lines with their version's `valid_from` (as `__bf_version`, when dated) and the
    /// number of versions matched (in `MATCHES`), refused lines taken out.
    pub(super) async fn price_versions(
        &self,
        input: DataFrame,
        plans: &DataFrame,
        usage: &Usage,
        env: &StageEnv<'_>,
    ) -> Result<DataFrame, StageError> {
        let dated = self.dated();
        // A price list without the end column (none named): each version lasts until the
        // next one of its keys starts.
        let valid_to = self.valid_to();
        let ends = valid_to.column_in(plans.schema()).map(str::to_string);
        // One row per (keys, valid_from) of the plans.
        let mut version_cols: Vec<Expr> = self.keys.iter().map(|(_, k)| ident(k)).collect();
        if dated {
            version_cols.push(ident(self.col("valid_from")));
            version_cols.extend(ends.iter().map(ident));
        }
        let versions = plans.clone().aggregate(version_cols, vec![]).map_err(plan_err)?;
        let join = Join {
            reference: self.price_list.clone(),
            keys: usage.keys.clone(),
            pulled: if dated {
                vec![(self.col("valid_from").to_string(), "__bf_version".into())]
            } else {
                vec![]
            },
            dated: usage
                .date
                .clone()
                .map(|d| (d, self.col("valid_from").to_string(), valid_to)),
            order: None,
            several_dropped: true,
        };
        let lines = join_frame(input, versions, &join).await?;
        let several = self.refusal_reason("several price versions in", usage);
        let lines = apply_policy(
            lines,
            OnError::Fail,
            ident(MATCHES).gt(lit(1i64)),
            several,
            env.stage,
            env.side,
        )
        .map_err(plan_err)?;
        let none = self.refusal_reason("no price in", usage);
        apply_policy(
            lines,
            self.on_missing,
            ident(MATCHES).eq(lit(0i64)),
            none,
            env.stage,
            env.side,
        )
        .map_err(plan_err)
    }

    /// ``<what> `<price list>` for (<keys>) valid on <date>``, per line.
    fn refusal_reason(&self, what: &str, usage: &Usage) -> Expr {
        let as_text = |e: &Expr| coalesce(vec![cast(e.clone(), DataType::Utf8), lit("NULL")]);
        let key_text = concat_ws(lit(", "), usage.keys.iter().map(|(e, _)| as_text(e)).collect());
        let at_date = match &usage.date {
            Some(d) => concat_ws(lit(""), vec![lit(" valid on "), as_text(d)]),
            None => lit(""),
        };
        concat_ws(
            lit(""),
            vec![
                lit(format!("{what} `{}` for (", self.price_list.value)),
                key_text,
                lit(")"),
                at_date,
            ],
        )
    }
}

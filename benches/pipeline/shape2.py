"""The second job of the pipeline benchmark (issue 17): the billing job as users write it,
on the data `billflow generate` writes, with its inputs in the shapes they arrive in.

- Organisations from a file (`reference2/organizations.csv`: the 20 distributors and
  2,000 resellers), the vendor inline.
- A price list with its bands in columns (`reference2/price_bands.csv`: one row per SKU,
  `upto_1, price_1, upto_2, price_2, price_3`; every 7th SKU has two bands only, its band 2
  open-ended), rated `tiered` (graduated).
- Exchange rates with only `valid_from` (`reference2/fx_rates.csv`), converted at the
  period's closing rate: the latest rate on or before its last day.
- Markups per distributor and per reseller from two reference tables.

The job, in billflow (`pipeline-shape2.yaml`) and in both peers:

- vendor-rated-usage: the period's usage lines with their subscription (customer,
  reseller, distributor; a missing one is refused), summed per subscription and SKU
  (`aggregate`), then rated: per (subscription_id, sku), charge = sum over bands of
  min(max(Q - from, 0), to - from) x unit_price (open band: max(Q - from, 0)), rounded
  half-even to 4 places (one line per group: the line's cost is the charge).
- distributor-usage (for each distributor): cost = cost_usd x the closing USD->currency
  rate, half-even 4 places; price = cost x (1 + markup_pct), half-even 4 places.
- reseller-usage (for each reseller): reseller_price = price x (1 + markup_pct),
  half-even 4 places.

Money is computed on scaled integers in both peers (see peers.py). The output layout and
the columns compared are those of peers.py, so compare.py checks them the same way.

Usage: python3 shape2.py prepare SCENARIO_DIR
       python3 shape2.py {duckdb|polars} SCENARIO_DIR OUT_DIR [--period YYYY-MM] [--threads N]
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import (  # noqa: E402
    _DUCK_MACROS,
    DISTRIBUTOR_STREAM,
    PARTS,
    RESELLER_STREAM,
    VENDOR_STREAM,
    _Phases,
    _period_bounds,
    _pl_dec4,
    _pl_div_he,
    _pl_unscaled,
    _prepare,
    _rename_partitions,
)

PIPELINE = "pipeline-shape2.yaml"
REF = "reference2"


def prepare(scenario_dir: str) -> str:
    """Write the job's inputs (from the generated ones) and its pipeline; its path."""
    ref, out = os.path.join(scenario_dir, "reference"), os.path.join(scenario_dir, REF)
    os.makedirs(out, exist_ok=True)

    def rows(name):
        with open(os.path.join(ref, name), newline="") as f:
            return list(csv.DictReader(f))

    bands: dict[str, list[dict]] = {}
    for r in rows("price_plans.csv"):
        if r["model"] != "tiered":
            raise RuntimeError("the generated price plans are tiered")
        bands.setdefault(r["sku"], []).append(r)
    with open(os.path.join(out, "price_bands.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "upto_1", "price_1", "upto_2", "price_2", "price_3"])
        for i, (sku, bs) in enumerate(sorted(bands.items())):
            bs = sorted(bs, key=lambda b: float(b["band_from"]))
            if len(bs) != 3:
                raise RuntimeError(f"{sku}: expected 3 bands")
            if i % 7 == 0:  # two bands: band 2 open-ended, no band 3
                w.writerow([sku, bs[0]["band_to"], bs[0]["unit_price"], "", bs[1]["unit_price"], ""])
            else:
                w.writerow([sku, bs[0]["band_to"], bs[0]["unit_price"], bs[1]["band_to"], bs[1]["unit_price"],
                            bs[2]["unit_price"]])
    with open(os.path.join(out, "fx_rates.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["from_currency", "to_currency", "rate", "valid_from"])
        for r in rows("fx_rates.csv"):
            w.writerow([r["from_currency"], r["to_currency"], r["rate"], r["valid_from"]])
    terms = rows("channel_terms.csv")
    for tier, prefix in [("distributor", "D"), ("reseller", "R")]:
        with open(os.path.join(out, f"{tier}_terms.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([f"{tier}_id", "currency", "markup_pct"])
            for t in terms:
                if t["organization_id"].startswith(prefix):
                    w.writerow([t["organization_id"], t["currency"], t["markup_pct"]])
    # The organisations, from the generated pipeline's inline list.
    text = open(os.path.join(scenario_dir, "pipeline.yaml")).read()
    block = text[text.index("organizations:\n"): text.index("\nsources:")]
    with open(os.path.join(out, "organizations.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "tier", "upstream", "currency"])
        for line in block.splitlines()[2:]:
            fields = dict(kv.split(": ", 1) for kv in line.strip()[4:-2].split(", "))
            w.writerow([fields["id"], fields["name"], fields["tier"], fields.get("upstream", ""), fields["currency"]])
    path = os.path.join(scenario_dir, PIPELINE)
    with open(path, "w") as f:
        f.write(PIPELINE_TEXT)
    return path


PIPELINE_TEXT = """# The second benchmark job (benches/pipeline/shape2.py): inputs as they arrive.
pipeline: shape2
warehouse: warehouse2

organizations:
  - { id: vendor, name: Vendor Inc., tier: vendor, currency: USD }
  - { url: reference2/organizations.csv }

sources:
  usage:
    url: inputs/usage-*.parquet
references:
  subscriptions:
    url: reference/subscriptions.csv
    schema:
      - { name: subscription_id, type: string }
      - { name: customer_id, type: string }
      - { name: reseller_id, type: string }
      - { name: distributor_id, type: string }
  price_bands:
    url: reference2/price_bands.csv
    schema:
      - { name: sku, type: string }
      - { name: upto_1, type: "decimal(18,6)" }
      - { name: price_1, type: "decimal(18,6)" }
      - { name: upto_2, type: "decimal(18,6)" }
      - { name: price_2, type: "decimal(18,6)" }
      - { name: price_3, type: "decimal(18,6)" }
  fx_rates:
    url: reference2/fx_rates.csv
    schema:
      - { name: from_currency, type: string }
      - { name: to_currency, type: string }
      - { name: rate, type: "decimal(18,8)" }
      - { name: valid_from, type: date }
  distributor_terms:
    url: reference2/distributor_terms.csv
    schema:
      - { name: distributor_id, type: string }
      - { name: currency, type: string }
      - { name: markup_pct, type: "decimal(9,4)" }
  reseller_terms:
    url: reference2/reseller_terms.csv
    schema:
      - { name: reseller_id, type: string }
      - { name: currency, type: string }
      - { name: markup_pct, type: "decimal(9,4)" }

streams:
  - id: vendor-rated-usage
    kind: usage
    owner: vendor
    input: { source: usage }
    review: { policy: auto, max_rejected_percent: 100 }
    period: usage_date
    stages:
      - { name: subscriber, kind: lookup, reference: subscriptions, keys: [subscription_id], columns: [customer_id, reseller_id, distributor_id], on_missing: reject }
      - { name: per-subscription, kind: aggregate, group_by: [subscription_id, sku, customer_id, reseller_id, distributor_id], sum: [quantity] }
      - name: rate
        kind: rate
        price_list: price_bands
        keys: [sku]
        group_by: [subscription_id]
        quantity: quantity
        model: tiered
        output: cost_usd
        scale: 4
        on_missing_price: reject
        bands:
          - { to: upto_1, unit_price: price_1 }
          - { to: upto_2, unit_price: price_2 }
          - { unit_price: price_3 }
    columns:
      - { name: subscription_id, type: string, nullable: false }
      - { name: sku, type: string, nullable: false }
      - { name: customer_id, type: string, nullable: false }
      - { name: reseller_id, type: string, nullable: false }
      - { name: distributor_id, type: string, nullable: false }
      - { name: quantity, type: "decimal(28,6)", nullable: false }
      - { name: cost_usd, type: "decimal(18,4)", nullable: false }

  - id: distributor-usage
    kind: billing
    for_each: { tier: distributor, column: distributor_id }
    input: { stream: vendor-rated-usage }
    review: { policy: auto, max_rejected_percent: 100 }
    stages:
      - { name: currency, kind: lookup, reference: distributor_terms, keys: [distributor_id], columns: [currency] }
      - { name: convert, kind: convert_currency, amount: cost_usd, from: USD, to_column: currency, rates: fx_rates, rate_date: period_end, output: cost, scale: 4 }
      - { name: markup, kind: markup, column: cost, output: price, rules: { reference: distributor_terms, keys: [distributor_id], rate_column: markup_pct } }
    columns:
      - { name: subscription_id, type: string, nullable: false }
      - { name: sku, type: string, nullable: false }
      - { name: customer_id, type: string, nullable: false }
      - { name: reseller_id, type: string, nullable: false }
      - { name: distributor_id, type: string, nullable: false }
      - { name: quantity, type: "decimal(28,6)", nullable: false }
      - { name: cost_usd, type: "decimal(18,4)", nullable: false }
      - { name: currency, type: string, nullable: false }
      - { name: cost, type: "decimal(18,4)", nullable: false }
      - { name: price, type: "decimal(18,4)", nullable: false }

  - id: reseller-usage
    kind: billing
    for_each: { tier: reseller, column: reseller_id }
    input: { stream: distributor-usage }
    review: { policy: auto, max_rejected_percent: 100 }
    stages:
      - { name: markup, kind: markup, column: price, output: reseller_price, rules: { reference: reseller_terms, keys: [reseller_id], rate_column: markup_pct } }
    columns:
      - { name: subscription_id, type: string, nullable: false }
      - { name: sku, type: string, nullable: false }
      - { name: customer_id, type: string, nullable: false }
      - { name: reseller_id, type: string, nullable: false }
      - { name: distributor_id, type: string, output: false }
      - { name: quantity, type: "decimal(28,6)", nullable: false }
      - { name: cost_usd, type: "decimal(18,4)", output: false }
      - { name: currency, type: string, nullable: false }
      - { name: cost, type: "decimal(18,4)", output: false }
      - { name: price, type: "decimal(18,4)", nullable: false }
      - { name: reseller_price, type: "decimal(18,4)", nullable: false }
"""


# --------------------------------------------------------------------------------------
# DuckDB
# --------------------------------------------------------------------------------------


def run_duckdb(scenario_dir: str, out_dir: str, period: str = "2026-10", threads: int | None = None) -> None:
    import duckdb

    phases = _Phases("duckdb")
    _prepare(out_dir)
    start, end = _period_bounds(period)
    ref, ref2 = os.path.join(scenario_dir, "reference"), os.path.join(scenario_dir, REF)
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute("SET preserve_insertion_order = false")
    tmp = os.path.join(out_dir, "_duckdb_tmp")
    con.execute(f"SET temp_directory = '{tmp}'")
    con.execute("SET partitioned_write_flush_threshold = 65536")
    con.execute(_DUCK_MACROS)
    u6 = "CAST(CAST({} AS DECIMAL(38,6)) * 1000000 AS HUGEINT)"
    con.execute(
        f"""
        CREATE TEMP TABLE subscriptions AS
        SELECT * FROM read_csv('{ref}/subscriptions.csv', header = true, columns = {{
            'subscription_id': 'VARCHAR', 'customer_id': 'VARCHAR',
            'reseller_id': 'VARCHAR', 'distributor_id': 'VARCHAR'}});
        CREATE TEMP TABLE wide AS
        SELECT * FROM read_csv('{ref2}/price_bands.csv', header = true, columns = {{
            'sku': 'VARCHAR', 'upto_1': 'DECIMAL(18,6)', 'price_1': 'DECIMAL(18,6)',
            'upto_2': 'DECIMAL(18,6)', 'price_2': 'DECIMAL(18,6)', 'price_3': 'DECIMAL(18,6)'}});
        -- one row per band: a band with no price, or after an open band, is not there
        CREATE TEMP TABLE bands AS
        SELECT sku, CAST(0 AS HUGEINT) AS from_u, {u6.format('upto_1')} AS to_u, {u6.format('price_1')} AS price_u
        FROM wide WHERE price_1 IS NOT NULL
        UNION ALL
        SELECT sku, {u6.format('upto_1')}, {u6.format('upto_2')}, {u6.format('price_2')}
        FROM wide WHERE price_2 IS NOT NULL AND upto_1 IS NOT NULL
        UNION ALL
        SELECT sku, {u6.format('upto_2')}, NULL, {u6.format('price_3')}
        FROM wide WHERE price_3 IS NOT NULL AND upto_2 IS NOT NULL;
        -- the closing rate: the latest on or before the period's last day
        CREATE TEMP TABLE closing AS
        SELECT to_currency AS currency,
               arg_max(CAST(CAST(rate AS DECIMAL(38,8)) * 100000000 AS HUGEINT), valid_from) AS rate_u
        FROM read_csv('{ref2}/fx_rates.csv', header = true, columns = {{
            'from_currency': 'VARCHAR', 'to_currency': 'VARCHAR', 'rate': 'DECIMAL(18,8)', 'valid_from': 'DATE'}})
        WHERE from_currency = 'USD' AND valid_from < DATE '{end}'
        GROUP BY to_currency
        UNION ALL SELECT 'USD', CAST(100000000 AS HUGEINT);
        CREATE TEMP TABLE d_terms AS
        SELECT distributor_id, currency, 10000 + CAST(CAST(markup_pct AS DECIMAL(38,4)) * 10000 AS HUGEINT) AS factor_u
        FROM read_csv('{ref2}/distributor_terms.csv', header = true, columns = {{
            'distributor_id': 'VARCHAR', 'currency': 'VARCHAR', 'markup_pct': 'DECIMAL(9,4)'}});
        CREATE TEMP TABLE r_terms AS
        SELECT reseller_id, 10000 + CAST(CAST(markup_pct AS DECIMAL(38,4)) * 10000 AS HUGEINT) AS factor_u
        FROM read_csv('{ref2}/reseller_terms.csv', header = true, columns = {{
            'reseller_id': 'VARCHAR', 'currency': 'VARCHAR', 'markup_pct': 'DECIMAL(9,4)'}});
        """
    )
    usage = os.path.join(scenario_dir, "inputs", "usage-*.parquet")
    vendor_file = os.path.join(out_dir, VENDOR_STREAM, "part-0.parquet")
    con.execute(
        f"""
        COPY (
        WITH groups AS (
            SELECT u.subscription_id, u.sku, s.customer_id, s.reseller_id, s.distributor_id,
                   sum(CAST(u.quantity AS DECIMAL(38,6))) AS quantity
            FROM read_parquet('{usage}') u JOIN subscriptions s USING (subscription_id)
            WHERE u.usage_date >= DATE '{start}' AND u.usage_date < DATE '{end}'
            GROUP BY ALL
        ), charged AS (
            SELECT g.subscription_id, g.sku, g.customer_id, g.reseller_id, g.distributor_id, g.quantity,
                   div_he(sum(least(greatest({u6.format('g.quantity')} - b.from_u, 0),
                                    coalesce(b.to_u - b.from_u, greatest({u6.format('g.quantity')} - b.from_u, 0)))
                              * b.price_u), CAST(100000000 AS HUGEINT)) AS cost_u
            FROM groups g JOIN bands b USING (sku)
            GROUP BY ALL
        )
        SELECT subscription_id, sku, customer_id, reseller_id, distributor_id, quantity, dec4(cost_u) AS cost_usd
        FROM charged
        ) TO '{vendor_file}' (FORMAT parquet, COMPRESSION zstd)
        """
    )
    phases.done("vendor (aggregated and rated)")
    parts = os.path.join(out_dir, PARTS)
    con.execute(
        f"""
        COPY (
        WITH converted AS (
            SELECT v.*, d.currency, d.factor_u,
                   div_he(CAST(CAST(v.cost_usd AS DECIMAL(38,4)) * 10000 AS HUGEINT) * c.rate_u,
                          CAST(100000000 AS HUGEINT)) AS cost_u
            FROM read_parquet('{vendor_file}') v
            JOIN d_terms d USING (distributor_id)
            JOIN closing c ON c.currency = d.currency
        )
        SELECT subscription_id, sku, customer_id, reseller_id, distributor_id, quantity, cost_usd, currency,
               dec4(cost_u) AS cost, dec4(div_he(cost_u * factor_u, CAST(10000 AS HUGEINT))) AS price
        FROM converted
        ) TO '{parts}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (distributor_id))
        """
    )
    distributors = os.path.join(out_dir, DISTRIBUTOR_STREAM)
    _rename_partitions(parts, "distributor_id", distributors)
    phases.done("distributor partitions written")
    con.execute(
        f"""
        COPY (
        SELECT d.subscription_id, d.sku, d.customer_id, d.reseller_id, d.quantity, d.currency, d.price,
               dec4(div_he(CAST(CAST(d.price AS DECIMAL(38,4)) * 10000 AS HUGEINT) * r.factor_u,
                           CAST(10000 AS HUGEINT))) AS reseller_price
        FROM read_parquet('{distributors}/*/*.parquet') d JOIN r_terms r USING (reseller_id)
        ) TO '{parts}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (reseller_id))
        """
    )
    con.close()
    shutil.rmtree(tmp, ignore_errors=True)
    _rename_partitions(parts, "reseller_id", os.path.join(out_dir, RESELLER_STREAM))
    phases.done("reseller partitions written")


# --------------------------------------------------------------------------------------
# Polars
# --------------------------------------------------------------------------------------


def run_polars(scenario_dir: str, out_dir: str, period: str = "2026-10", threads: int | None = None) -> None:
    if threads:
        os.environ["POLARS_MAX_THREADS"] = str(int(threads))
    import polars as pl

    phases = _Phases("polars")
    _prepare(out_dir)
    start, end = _period_bounds(period)
    ref, ref2 = os.path.join(scenario_dir, "reference"), os.path.join(scenario_dir, REF)
    I128 = pl.Int128

    def lit(v: int):
        return pl.lit(v, I128)

    subs = pl.scan_csv(
        f"{ref}/subscriptions.csv",
        schema={"subscription_id": pl.String, "customer_id": pl.String,
                "reseller_id": pl.String, "distributor_id": pl.String},
    )
    d6 = pl.Decimal(18, 6)
    wide = pl.scan_csv(
        f"{ref2}/price_bands.csv",
        schema={"sku": pl.String, "upto_1": d6, "price_1": d6, "upto_2": d6, "price_2": d6, "price_3": d6},
    )
    bands = pl.concat(
        [
            wide.filter(pl.col("price_1").is_not_null()).select(
                "sku", lit(0).alias("from_u"), _pl_unscaled("upto_1", 6).alias("to_u"),
                _pl_unscaled("price_1", 6).alias("price_u")),
            wide.filter(pl.col("price_2").is_not_null() & pl.col("upto_1").is_not_null()).select(
                "sku", _pl_unscaled("upto_1", 6).alias("from_u"), _pl_unscaled("upto_2", 6).alias("to_u"),
                _pl_unscaled("price_2", 6).alias("price_u")),
            wide.filter(pl.col("price_3").is_not_null() & pl.col("upto_2").is_not_null()).select(
                "sku", _pl_unscaled("upto_2", 6).alias("from_u"), pl.lit(None, I128).alias("to_u"),
                _pl_unscaled("price_3", 6).alias("price_u")),
        ]
    )
    closing = (
        pl.scan_csv(
            f"{ref2}/fx_rates.csv",
            schema={"from_currency": pl.String, "to_currency": pl.String, "rate": pl.Decimal(18, 8),
                    "valid_from": pl.Date},
        )
        .filter((pl.col("from_currency") == "USD") & (pl.col("valid_from") < end))
        .sort("valid_from")
        .group_by("to_currency")
        .agg(_pl_unscaled("rate", 8).last().alias("rate_u"))
        .select(pl.col("to_currency").alias("currency"), "rate_u")
    )
    closing = pl.concat(
        [closing, pl.LazyFrame({"currency": ["USD"], "rate_u": [10**8]}, schema={"currency": pl.String, "rate_u": I128})]
    ).collect().lazy()

    def terms(tier: str):
        return pl.scan_csv(
            f"{ref2}/{tier}_terms.csv",
            schema={f"{tier}_id": pl.String, "currency": pl.String, "markup_pct": pl.Decimal(9, 4)},
        ).with_columns(factor_u=lit(10000) + _pl_unscaled("markup_pct", 4))

    d_terms = terms("distributor").select("distributor_id", "currency", "factor_u")
    r_terms = terms("reseller").select("reseller_id", "factor_u")

    keys = ["subscription_id", "sku", "customer_id", "reseller_id", "distributor_id"]
    groups = (
        pl.scan_parquet(os.path.join(scenario_dir, "inputs", "usage-*.parquet"))
        .filter((pl.col("usage_date") >= start) & (pl.col("usage_date") < end))
        .join(subs, on="subscription_id", how="inner")
        .group_by(keys)
        .agg(pl.col("quantity").cast(pl.Decimal(38, 6)).sum())
        .with_columns(qq=_pl_unscaled("quantity", 6))
    )
    over = pl.col("qq") - pl.col("from_u")
    vendor = (
        groups.join(bands, on="sku", how="inner")
        .with_columns(
            contribution=pl.min_horizontal(
                pl.max_horizontal(over, lit(0)),
                pl.coalesce(pl.col("to_u") - pl.col("from_u"), pl.max_horizontal(over, lit(0))),
            )
            * pl.col("price_u")
        )
        .group_by(keys)
        .agg(pl.col("quantity").first(), cost_u=_pl_div_he(pl.col("contribution").sum(), lit(10**8)))
        .select(*keys, "quantity", _pl_dec4(pl.col("cost_u")).alias("cost_usd"))
    )
    vendor_file = os.path.join(out_dir, VENDOR_STREAM, "part-0.parquet")
    vendor.sink_parquet(vendor_file, compression="zstd", maintain_order=False, engine="streaming")
    phases.done("vendor (aggregated and rated)")

    parts = os.path.join(out_dir, PARTS)
    cost_u = _pl_div_he(_pl_unscaled("cost_usd", 4) * pl.col("rate_u"), lit(10**8))
    out = (
        pl.scan_parquet(vendor_file)
        .join(d_terms, on="distributor_id", how="inner")
        .join(closing, on="currency", how="inner")
        .with_columns(cost_u=cost_u)
        .with_columns(price_u=_pl_div_he(pl.col("cost_u") * pl.col("factor_u"), lit(10**4)))
        .select(*keys, "quantity", "cost_usd", "currency",
                _pl_dec4(pl.col("cost_u")).alias("cost"), _pl_dec4(pl.col("price_u")).alias("price"))
    )
    out.sink_parquet(pl.PartitionBy(parts, key="distributor_id", include_key=False), compression="zstd",
                     maintain_order=False, mkdir=True, engine="streaming")
    distributors = os.path.join(out_dir, DISTRIBUTOR_STREAM)
    _rename_partitions(parts, "distributor_id", distributors)
    phases.done("distributor partitions written")
    resold = (
        pl.scan_parquet(os.path.join(distributors, "*", "*.parquet"))
        .join(r_terms, on="reseller_id", how="inner")
        .with_columns(rp_u=_pl_div_he(_pl_unscaled("price", 4) * pl.col("factor_u"), lit(10**4)))
        .select("subscription_id", "sku", "customer_id", "reseller_id", "quantity", "currency", "price",
                _pl_dec4(pl.col("rp_u")).alias("reseller_price"))
    )
    resold.sink_parquet(pl.PartitionBy(parts, key="reseller_id", include_key=False), compression="zstd",
                        maintain_order=False, mkdir=True, engine="streaming")
    _rename_partitions(parts, "reseller_id", os.path.join(out_dir, RESELLER_STREAM))
    phases.done("reseller partitions written")


PEERS = {"duckdb": run_duckdb, "polars": run_polars}


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("peer", choices=sorted(PEERS) + ["prepare"])
    p.add_argument("scenario_dir")
    p.add_argument("out_dir", nargs="?")
    p.add_argument("--period", default="2026-10")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.peer == "prepare":
        print(prepare(a.scenario_dir))
        return 0
    t = time.perf_counter()
    PEERS[a.peer](a.scenario_dir, a.out_dir, period=a.period, threads=a.threads)
    print(f"{a.peer}: {time.perf_counter() - t:.2f}s (in process)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The peers of the pipeline benchmark (issue 6): the job of the pipeline that
`billflow generate` writes, done in plain DuckDB SQL and in Polars (lazy API).

The job (see `fn pipeline` in src/generate.rs and docs/transformations.md):

- vendor-rated-usage: usage rows of the period; `lookup` of each line's subscription
  (customer, reseller, distributor; a missing one is refused); `rate` with the `tiered`
  plan of its SKU, per (subscription_id, sku): Q = sum(quantity), charge = sum over bands
  of min(max(Q - from, 0), to - from) x unit_price (open-ended band: max(Q - from, 0)),
  rounded half-even to 4 places, then allocated back to the lines in proportion to their
  quantity (exact division, half-even, 4 places) with the residue (charge minus the sum
  of the rounded shares) on the line of largest |quantity| (ties: lowest record_id).
- distributor-usage (for each distributor, one partition each): the vendor lines; the
  distributor's currency from channel_terms; cost = cost_usd x the USD->currency rate valid
  on usage_date (valid_from <= date < valid_to), half-even 4 places; price = cost x (1 +
  the distributor's markup_pct), half-even 4 places.
- reseller-usage (for each reseller, one partition each): read from the distributors'
  output; reseller_price = price x (1 + the reseller's markup_pct), half-even 4 places.

Money never goes through floating point: both peers compute on scaled integers (DuckDB
HUGEINT, Polars Int128: the unscaled values of the decimals) and round half-even
explicitly, since DuckDB's ROUND (and its DECIMAL casts) round half away from zero. The
outputs are written as DECIMAL(18,4) / decimal[18,4] columns, like billflow's contract.

Output layout under out_dir (the same for both peers):

    vendor-rated-usage/part-0.parquet
    distributor-usage/D00/*.parquet ... distributor-usage/D19/*.parquet
    reseller-usage/R0000/*.parquet ... reseller-usage/R1999/*.parquet

(the partition key column is left out of the files; billflow keeps it).

Usage: python3 peers.py {duckdb|polars} SCENARIO_DIR OUT_DIR [--period YYYY-MM]
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import sys
import time

VENDOR_STREAM = "vendor-rated-usage"
DISTRIBUTOR_STREAM = "distributor-usage"
RESELLER_STREAM = "reseller-usage"
PARTS = "_parts"


class _Phases:
    """Elapsed time and peak RSS after each phase, on stderr (the benchmark's logs)."""

    def __init__(self, peer: str):
        self.peer = peer
        self.t0 = self.t = time.perf_counter()

    def done(self, what: str) -> None:
        import resource

        now = time.perf_counter()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{self.peer}: {what}: {now - self.t:.2f}s (peak RSS so far {rss:.0f} MiB)", file=sys.stderr)
        self.t = now


def _period_bounds(period: str) -> tuple[_dt.date, _dt.date]:
    y, m = (int(x) for x in period.split("-"))
    start = _dt.date(y, m, 1)
    end = _dt.date(y + (m == 12), m % 12 + 1, 1)
    return start, end


def _prepare(out_dir: str) -> None:
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(os.path.join(out_dir, VENDOR_STREAM))


def _rename_partitions(parts: str, key: str, target: str) -> None:
    """`parts/<key>=D00/...` -> `target/D00/...` (one directory per organisation)."""
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(parts)):
        k, _, value = name.partition("=")
        if k != key or not value:
            raise RuntimeError(f"unexpected partition directory {name}")
        os.rename(os.path.join(parts, name), os.path.join(target, value))
    os.rmdir(parts)


def _check_plans_are_tiered(scenario_dir: str) -> None:
    """The peers implement the `tiered` model only (all the generator writes)."""
    import csv

    with open(os.path.join(scenario_dir, "reference", "price_plans.csv"), newline="") as f:
        models = {row["model"] for row in csv.DictReader(f)}
    if models != {"tiered"}:
        raise RuntimeError(f"peers implement the tiered model only, price_plans has {sorted(models)}")


# --------------------------------------------------------------------------------------
# DuckDB
# --------------------------------------------------------------------------------------

# n / d rounded half-even, on integers (HUGEINT), d > 0. DuckDB's `//` and `%` truncate
# toward zero, so the rounding is done on |n| and the sign put back (half-even is
# symmetric).
_DUCK_MACROS = """
CREATE OR REPLACE MACRO div_he(n, d) AS
    sign(n) * (abs(n) // d
        + CASE WHEN 2 * (abs(n) % d) > d
                 OR (2 * (abs(n) % d) = d AND (abs(n) // d) % 2 = 1)
               THEN 1 ELSE 0 END);
-- unscaled integer at 4 places -> DECIMAL(18,4), exactly (x * 0.0001 multiplies the
-- unscaled value by 1); a value that does not fit is a conversion error, not a wrap.
CREATE OR REPLACE MACRO dec4(x) AS
    CAST(CAST(x AS DECIMAL(18,0)) * CAST(0.0001 AS DECIMAL(5,4)) AS DECIMAL(18,4));
"""


def _duck_refs(con, scenario_dir: str) -> None:
    ref = os.path.join(scenario_dir, "reference")
    con.execute(
        f"""
        CREATE TEMP TABLE subscriptions AS
        SELECT * FROM read_csv('{ref}/subscriptions.csv', header = true, columns = {{
            'subscription_id': 'VARCHAR', 'customer_id': 'VARCHAR',
            'reseller_id': 'VARCHAR', 'distributor_id': 'VARCHAR'}});
        CREATE TEMP TABLE bands AS
        SELECT sku,
               CAST(CAST(band_from AS DECIMAL(38,6)) * 1000000 AS HUGEINT) AS from_u,          -- 6 places
               CAST(CAST(band_to AS DECIMAL(38,6)) * 1000000 AS HUGEINT) AS to_u,              -- NULL: open-ended
               CAST(CAST(unit_price AS DECIMAL(38,6)) * 1000000 AS HUGEINT) AS price_u         -- 6 places
        FROM read_csv('{ref}/price_plans.csv', header = true, columns = {{
            'sku': 'VARCHAR', 'model': 'VARCHAR', 'band_from': 'DECIMAL(18,6)',
            'band_to': 'DECIMAL(18,6)', 'unit_price': 'DECIMAL(18,6)'}})
        WHERE model = 'tiered';
        CREATE TEMP TABLE terms AS
        SELECT organization_id, currency,
               10000 + CAST(CAST(markup_pct AS DECIMAL(38,4)) * 10000 AS HUGEINT) AS factor_u  -- 1 + markup, 4 places
        FROM read_csv('{ref}/channel_terms.csv', header = true, columns = {{
            'organization_id': 'VARCHAR', 'currency': 'VARCHAR', 'markup_pct': 'DECIMAL(9,4)'}});
        CREATE TEMP TABLE fx AS
        SELECT from_currency, to_currency, CAST(CAST(rate AS DECIMAL(38,8)) * 100000000 AS HUGEINT) AS rate_u,  -- 8 places
               valid_from, valid_to
        FROM read_csv('{ref}/fx_rates.csv', header = true, columns = {{
            'from_currency': 'VARCHAR', 'to_currency': 'VARCHAR', 'rate': 'DECIMAL(18,8)',
            'valid_from': 'DATE', 'valid_to': 'DATE'}})
        -- an amount already in the target currency is kept (rate 1), as convert_currency
        UNION ALL SELECT 'USD', 'USD', 100000000, DATE '0001-01-01', DATE '9999-12-31';
        """
    )


def run_duckdb(scenario_dir: str, out_dir: str, period: str = "2026-10", threads: int | None = None) -> None:
    import duckdb

    phases = _Phases("duckdb")
    _check_plans_are_tiered(scenario_dir)
    _prepare(out_dir)
    start, end = _period_bounds(period)
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute("SET preserve_insertion_order = false")
    # Spill (if the data outgrows memory_limit) next to the outputs, not into the cwd.
    tmp = os.path.join(out_dir, "_duckdb_tmp")
    con.execute(f"SET temp_directory = '{tmp}'")
    # PARTITION_BY buffers up to this many rows per thread and partition before flushing;
    # the default (524288) costs ~4 GB of RSS at 30M rows for no speed gain here.
    con.execute("SET partitioned_write_flush_threshold = 65536")
    con.execute(_DUCK_MACROS)
    _duck_refs(con, scenario_dir)
    usage = os.path.join(scenario_dir, "inputs", "usage-*.parquet")
    vendor_file = os.path.join(out_dir, VENDOR_STREAM, "part-0.parquet")

    # Stream 1: the vendor rates the usage, in three passes over the usage whose
    # intermediate results are small (one row per subscription and SKU), so that memory
    # stays bounded at any scale: (1) each group's quantity and charge, (2) the residue
    # of its rounded shares, (3) the lines with their cost.
    lines = f"""
        SELECT u.record_id, u.usage_date, u.subscription_id, u.sku, u.quantity,
               s.customer_id, s.reseller_id, s.distributor_id,
               CAST(CAST(u.quantity AS DECIMAL(38,6)) * 1000000 AS HUGEINT) AS q_u,  -- 6 places
               abs(CAST(CAST(u.quantity AS DECIMAL(38,6)) * 1000000 AS HUGEINT))
                   * CAST(1000000000000 AS HUGEINT) - u.record_id AS key
        FROM read_parquet('{usage}') u
        JOIN subscriptions s USING (subscription_id)                         -- on_missing: reject
        WHERE u.usage_date >= DATE '{start}' AND u.usage_date < DATE '{end}'
    """
    con.execute(
        f"""
        CREATE TEMP TABLE charges AS
        WITH groups AS (
            SELECT subscription_id, sku, sum(q_u) AS qq, count(*) AS n,
                   -- the line taking the residue: largest |quantity|, then lowest record_id
                   max(key) AS top_key
            FROM ({lines}) GROUP BY subscription_id, sku
        )
        SELECT g.subscription_id, g.sku, any_value(g.qq) AS qq, any_value(g.n) AS n,
               any_value(g.top_key) AS top_key,
               -- the sum over bands at 12 places, rounded half-even to 4
               div_he(sum(least(greatest(g.qq - b.from_u, 0),
                                coalesce(b.to_u - b.from_u, greatest(g.qq - b.from_u, 0)))
                          * b.price_u),
                      CAST(100000000 AS HUGEINT)) AS charge_u
        FROM groups g JOIN bands b USING (sku)                               -- on_missing_price: reject
        GROUP BY g.subscription_id, g.sku
        """
    )
    phases.done("vendor pass 1 (charges)")
    shares = f"""
        SELECT l.*, c.charge_u, c.top_key,
               CASE WHEN c.qq = 0 THEN div_he(c.charge_u, c.n)
                    ELSE div_he(c.charge_u * l.q_u, c.qq) END AS share_u
        FROM ({lines}) l JOIN charges c USING (subscription_id, sku)
    """
    con.execute(
        f"""
        CREATE TEMP TABLE residues AS
        SELECT subscription_id, sku, any_value(charge_u) - sum(share_u) AS residue_u
        FROM ({shares}) GROUP BY subscription_id, sku
        """
    )
    phases.done("vendor pass 2 (residues)")
    con.execute(
        f"""
        COPY (
        SELECT s.record_id, s.usage_date, s.subscription_id, s.sku, s.quantity,
               s.customer_id, s.reseller_id, s.distributor_id,
               dec4(s.share_u + CASE WHEN s.key = s.top_key THEN r.residue_u ELSE 0 END) AS cost_usd
        FROM ({shares}) s JOIN residues r USING (subscription_id, sku)
        ) TO '{vendor_file}' (FORMAT parquet, COMPRESSION zstd)
        """
    )
    phases.done("vendor pass 3 (lines written)")

    # Every distributor converts its lines to its currency and marks them up.
    # The rate valid on each day of the period (valid_from <= day < valid_to): a small table
    # (currencies x days) joined on (currency, day), rather than a range join.
    con.execute(
        f"""
        CREATE TEMP TABLE fx_day AS
        SELECT fx.to_currency AS currency, CAST(d.day AS DATE) AS day, fx.rate_u
        FROM generate_series(DATE '{start}', DATE '{end}' - INTERVAL 1 DAY, INTERVAL 1 DAY) AS d(day)
        JOIN fx ON fx.from_currency = 'USD' AND d.day >= fx.valid_from AND d.day < fx.valid_to
        """
    )
    dup = con.execute("SELECT count(*) FROM (SELECT currency, day FROM fx_day GROUP BY ALL HAVING count(*) > 1)")
    if dup.fetchone()[0]:
        raise RuntimeError("several rates valid on one day in fx_rates")
    parts = os.path.join(out_dir, PARTS)
    con.execute(
        f"""
        COPY (
        WITH converted AS (
            SELECT v.*, d.currency, d.factor_u AS d_factor_u,
                   div_he(CAST(CAST(v.cost_usd AS DECIMAL(38,4)) * 10000 AS HUGEINT) * fx_day.rate_u,
                          CAST(100000000 AS HUGEINT)) AS cost_u                 -- 4 places
            FROM read_parquet('{vendor_file}') v
            JOIN terms d ON d.organization_id = v.distributor_id
            JOIN fx_day ON fx_day.currency = d.currency AND fx_day.day = v.usage_date
        )
        SELECT c.record_id, c.usage_date, c.subscription_id, c.sku, c.quantity,
               c.customer_id, c.reseller_id, c.distributor_id, c.cost_usd, c.currency,
               dec4(c.cost_u) AS cost,
               dec4(div_he(c.cost_u * c.d_factor_u, CAST(10000 AS HUGEINT))) AS price
        FROM converted c
        ) TO '{parts}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (distributor_id))
        """
    )
    distributors = os.path.join(out_dir, DISTRIBUTOR_STREAM)
    _rename_partitions(parts, "distributor_id", distributors)
    phases.done("distributor partitions written")

    # Every reseller marks up its distributor's price, read from the distributors' output.
    con.execute(
        f"""
        COPY (
        SELECT d.record_id, d.usage_date, d.subscription_id, d.sku, d.quantity,
               d.customer_id, d.reseller_id, d.currency, d.price,
               dec4(div_he(CAST(CAST(d.price AS DECIMAL(38,4)) * 10000 AS HUGEINT) * r.factor_u,
                           CAST(10000 AS HUGEINT))) AS reseller_price
        FROM read_parquet('{distributors}/*/*.parquet') d
        JOIN terms r ON r.organization_id = d.reseller_id
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


def _pl_div_he(n, d):
    """n / d rounded half-even, on Int128 expressions, d > 0. Polars' `//` floors and `%`
    is non-negative for d > 0, so q + r/d is the exact quotient with 0 <= r < d."""
    import polars as pl

    q = n // d
    r = n - q * d
    up = (2 * r > d) | ((2 * r == d) & (q % 2 != 0))
    return q + pl.when(up).then(pl.lit(1, pl.Int128)).otherwise(pl.lit(0, pl.Int128))


def _pl_unscaled(col, scale: int):
    """The unscaled integer of a decimal column (its physical Int128), at `scale` places."""
    import polars as pl

    return pl.col(col).cast(pl.Decimal(38, scale)).to_physical().cast(pl.Int128)


def _pl_dec4(expr):
    """Unscaled integer at 4 places -> decimal[18,4], exactly."""
    import polars as pl
    from decimal import Decimal

    return (expr.cast(pl.Decimal(38, 0)) * pl.lit(Decimal("0.0001"), pl.Decimal(5, 4))).cast(pl.Decimal(18, 4))


def run_polars(scenario_dir: str, out_dir: str, period: str = "2026-10", threads: int | None = None) -> None:
    if threads:
        os.environ["POLARS_MAX_THREADS"] = str(int(threads))
    import polars as pl

    phases = _Phases("polars")
    _check_plans_are_tiered(scenario_dir)
    _prepare(out_dir)
    start, end = _period_bounds(period)
    ref = os.path.join(scenario_dir, "reference")
    I128 = pl.Int128

    def lit(v: int):
        return pl.lit(v, I128)

    subs = pl.scan_csv(
        f"{ref}/subscriptions.csv",
        schema={"subscription_id": pl.String, "customer_id": pl.String,
                "reseller_id": pl.String, "distributor_id": pl.String},
    )
    bands = (
        pl.scan_csv(
            f"{ref}/price_plans.csv",
            schema={"sku": pl.String, "model": pl.String, "band_from": pl.Decimal(18, 6),
                    "band_to": pl.Decimal(18, 6), "unit_price": pl.Decimal(18, 6)},
        )
        .filter(pl.col("model") == "tiered")
        .select(
            "sku",
            _pl_unscaled("band_from", 6).alias("from_u"),
            _pl_unscaled("band_to", 6).alias("to_u"),  # null: open-ended
            _pl_unscaled("unit_price", 6).alias("price_u"),
        )
    )
    terms = pl.scan_csv(
        f"{ref}/channel_terms.csv",
        schema={"organization_id": pl.String, "currency": pl.String, "markup_pct": pl.Decimal(9, 4)},
    ).select("organization_id", "currency", (lit(10000) + _pl_unscaled("markup_pct", 4)).alias("factor_u"))
    fx = pl.concat(
        [
            pl.scan_csv(
                f"{ref}/fx_rates.csv",
                schema={"from_currency": pl.String, "to_currency": pl.String, "rate": pl.Decimal(18, 8),
                        "valid_from": pl.Date, "valid_to": pl.Date},
            ).select("from_currency", "to_currency", _pl_unscaled("rate", 8).alias("rate_u"),
                     "valid_from", "valid_to"),
            # an amount already in the target currency is kept (rate 1), as convert_currency
            pl.LazyFrame(
                {"from_currency": ["USD"], "to_currency": ["USD"], "rate_u": [10**8],
                 "valid_from": [_dt.date(1, 1, 1)], "valid_to": [_dt.date(9999, 12, 31)]},
                schema={"from_currency": pl.String, "to_currency": pl.String, "rate_u": I128,
                        "valid_from": pl.Date, "valid_to": pl.Date},
            ),
        ]
    ).filter(pl.col("from_currency") == "USD")

    # Stream 1: the vendor rates the usage, in three passes over the usage whose
    # intermediate results are small (one row per subscription and SKU, collected), so that
    # memory stays bounded at any scale: (1) each group's quantity and charge, (2) the
    # residue of its rounded shares, (3) the lines with their cost.
    g = ["subscription_id", "sku"]
    big = lit(10**12)
    lines = (
        pl.scan_parquet(os.path.join(scenario_dir, "inputs", "usage-*.parquet"))
        .filter((pl.col("usage_date") >= start) & (pl.col("usage_date") < end))
        .join(subs, on="subscription_id", how="inner")  # on_missing: reject
        .with_columns(q_u=_pl_unscaled("quantity", 6))
        .with_columns(key=pl.col("q_u").abs() * big - pl.col("record_id").cast(I128))
    )
    groups = lines.group_by(g).agg(
        qq=pl.col("q_u").sum(),
        n=pl.len().cast(I128),
        # the line taking the residue: largest |quantity|, then lowest record_id
        top_key=pl.col("key").max(),
    )
    over = pl.col("qq") - pl.col("from_u")
    charges = (
        groups.join(bands, on="sku", how="inner")  # on_missing_price: reject
        .with_columns(
            contribution=pl.min_horizontal(
                pl.max_horizontal(over, lit(0)),
                pl.coalesce(pl.col("to_u") - pl.col("from_u"), pl.max_horizontal(over, lit(0))),
            )
            * pl.col("price_u")  # 12 places
        )
        .group_by(g)
        .agg(
            pl.col("qq").first(),
            pl.col("n").first(),
            pl.col("top_key").first(),
            charge_u=_pl_div_he(pl.col("contribution").sum(), lit(10**8)),
        )
        .collect(engine="streaming")
        .lazy()
    )
    phases.done("vendor pass 1 (charges)")
    shares = lines.join(charges, on=g, how="inner").with_columns(
        share_u=pl.when(pl.col("qq") == 0)
        .then(_pl_div_he(pl.col("charge_u"), pl.col("n")))
        .otherwise(_pl_div_he(pl.col("charge_u") * pl.col("q_u"), pl.col("qq")))
    )
    residues = (
        shares.group_by(g)
        .agg(residue_u=pl.col("charge_u").first() - pl.col("share_u").sum())
        .collect(engine="streaming")
        .lazy()
    )
    phases.done("vendor pass 2 (residues)")
    vendor = shares.join(residues, on=g, how="inner").select(
        "record_id", "usage_date", "subscription_id", "sku", "quantity",
        "customer_id", "reseller_id", "distributor_id",
        _pl_dec4(
            pl.col("share_u")
            + pl.when(pl.col("key") == pl.col("top_key")).then(pl.col("residue_u")).otherwise(lit(0))
        ).alias("cost_usd"),
    )
    vendor_file = os.path.join(out_dir, VENDOR_STREAM, "part-0.parquet")
    vendor.sink_parquet(vendor_file, compression="zstd", maintain_order=False, engine="streaming")
    phases.done("vendor pass 3 (lines written)")

    # Every distributor converts its lines to its currency and marks them up.
    d_terms = terms.select(
        pl.col("organization_id").alias("distributor_id"), "currency", pl.col("factor_u").alias("d_factor_u")
    )
    r_terms = terms.select(pl.col("organization_id").alias("reseller_id"), pl.col("factor_u").alias("r_factor_u"))
    # The rate valid on each day of the period (valid_from <= day < valid_to): a small table
    # (currencies x days) joined on (currency, usage_date), rather than a range join.
    days = pl.LazyFrame({"usage_date": pl.date_range(start, end, interval="1d", closed="left", eager=True)})
    fx_day = days.join(fx, how="cross").filter(
        (pl.col("usage_date") >= pl.col("valid_from")) & (pl.col("usage_date") < pl.col("valid_to"))
    ).select(pl.col("to_currency").alias("currency"), "usage_date", "rate_u")
    fx_day = fx_day.collect()
    if fx_day.select(pl.struct("currency", "usage_date").is_duplicated().any()).item():
        raise RuntimeError("several rates valid on one day in fx_rates")
    converted = (
        pl.scan_parquet(vendor_file)
        .join(d_terms, on="distributor_id", how="inner")  # currency lookup
        .join(fx_day.lazy(), on=["currency", "usage_date"], how="inner")  # on_missing_rate: fail
    )
    cost_u = _pl_div_he(_pl_unscaled("cost_usd", 4) * pl.col("rate_u"), lit(10**8))
    out = (
        converted.with_columns(cost_u=cost_u)
        .with_columns(price_u=_pl_div_he(pl.col("cost_u") * pl.col("d_factor_u"), lit(10**4)))
        .select(
            "record_id", "usage_date", "subscription_id", "sku", "quantity",
            "customer_id", "reseller_id", "distributor_id", "cost_usd", "currency",
            _pl_dec4(pl.col("cost_u")).alias("cost"),
            _pl_dec4(pl.col("price_u")).alias("price"),
        )
    )
    parts = os.path.join(out_dir, PARTS)
    out.sink_parquet(
        pl.PartitionBy(parts, key="distributor_id", include_key=False),
        compression="zstd",
        maintain_order=False,
        mkdir=True,
        engine="streaming",
    )
    distributors = os.path.join(out_dir, DISTRIBUTOR_STREAM)
    _rename_partitions(parts, "distributor_id", distributors)
    phases.done("distributor partitions written")

    # Every reseller marks up its distributor's price, read from the distributors' output.
    resold = (
        pl.scan_parquet(os.path.join(distributors, "*", "*.parquet"))
        .join(r_terms, on="reseller_id", how="inner")  # reseller markup rule
        .with_columns(rp_u=_pl_div_he(_pl_unscaled("price", 4) * pl.col("r_factor_u"), lit(10**4)))
        .select(
            "record_id", "usage_date", "subscription_id", "sku", "quantity",
            "customer_id", "reseller_id", "currency", "price",
            _pl_dec4(pl.col("rp_u")).alias("reseller_price"),
        )
    )
    resold.sink_parquet(
        pl.PartitionBy(parts, key="reseller_id", include_key=False),
        compression="zstd",
        maintain_order=False,
        mkdir=True,
        engine="streaming",
    )
    _rename_partitions(parts, "reseller_id", os.path.join(out_dir, RESELLER_STREAM))
    phases.done("reseller partitions written")


PEERS = {"duckdb": run_duckdb, "polars": run_polars}


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("peer", choices=sorted(PEERS))
    p.add_argument("scenario_dir")
    p.add_argument("out_dir")
    p.add_argument("--period", default="2026-10")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    t = time.perf_counter()
    PEERS[a.peer](a.scenario_dir, a.out_dir, period=a.period, threads=a.threads)
    print(f"{a.peer}: {time.perf_counter() - t:.2f}s (in process)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

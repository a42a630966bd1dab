#!/usr/bin/env python3
"""SQL over a warehouse: `billflow query` against DuckDB reading the same Parquet files
(issue 15), on the generated scenario's vendor usage batch, with results checked equal.

    python3 benches/query/compare.py --rows 10000000 [--seed 1] [--keep DIR] [--threads N]

1. `billflow generate` and `billflow run` write the warehouse (not timed; with --keep DIR
   an existing DIR/scenario/wh of the same size is used again).
2. Each query runs as its own process, timed whole (start-up included, as a user waits
   for it), with its peak RSS: `billflow query --format csv` over the warehouse (the
   catalog read, the tables registered, the query planned and run), and DuckDB in Python
   over `read_parquet` of the very files the batch's manifest lists.
3. The CSV answers must be equal, value for value (decimals compared exactly).

Needs `pip install duckdb`. Timings mean something only from a release or profiling
build (`cargo build --profile profiling`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "pipeline"))
from compare import default_billflow, measure  # noqa: E402  (the pipeline benchmark's helpers)

PERIOD = "2026-10"
TABLE = "vendor.vendor_rated_usage"

# (name, SQL over TABLE): the shapes an analyst asks of a usage batch.
QUERIES = [
    (
        "by sku (few groups)",
        "SELECT sku, count(*) AS n, sum(quantity) AS quantity, sum(cost_usd) AS cost_usd "
        "FROM {t} GROUP BY sku ORDER BY sku",
    ),
    (
        "by distributor and day",
        "SELECT distributor_id, usage_date, sum(cost_usd) AS cost_usd "
        "FROM {t} GROUP BY distributor_id, usage_date ORDER BY distributor_id, usage_date",
    ),
    (
        "top subscriptions (many groups)",
        "SELECT subscription_id, sum(cost_usd) AS cost_usd, count(*) AS n "
        "FROM {t} GROUP BY subscription_id ORDER BY cost_usd DESC, subscription_id LIMIT 20",
    ),
    (
        "one reseller, filtered",
        "SELECT customer_id, sum(cost_usd) AS cost_usd FROM {t} "
        "WHERE reseller_id = 'R0007' GROUP BY customer_id ORDER BY customer_id",
    ),
]

DUCKDB = """
import duckdb, sys, json
files, sql, out, threads = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
con = duckdb.connect()
if threads != "0":
    con.execute(f"SET threads = {threads}")
listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
con.execute(f"CREATE VIEW batch AS SELECT * FROM read_parquet([{listed}])")
con.execute(f"COPY ({sql}) TO '{out}' (HEADER, DELIMITER ',')")
"""


def batch_files(warehouse: Path) -> list[str]:
    """The vendor usage batch's data files, as its manifest lists them."""
    manifests = sorted((warehouse / "vendor" / "vendor" / "vendor-rated-usage").glob("*/batch.json"))
    if len(manifests) != 1:
        sys.exit(f"expected one vendor-rated-usage batch in {warehouse}, found {len(manifests)}")
    m = json.loads(manifests[0].read_text())
    base = manifests[0].parent / (m.get("files_in") or "")
    return [str(base / f["path"]) for f in m["files"] if f["path"].endswith(".parquet")]


def read_answer(path: Path) -> list[list[str]]:
    """Rows of a CSV answer, numbers normalised (1.50 and 1.5 are the same value)."""
    def norm(v: str) -> str:
        try:
            return str(Decimal(v).normalize()) if v not in ("", "NaN") else v
        except Exception:
            return v

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [rows[0]] + [[norm(v) for v in r] for r in rows[1:]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it; reuse its warehouse when there")
    ap.add_argument("--billflow", metavar="PATH")
    ap.add_argument("--threads", type=int, help="threads for both (default: all cores)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each query; the fastest is shown")
    args = ap.parse_args()

    billflow, what = (Path(args.billflow).resolve(), "given") if args.billflow else default_billflow()
    print(f"billflow: {billflow} ({what})")
    if "debug" in str(billflow):
        print("  note: a debug build; its timings are not representative")
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="billflow-query-bench-"))
    scenario, logs = work / "scenario", work / "logs"
    warehouse = scenario / "wh"
    stamp = work / "rows.txt"
    try:
        if not (stamp.exists() and stamp.read_text() == f"{args.rows} {args.seed}" and warehouse.exists()):
            if work.exists() and args.keep:
                shutil.rmtree(work)
            work.mkdir(parents=True, exist_ok=True)
            subprocess.run([str(billflow), "generate", "--rows", str(args.rows), "--seed", str(args.seed),
                            "--out", str(scenario)], check=True, stdout=subprocess.DEVNULL)
            subprocess.run([str(billflow), "run", str(scenario / "pipeline.yaml"), "--period", PERIOD, "--quiet",
                            "--warehouse", str(warehouse)], check=True, stdout=subprocess.DEVNULL)
            stamp.write_text(f"{args.rows} {args.seed}")
        logs.mkdir(parents=True, exist_ok=True)
        files = batch_files(warehouse)
        threads = ["--threads", str(args.threads)] if args.threads else []
        print(f"{args.rows} usage rows, seed {args.seed}, {args.threads or os.cpu_count()} thread(s) each, "
              f"{len(files)} Parquet file(s), fastest of {args.repeat}")
        print("| query                           | billflow s | duckdb s | billflow MiB | duckdb MiB | billflow / duckdb |")
        print("|---------------------------------|------------|----------|--------------|------------|-------------------|")
        failed = False
        for i, (name, sql) in enumerate(QUERIES):
            ours, theirs = logs / f"q{i}-billflow.csv", logs / f"q{i}-duckdb.csv"
            b = min(measure([str(billflow), *threads, "query", "--warehouse", str(warehouse), "--format", "csv",
                             "--output", str(ours), sql.format(t=TABLE)], logs / f"q{i}-billflow.log")
                    for _ in range(args.repeat))
            d = min(measure([sys.executable, "-c", DUCKDB, json.dumps(files), sql.format(t="batch"), str(theirs),
                             str(args.threads or 0)], logs / f"q{i}-duckdb.log")
                    for _ in range(args.repeat))
            print(f"| {name:<31} | {b[0]:>10.2f} | {d[0]:>8.2f} | {b[1]:>12,.0f} | {d[1]:>10,.0f} | {b[0] / d[0]:>17.2f} |")
            a, o = read_answer(ours), read_answer(theirs)
            if a[1:] != o[1:]:
                failed = True
                print(f"  answers differ for `{name}`: billflow {a[1:4]}..., duckdb {o[1:4]}...")
        print("answers equal" if not failed else "ANSWERS DIFFER")
        return 1 if failed else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

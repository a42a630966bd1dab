#!/usr/bin/env python3
"""The floor under the benchmark: how long billflow and Polars take just to read each
tier's published output and write it again the same way (one file for the vendor, one
directory per distributor, one per reseller), with no stage in between.

    python3 benches/pipeline/compare.py --rows 10000000 --keep DIR --peers ""
    python3 benches/pipeline/floor.py DIR/scenario [--threads N] [--billflow PATH]

SCENARIO must hold billflow's outputs of the generated job (`wh/`, as `compare.py
--keep` leaves them). For each tier, billflow runs a one-stream pipeline whose source is
that tier's output and which has no stages (a `for_each` stream for the distributors and
the resellers), and Polars scans the same files and sinks them with zstd, as its job in
`peers.py` does. The vendor's copy is not sorted, by either: the job's `order_by` sort is
not part of the floor. Times are wall seconds of each process, start-up included.

What the job does on top of these reads and writes is the part a faster engine can win
back: if the floor alone is close to a peer's whole job, no speed-up of the stages can
make billflow much faster than that peer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare import default_billflow, measure  # noqa: E402

TIERS = [
    # (stream, billflow output files under wh/, for_each column or None)
    ("vendor-rated-usage", "vendor/vendor/vendor-rated-usage/*/data/*.parquet", None),
    ("distributor-usage", "distributor/_each/distributor-usage/*/data/*.part-*.parquet", "distributor_id"),
    ("reseller-usage", "reseller/_each/reseller-usage/*/data/*.part-*.parquet", "reseller_id"),
]

POLARS = """
import sys, polars as pl
files, out, key = sys.argv[1], sys.argv[2], sys.argv[3]
lf = pl.scan_parquet(files)
if key:
    lf.sink_parquet(pl.PartitionBy(out, key=key, include_key=False), compression="zstd",
                    maintain_order=False, mkdir=True, engine="streaming")
else:
    lf.sink_parquet(out + "/part-0.parquet", compression="zstd", maintain_order=False, engine="streaming")
"""


def billflow_type(t) -> str:
    import pyarrow as pa

    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_date32(t):
        return "date"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_decimal(t):
        return f'"decimal({t.precision},{t.scale})"'
    sys.exit(f"floor.py: no billflow type for {t}")


def floor_pipeline(scenario: Path, stream: str, files: str, key: str | None, out: Path) -> Path:
    """A pipeline with the generated organisations and one stream that copies `files`."""
    import pyarrow.parquet as pq

    first = next(scenario.glob("wh/" + files), None)
    if first is None:
        sys.exit(f"floor.py: no output of {stream} in {scenario / 'wh'}: run compare.py --keep first")
    columns = "\n".join(
        f"      - {{ name: {f.name}, type: {billflow_type(f.type)} }}" for f in pq.read_schema(first)
    )
    generated = (scenario / "pipeline.yaml").read_text()
    organizations = generated.split("\nsources:")[0].replace("warehouse: warehouse", f"warehouse: {out / 'wh'}")
    owner = f"for_each: {{ tier: {key.removesuffix('_id')}, column: {key} }}" if key else "owner: vendor"
    text = f"""{organizations}
sources:
  published:
    url: {scenario / 'wh' / files}
    schema:
{columns}

streams:
  - id: {stream}-copy
    kind: usage
    {owner}
    input: {{ source: published }}
    stages: []
    columns:
{columns}
"""
    path = out / f"{stream}-copy.yaml"
    path.write_text(text)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", type=Path, help="a scenario directory with billflow's outputs in wh/")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--billflow", type=Path, default=None)
    args = ap.parse_args()
    scenario = args.scenario.resolve()
    billflow = args.billflow or default_billflow()[0]
    threads = ["--threads", str(args.threads)] if args.threads else []
    if args.threads:
        os.environ["POLARS_MAX_THREADS"] = str(args.threads)
    work = Path(tempfile.mkdtemp(prefix="billflow-floor-", dir=scenario))
    rows = []
    try:
        for stream, files, key in TIERS:
            pipeline = floor_pipeline(scenario, stream, files, key, work)
            b, _ = measure(
                [str(billflow), "run", str(pipeline), "--period", "2026-10", "--quiet"] + threads,
                work / f"{stream}-billflow.log",
            )
            out = work / f"{stream}-polars"
            out.mkdir()
            p, _ = measure(
                [sys.executable, "-c", POLARS, str(scenario / "wh" / files), str(out), key or ""],
                work / f"{stream}-polars.log",
            )
            rows.append((stream, b, p))
            shutil.rmtree(work / "wh", ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| tier's output read and written again | billflow s | polars s |")
    print("|---|---|---|")
    for stream, b, p in rows:
        print(f"| {stream} | {b:.2f} | {p:.2f} |")
    print(f"| all three | {sum(r[1] for r in rows):.2f} | {sum(r[2] for r in rows):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark billflow against DuckDB and Polars on the generated three-tier scenario
(issue 6), and check that all three produce the same control totals.

    python3 benches/pipeline/compare.py --rows 1000000 [--seed 1] [--keep DIR]
        [--jobs generated,shape2] [--threads 1,2]

1. `billflow generate --rows N --seed S --out DIR` writes the scenario (not timed).
2. `billflow run DIR/pipeline.yaml --period 2026-10 --quiet --warehouse DIR/wh`, then the
   DuckDB and the Polars peers (benches/pipeline/peers.py), each in its own process, timed
   (wall seconds of the whole process, start-up included) with its peak RSS (the child's
   ru_maxrss from wait4, taken by a small launcher: see MEASURE_LAUNCHER).
3. Control totals per organisation: the vendor's batch, each distributor's and each
   reseller's partition. billflow's come from the `batch.json` manifests (`rows`,
   `control_totals`, and `organizations` for the `for_each` streams), the peers' are summed
   from their Parquet outputs, exactly (as decimals). Rows and the sums of quantity,
   cost_usd, cost, price and reseller_price must be equal for every organisation;
   otherwise the first differences are printed and the exit status is 1.

Needs `pip install duckdb polars pyarrow`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PERIOD = "2026-10"  # `billflow generate` writes October 2026
TOTAL_COLUMNS = ["quantity", "cost_usd", "cost", "price", "reseller_price"]
PEERS = ["duckdb", "polars"]


def default_billflow() -> tuple[Path, str]:
    home = Path(os.path.expanduser("~"))
    candidates = [
        (REPO / "target" / "profiling" / "billflow", "profiling build (target/profiling)"),
        (home / ".cache" / "billflow-target" / "profiling" / "billflow", "profiling build (~/.cache/billflow-target)"),
        (REPO / "target" / "release" / "billflow", "release build (target/release)"),
        (home / ".cache" / "billflow-target" / "release" / "billflow", "release build (~/.cache/billflow-target)"),
        (REPO / "target" / "debug" / "billflow", "DEBUG build (target/debug)"),
        (home / ".cache" / "billflow-target" / "debug" / "billflow", "DEBUG build (~/.cache/billflow-target)"),
    ]
    for path, what in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path, what
    sys.exit("no billflow binary found: build one with `cargo build --profile profiling` or pass --billflow PATH")


# Runs a command and writes its peak RSS (KiB, from wait4) to a file. `measure` starts the
# command through this small process rather than directly: Linux gives a process the peak
# RSS of the one it was forked from (exec keeps the forked copy's high-water mark), so a
# command forked straight from this script, which holds every run's totals, reported at
# least this script's size (`/bin/true` forked from an 800 MiB parent reports 813 MiB).
# Through this launcher the floor is its own ~13 MiB.
MEASURE_LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def measure(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run `cmd` to completion; (wall seconds, peak RSS in MiB) of that process (and the
    descendants it waited for), from wait4's rusage taken by a small launcher (see
    MEASURE_LAUNCHER). Fails on a non-zero exit."""
    rss_file = log.with_suffix(".maxrss")
    with open(log, "wb") as out:
        t = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-c", MEASURE_LAUNCHER, str(rss_file)] + cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
        )
        wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.stderr.write(log.read_text(errors="replace")[-4000:])
        sys.exit(f"`{' '.join(cmd)}` failed with status {p.returncode} (log: {log})")
    return wall, int(rss_file.read_text()) / 1024  # ru_maxrss is in KiB on Linux


def billflow_totals(warehouse: Path) -> dict[str, dict[str, Decimal]]:
    """{stream or stream/organisation: {"rows": n, column: sum}} from the committed
    batches' manifests; a `for_each` stream's batch gives one entry per organisation with
    rows (its `organizations` section)."""
    totals: dict[str, dict[str, Decimal]] = {}

    def entry(rows, control_totals) -> dict[str, Decimal]:
        t = {"rows": Decimal(rows)}
        t.update({c: Decimal(v) for c, v in control_totals.items() if c in TOTAL_COLUMNS})
        return t

    for manifest in sorted(warehouse.rglob("batch.json")):
        m = json.loads(manifest.read_text())
        if m.get("status") != "committed" or m["period"]["label"] != PERIOD:
            continue
        if any(k == m["stream"] or k.startswith(m["stream"] + "/") for k in totals):
            sys.exit(f"two batches of stream {m['stream']} in {warehouse}")
        orgs = m.get("organizations")
        if orgs:
            for org, part in orgs.items():
                if part["rows"]:
                    totals[f"{m['stream']}/{org}"] = entry(part["rows"], part["control_totals"])
        else:
            totals[m["stream"]] = entry(m["rows"], m["control_totals"])
    return totals


def parquet_totals(out_dir: Path) -> dict[str, dict[str, Decimal]]:
    """{stream or stream/organisation: {"rows": n, column: sum}}: one directory per stream,
    or per organisation under a stream's directory; sums exact."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    def sums(d: Path) -> dict[str, Decimal]:
        dataset = ds.dataset(d, format="parquet")
        names = set(dataset.schema.names)
        cols = [c for c in TOTAL_COLUMNS if c in names]
        t = {"rows": Decimal(0), **{c: Decimal(0) for c in cols}}
        for batch in dataset.to_batches(columns=cols or None):
            t["rows"] += batch.num_rows
            for c in cols:
                arr = batch.column(c)
                if not pa.types.is_decimal(arr.type):
                    sys.exit(f"{d}: {c} is {arr.type}, not a decimal")
                s = pc.sum(arr.cast(pa.decimal128(38, arr.type.scale))).as_py()
                t[c] += s if s is not None else 0
        return t

    totals: dict[str, dict[str, Decimal]] = {}
    for stream_dir in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        parts = sorted(p for p in stream_dir.iterdir() if p.is_dir())
        if parts:
            for part in parts:
                totals[f"{stream_dir.name}/{part.name}"] = sums(part)
        else:
            totals[stream_dir.name] = sums(stream_dir)
    return totals


def differences(name: str, want: dict, got: dict) -> list[str]:
    out = []
    for stream in sorted(set(want) | set(got)):
        if stream not in got:
            out.append(f"{name}: stream {stream} missing (billflow has it)")
            continue
        if stream not in want:
            out.append(f"{name}: stream {stream} not in billflow's warehouse")
            continue
        for key in sorted(set(want[stream]) | set(got[stream])):
            a, b = want[stream].get(key), got[stream].get(key)
            if a != b:
                diff = f" (diff {b - a})" if a is not None and b is not None else ""
                out.append(f"{name}: {stream} {key}: billflow {a}, {name} {b}{diff}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, required=True, help="usage rows to generate")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    ap.add_argument("--billflow", metavar="PATH", help="the billflow binary (default: a profiling or release build if any)")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of duckdb,polars")
    ap.add_argument("--threads", default="", help="comma-separated thread counts, each run for all three (default: all cores)")
    ap.add_argument("--jobs", default="generated",
                    help="comma-separated jobs: generated (the generator's pipeline), shape2 (shape2.py: inputs as they arrive)")
    args = ap.parse_args()
    if args.billflow:
        billflow, what = Path(args.billflow).resolve(), "given with --billflow"
    else:
        billflow, what = default_billflow()
    print(f"billflow: {billflow} ({what})")
    if "debug" in str(billflow):
        print("  note: a debug build; its timings are not representative (cargo build --profile profiling)")
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in PEERS:
            sys.exit(f"unknown peer {p}; known: {', '.join(PEERS)}")
    jobs = [j for j in args.jobs.split(",") if j]
    for j in jobs:
        if j not in JOBS:
            sys.exit(f"unknown job {j}; known: {', '.join(JOBS)}")
    thread_counts = [int(t) for t in args.threads.split(",") if t] or [None]
    if args.keep:
        work = Path(args.keep).resolve()
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="billflow-bench-"))
    try:
        scenario = work / "scenario"
        (work / "logs").mkdir(parents=True)
        t = time.perf_counter()
        subprocess.run(
            [str(billflow), "generate", "--rows", str(args.rows), "--seed", str(args.seed), "--out", str(scenario)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"generated {args.rows} rows (seed {args.seed}) in {scenario} in {time.perf_counter() - t:.1f}s")
        summary = []  # (job, threads, {name: (wall, rss)})
        status = 0
        for job in jobs:
            for threads in thread_counts:
                ok, results = run_job(job, threads, billflow, peers, scenario, work, args)
                status |= 0 if ok else 1
                summary.append((job, threads or os.cpu_count() or 1, {n: (w, r) for n, w, r, _ in results}))
        if len(summary) > 1:
            print_summary(summary, peers, args.rows)
        return status
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# job -> (pipeline file in the scenario, the peers' script, how to prepare the scenario)
JOBS = {
    "generated": ("pipeline.yaml", "peers.py", None),
    "shape2": ("pipeline-shape2.yaml", "shape2.py", "prepare"),
}


def run_job(job: str, threads: int | None, billflow: Path, peers: list[str], scenario: Path, work: Path, args):
    """One job at one thread count: billflow and the peers timed, their totals compared."""
    pipeline, script, prepare = JOBS[job]
    if prepare:
        subprocess.run([sys.executable, str(HERE / script), prepare, str(scenario)], check=True, stdout=subprocess.DEVNULL)
    tag = f"{job}-{threads or 'all'}"
    logs = work / "logs"
    cores = threads or os.cpu_count() or 1
    results = []  # (name, wall, rss, totals)
    warehouse = work / f"wh-{tag}"
    print(f"[{job}, {cores} thread(s)] running billflow ...", flush=True)
    flag = ["--threads", str(threads)] if threads else []
    wall, rss = measure(
        [str(billflow), "run", str(scenario / pipeline), "--period", PERIOD, "--quiet",
         "--warehouse", str(warehouse)] + flag,
        logs / f"billflow-{tag}.log",
    )
    results.append(("billflow", wall, rss, billflow_totals(warehouse)))
    shutil.rmtree(warehouse, ignore_errors=True)
    for peer in peers:
        print(f"[{job}, {cores} thread(s)] running {peer} ...", flush=True)
        out = work / f"out-{peer}-{tag}"
        wall, rss = measure(
            [sys.executable, str(HERE / script), peer, str(scenario), str(out), "--period", PERIOD] + flag,
            logs / f"{peer}-{tag}.log",
        )
        results.append((peer, wall, rss, parquet_totals(out)))
        shutil.rmtree(out, ignore_errors=True)

    bf_wall = results[0][1]
    print()
    print(f"job {job}: {args.rows} usage rows, seed {args.seed}, {cores} thread(s) each")
    header = ["implementation", "rows", "wall s", "rows/s per core", "peak MiB", "billflow time / this"]
    rows = [
        [name, f"{args.rows:,}", f"{wall:.2f}", f"{args.rows / wall / cores:,.0f}", f"{rss:,.0f}",
         f"{bf_wall / wall:.2f}"]
        for name, wall, rss, _ in results
    ]
    print_table(header, rows)
    print()
    want = results[0][3]
    if not want:
        print(f"no committed batches in {warehouse}")
        return False, results
    problems = []
    for name, _, _, got in results[1:]:
        problems += differences(name, want, got)
    if problems:
        print(f"CONTROL TOTALS DIFFER ({len(problems)} difference(s)); the first ones:")
        for p in problems[:20]:
            print("  " + p)
        return False, results
    vendor = want.get("vendor-rated-usage", {})
    print(
        f"control totals equal: {len(want)} organisations' outputs x (rows, {', '.join(TOTAL_COLUMNS)}) for "
        f"{', '.join(name for name, *_ in results)}; vendor rows {vendor.get('rows')}, "
        f"cost_usd {vendor.get('cost_usd')}"
    )
    print()
    return True, results


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def print_summary(summary, peers: list[str], n_rows: int) -> None:
    """Every job and thread count on one table: wall seconds, peak MiB, billflow's ratio to each peer."""
    print(f"summary at {n_rows:,} usage rows (wall s / peak MiB; ratio = billflow's wall time / the peer's)")
    header = ["job", "threads", "billflow"] + [p for p in peers] + [f"ratio to {p}" for p in peers]
    rows = []
    for job, threads, by in summary:
        bw, br = by["billflow"]
        rows.append(
            [job, str(threads), f"{bw:.2f} / {br:,.0f}"]
            + [f"{by[p][0]:.2f} / {by[p][1]:,.0f}" for p in peers]
            + [f"{bw / by[p][0]:.2f}" for p in peers]
        )
    print_table(header, rows)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Hand calculation of the expected outputs of the cloud-reseller pipeline for period 2026-10.

This is NOT a re-implementation of billflow: it is a literal, row-by-row transcription of
the three SQL files in queries/cloud-reseller/ using Python's decimal module, so that a
reviewer can check every number. It only reads the CSVs under
data-samples/cloud-reseller/ and writes the expected files next to this script plus
data-samples/cloud-reseller/samples/nimbus-expected.csv.

Arithmetic rules (from the SQL):
  * products of decimals are exact (no intermediate rounding);
  * CAST(x AS DECIMAL(18, 4)) rounds the exact value to 4 decimals, half AWAY FROM ZERO
    (decimal.ROUND_HALF_UP is away from zero for negative numbers too);
  * sums in the invoice-line aggregation are exact.
  * validity windows are half-open: valid_from <= usage_date < valid_to (empty valid_to = open).

Run:  python3 tests/golden/cloud-reseller/compute_expected.py   (from the repository root
or anywhere: paths are resolved relative to this file)
"""
import csv
import glob
import json
import os
from datetime import date
from decimal import Decimal, ROUND_HALF_UP, ROUND_HALF_EVEN

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
PIPE = os.path.join(ROOT, "data-samples", "cloud-reseller")
OUT = HERE

PERIOD_START = date(2026, 10, 1)   # period 2026-10: [2026-10-01, 2026-11-01)
PERIOD_END = date(2026, 11, 1)

Q4 = Decimal("0.0001")


def cast_4(x):
    """CAST(x AS DECIMAL(18, 4)): round half away from zero to 4 decimals."""
    return x.quantize(Q4, rounding=ROUND_HALF_UP)


def is_tie_at_5th(x):
    """True if the exact value has exactly 5 decimals and the 5th is a 5 (a rounding tie)."""
    return (x * 10000) % 1 == Decimal("0.5") or (x * 10000) % 1 == Decimal("-0.5")


def d(s):
    return date.fromisoformat(s)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fmt(value, scale):
    if value is None:
        return ""
    if isinstance(value, date):
        return value.isoformat()
    if scale is None:
        return str(value)
    return f"{value.quantize(Decimal(1).scaleb(-scale)):f}"


def valid_on(row, day):
    return d(row["valid_from"]) <= day and (row["valid_to"] == "" or day < d(row["valid_to"]))


# ---------------------------------------------------------------- reference data
subscriptions = {r["subscription_id"]: r for r in read_csv(os.path.join(PIPE, "reference", "subscriptions.csv"))}
vendor_prices = read_csv(os.path.join(PIPE, "reference", "vendor_prices.csv"))
fx_rates = read_csv(os.path.join(PIPE, "reference", "fx_rates.csv"))
channel_terms = {r["organization_id"]: r for r in read_csv(os.path.join(PIPE, "reference", "channel_terms.csv"))}


def read_usage(path):
    rows = []
    for r in read_csv(path):
        rows.append({
            "record_id": r["record_id"],
            "usage_date": d(r["usage_date"]),
            "subscription_id": r["subscription_id"],
            "sku": r["sku"],
            "quantity": Decimal(r["quantity"]),
            "unit": r["unit"] if r["unit"] != "" else None,
        })
    return rows


# ---------------------------------------------------------------- published schemas
NIMBUS_COLS = [("record_id", None), ("usage_date", None), ("subscription_id", None),
               ("customer_id", None), ("reseller_id", None), ("distributor_id", None),
               ("sku", None), ("quantity", 6), ("unit_price_usd", 6), ("cost_usd", 4)]
NIMBUS_NOT_NULL = [c for c, _ in NIMBUS_COLS]          # every column is nullable: false
# fx_rate is declared (decimal(18,8), output: false): computed, not published.
DIST_COLS = [("record_id", None), ("usage_date", None), ("customer_id", None),
             ("reseller_id", None), ("sku", None), ("quantity", 6), ("cost_usd", 4),
             ("cost", 4), ("price", 4), ("currency", None)]
INVOICE_COLS = [("customer_id", None), ("sku", None), ("currency", None),
                ("quantity", 6), ("amount", 4), ("usage_lines", None)]


# ---------------------------------------------------------------- tier 1: vendor
def nimbus_rated_usage(usage):
    """normalise-sku (upper(trim(sku))) then vendor_rate.sql, then the contract check."""
    out, rejects = [], []
    for u in usage:
        sku = u["sku"].strip().upper()                       # upper(trim(sku))
        s = subscriptions.get(u["subscription_id"])          # LEFT JOIN subscriptions
        prices = [p for p in vendor_prices if p["sku"] == sku and valid_on(p, u["usage_date"])]
        assert len(prices) <= 1, f"overlapping prices for {sku} on {u['usage_date']}"
        unit_price = Decimal(prices[0]["unit_price"]) if prices else None   # LEFT JOIN prices
        cost = cast_4(u["quantity"] * unit_price) if unit_price is not None else None
        row = {
            "record_id": u["record_id"], "usage_date": u["usage_date"],
            "subscription_id": u["subscription_id"],
            "customer_id": s["customer_id"] if s else None,
            "reseller_id": s["reseller_id"] if s else None,
            "distributor_id": s["distributor_id"] if s else None,
            "sku": sku, "quantity": u["quantity"],
            "unit_price_usd": unit_price, "cost_usd": cost,
        }
        nulls = [c for c in NIMBUS_NOT_NULL if row[c] is None]
        if nulls:
            rejects.append(("nimbus-rated-usage", row["record_id"], ";".join(nulls)))
        else:
            out.append(row)
    return out, rejects


# ---------------------------------------------------------------- tier 2: distributor
def distributor_usage(owner, rated):
    """distributor_price.sql with {{ owner }} = owner."""
    t = channel_terms[owner]                                  # JOIN channel_terms
    markup = Decimal(t["markup_pct"])
    out = []
    for u in rated:
        if u["distributor_id"] != owner:                      # WHERE u.distributor_id = owner
            continue
        fx = [r for r in fx_rates if r["from_currency"] == "USD" and r["to_currency"] == t["currency"]
              and valid_on(r, u["usage_date"])]
        assert len(fx) == 1, f"no/overlapping fx for {u['record_id']}"
        rate = Decimal(fx[0]["rate"])
        cost = cast_4(u["cost_usd"] * rate)
        price = cast_4(cost * (1 + markup))
        out.append({
            "record_id": u["record_id"], "usage_date": u["usage_date"],
            "customer_id": u["customer_id"], "reseller_id": u["reseller_id"], "sku": u["sku"],
            "quantity": u["quantity"], "cost_usd": u["cost_usd"], "fx_rate": rate,
            "cost": cost, "price": price, "currency": t["currency"],
        })
    return out


# ---------------------------------------------------------------- tier 3: reseller
def reseller_lines(owner, dist_rows):
    """reseller_price.sql, then group_by [customer_id, sku, currency] with exact sums."""
    markup = Decimal(channel_terms[owner]["markup_pct"])
    priced = [{"record_id": u["record_id"], "customer_id": u["customer_id"], "sku": u["sku"],
               "currency": u["currency"], "quantity": u["quantity"],
               "amount": cast_4(u["price"] * (1 + markup))}
              for u in dist_rows if u["reseller_id"] == owner]
    groups = {}
    for p in priced:
        key = (p["customer_id"], p["sku"], p["currency"])
        g = groups.setdefault(key, {"customer_id": key[0], "sku": key[1], "currency": key[2],
                                    "quantity": Decimal(0), "amount": Decimal(0), "usage_lines": 0})
        g["quantity"] += p["quantity"]
        g["amount"] += p["amount"]
        g["usage_lines"] += 1
    return priced, sorted(groups.values(), key=lambda g: (g["customer_id"], g["sku"]))


# ---------------------------------------------------------------- writers
def write_rows(path, cols, rows):
    with open(path, "w", newline="") as f:
        f.write(",".join(c for c, _ in cols) + "\n")
        for r in rows:
            f.write(",".join(fmt(r[c], s) for c, s in cols) + "\n")


def totals(cols, rows):
    return {"rows": len(rows),
            "totals": {c: fmt(sum((r[c] for r in rows), Decimal(0)), s)
                       for c, s in cols if s is not None}}


# ---------------------------------------------------------------- run
usage_files = sorted(glob.glob(os.path.join(PIPE, "inputs", "usage-*.csv")))
all_usage = [u for p in usage_files for u in read_usage(p)]
ids = [u["record_id"] for u in all_usage]
assert len(ids) == len(set(ids)), "duplicate record_id"
period_usage = [u for u in all_usage if PERIOD_START <= u["usage_date"] < PERIOD_END]

nimbus, rejects = nimbus_rated_usage(period_usage)
nimbus.sort(key=lambda r: r["record_id"])
streams = {"nimbus-rated-usage": (NIMBUS_COLS, nimbus)}
dist = {}
for owner in ("eurodist", "britdist"):
    dist[owner] = sorted(distributor_usage(owner, nimbus), key=lambda r: r["record_id"])
    streams[f"{owner}-usage"] = (DIST_COLS, dist[owner])
priced_by_reseller = {}
for owner, upstream in (("alpha-it", "eurodist"), ("bergen-data", "eurodist"), ("clyde-cloud", "britdist")):
    priced_by_reseller[owner], lines = reseller_lines(owner, dist[upstream])
    streams[f"{owner}-invoice-lines"] = (INVOICE_COLS, lines)

# ---------------------------------------------------------------- worked examples
by_id = {u["record_id"]: u for u in all_usage}
nim_by_id = {r["record_id"]: r for r in nimbus}
dist_by_id = {r["record_id"]: r for o in dist for r in dist[o]}
amount_by_id = {p["record_id"]: (o, p) for o in priced_by_reseller for p in priced_by_reseller[o]}


def chain(rid, title, note):
    u, n, t = by_id[rid], nim_by_id[rid], dist_by_id[rid]
    owner, p = amount_by_id[rid]
    dm = Decimal(channel_terms[n["distributor_id"]]["markup_pct"])
    rm = Decimal(channel_terms[owner]["markup_pct"])
    exact_cost = n["quantity"] * n["unit_price_usd"]
    exact_conv = n["cost_usd"] * t["fx_rate"]
    exact_price = t["cost"] * (1 + dm)
    exact_amount = t["price"] * (1 + rm)
    lines = [
        f"## {title}: {rid}",
        "",
        note,
        "",
        "```",
        f"input     : usage_date={u['usage_date']} subscription={u['subscription_id']} sku={u['sku']!r} quantity={u['quantity']}",
        f"normalise : upper(trim({u['sku']!r})) = {n['sku']}",
        f"subscr.   : customer={n['customer_id']} reseller={n['reseller_id']} distributor={n['distributor_id']}",
        f"vendor    : unit_price_usd = {n['unit_price_usd']} (price row valid on {u['usage_date']})",
        f"            quantity * unit_price = {u['quantity']} * {n['unit_price_usd']} = {exact_cost}",
        f"            cost_usd = CAST(.. AS DECIMAL(18,4)) = {n['cost_usd']}"
        + ("   <- tie at 5th decimal, half away from zero" if is_tie_at_5th(exact_cost) else "")
        + (f"  (half-even would give {exact_cost.quantize(Q4, rounding=ROUND_HALF_EVEN)})"
           if exact_cost.quantize(Q4, rounding=ROUND_HALF_EVEN) != n["cost_usd"] else ""),
        f"distrib.  : fx_rate USD->{t['currency']} valid on {u['usage_date']} = {t['fx_rate']}",
        f"            cost_usd * fx_rate = {n['cost_usd']} * {t['fx_rate']} = {exact_conv}",
        f"            cost  = CAST(.. AS DECIMAL(18,4)) = {t['cost']}",
        f"            cost * (1 + {dm}) = {t['cost']} * {1 + dm} = {exact_price}",
        f"            price = CAST(.. AS DECIMAL(18,4)) = {t['price']}",
        f"reseller  : price * (1 + {rm}) = {t['price']} * {1 + rm} = {exact_amount}",
        f"            amount = CAST(.. AS DECIMAL(18,4)) = {p['amount']}  ({owner}, {t['currency']})",
        "```",
        "",
    ]
    return lines


md = ["# Worked examples (generated by compute_expected.py)", "",
      "Every step follows the SQL in queries/cloud-reseller/: products exact, CAST to",
      "DECIMAL(18,4) rounds half away from zero, validity windows are half-open",
      "(valid_from <= usage_date < valid_to).", ""]
md += chain("U-0023", "Price change, last day of the old price",
            "VM-STD-2 costs 0.096 until 2026-10-16 (exclusive); 2026-10-15 is also the first day of the new USD->EUR rate.")
md += chain("U-0024", "Price change, first day of the new price",
            "Same subscription and quantity as U-0023, one day later: VM-STD-2 now costs 0.0875.")
md += chain("U-0019", "FX change, last day of the old USD->EUR rate",
            "USD->EUR 0.92345678 is valid until 2026-10-15 (exclusive).")
md += chain("U-0021", "FX change, first day of the new USD->EUR rate",
            "Same quantity and SKU as U-0019 one day later (price unchanged, 0.096): USD->EUR is now 0.91876543.")
md += chain("U-0010", "Rounding tie (positive)",
            "123.46 * 0.0125 = 1.54325 exactly: half away from zero gives 1.5433 (half-even would give 1.5432).")
md += chain("U-0035", "Rounding tie (negative, the credit)",
            "-12.35 * 0.087 = -1.07445 exactly: half away from zero gives -1.0745 (half-even, or rounding toward +infinity, would give -1.0744).")

# list every rounding tie in the run, at every CAST
ties = []
for r in nimbus:
    if is_tie_at_5th(r["quantity"] * r["unit_price_usd"]):
        ties.append(f"{r['record_id']} nimbus cost_usd: {r['quantity'] * r['unit_price_usd']} -> {r['cost_usd']}")
for o in dist:
    dm = Decimal(channel_terms[o]["markup_pct"])
    for r in dist[o]:
        if is_tie_at_5th(r["cost_usd"] * r["fx_rate"]):
            ties.append(f"{r['record_id']} {o} cost: {r['cost_usd'] * r['fx_rate']} -> {r['cost']}")
        if is_tie_at_5th(r["cost"] * (1 + dm)):
            ties.append(f"{r['record_id']} {o} price: {r['cost'] * (1 + dm)} -> {r['price']}")
for o in priced_by_reseller:
    rm = Decimal(channel_terms[o]["markup_pct"])
    for p in priced_by_reseller[o]:
        exact = dist_by_id[p["record_id"]]["price"] * (1 + rm)
        if is_tie_at_5th(exact):
            ties.append(f"{p['record_id']} {o} amount: {exact} -> {p['amount']}")
md += ["## All rounding ties in the 2026-10 run", "", "```"] + ties + ["```", ""]

print("\n".join(md))
with open(os.path.join(OUT, "WORKED_EXAMPLES.md"), "w") as f:
    f.write("\n".join(md))

# ---------------------------------------------------------------- write expected files
control = {}
for sid, (cols, rows) in streams.items():
    write_rows(os.path.join(OUT, f"{sid}.csv"), cols, rows)
    control[sid] = totals(cols, rows)
with open(os.path.join(OUT, "rejects.csv"), "w", newline="") as f:
    f.write("stream_id,record_id,null_columns\n")
    for r in sorted(rejects, key=lambda r: (r[0], r[1])):
        f.write(",".join(r) + "\n")
with open(os.path.join(OUT, "control_totals.json"), "w") as f:
    json.dump(control, f, indent=2)
    f.write("\n")

# sample for `billflow test`: nimbus-rated-usage on samples/nimbus-input.csv
sample_in = read_usage(os.path.join(PIPE, "samples", "nimbus-input.csv"))
sample_out, sample_rejects = nimbus_rated_usage(sample_in)
assert not sample_rejects
write_rows(os.path.join(PIPE, "samples", "nimbus-expected.csv"), NIMBUS_COLS,
           sorted(sample_out, key=lambda r: r["record_id"]))

# ---------------------------------------------------------------- summary
print("usage rows per period:",
      {k: sum(1 for u in all_usage if u["usage_date"].strftime("%Y-%m") == k)
       for k in sorted({u["usage_date"].strftime("%Y-%m") for u in all_usage})})
print("rejects:", rejects)
print(json.dumps(control, indent=2))

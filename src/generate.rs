//! `billflow generate`: a deterministic, realistic three-tier scenario at any scale, for
//! benchmarks and load tests. The same seed gives byte-identical files.
//!
//! One vendor sells 1,000 products with tiered price plans through 20 distributors (in 5
//! currencies, with daily exchange rates) to 2,000 resellers (100 per distributor) and
//! their customers' subscriptions. Usage is skewed: a few subscriptions carry most of it.
//! Usage rows are generated in independent chunks (each with its own generator seeded
//! from the seed and the chunk number), in parallel, and written as Parquet.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use rayon::prelude::*;

/// Why a scenario could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GenerateError + '_ {
    move |source| GenerateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, text: impl AsRef<[u8]>) -> Result<(), GenerateError> {
    fs::write(path, text).map_err(io(path))
}

pub const PRODUCTS: usize = 1_000;
pub const DISTRIBUTORS: usize = 20;
pub const RESELLERS_PER_DISTRIBUTOR: usize = 100;
pub const CURRENCIES: &[(&str, i128)] = &[
    ("EUR", 91_876_543),
    ("GBP", 78_912_345),
    ("JPY", 15_012_345_678),
    ("CHF", 88_123_456),
    ("AUD", 152_345_678),
];
const ROWS_PER_FILE: usize = 1 << 20;
const DAYS: i32 = 31; // October 2026
const OCTOBER_1: i32 = 20_727; // 2026-10-01 in days since 1970-01-01

/// SplitMix64: small, fast, and the same everywhere (also used by the property tests).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Scenario {
    pub rows: usize,
    pub seed: u64,
    pub subscriptions: usize,
}

impl Scenario {
    pub fn new(rows: usize, seed: u64) -> Self {
        // Enough subscriptions that large runs still have many small customers.
        let subscriptions = (rows / 200).clamp(2_000, 200_000);
        Scenario {
            rows,
            seed,
            subscriptions,
        }
    }
}

fn usage_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("record_id", DataType::Int64, false),
        Field::new("usage_date", DataType::Date32, false),
        Field::new("subscription_id", DataType::Utf8, false),
        Field::new("sku", DataType::Utf8, false),
        Field::new("quantity", DataType::Decimal128(18, 6), false),
    ]))
}

/// One chunk of usage rows: `[start, start + len)`.
fn usage_chunk(s: &Scenario, chunk: u64, start: usize, len: usize) -> Result<RecordBatch, GenerateError> {
    let mut rng = Rng::new(s.seed, chunk + 1);
    let mut ids = Vec::with_capacity(len);
    let mut days = Vec::with_capacity(len);
    let mut subs = Vec::with_capacity(len);
    let mut skus = Vec::with_capacity(len);
    let mut qty = Vec::with_capacity(len);
    for i in 0..len {
        ids.push((start + i) as i64);
        days.push(OCTOBER_1 + rng.below(DAYS as u64) as i32);
        // Skew: u^3 crowds draws near 0, so low-numbered subscriptions are the big ones.
        let u = rng.unit();
        let sub = ((u * u * u) * s.subscriptions as f64) as usize;
        subs.push(format!("S{sub:06}"));
        // Each subscription uses a handful of products.
        let sku = (sub * 7 + rng.below(5) as usize * 131) % PRODUCTS;
        skus.push(format!("P{sku:04}"));
        // 0.000001 .. 1000 units, mostly small.
        let v = rng.unit();
        qty.push(((v * v * 1_000.0) * 1e6) as i128 + 1);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(Date32Array::from(days)),
        Arc::new(StringArray::from(subs)),
        Arc::new(StringArray::from(skus)),
        Arc::new(
            Decimal128Array::from(qty)
                .with_precision_and_scale(18, 6)
                .map_err(GenerateError::from)?,
        ),
    ];
    RecordBatch::try_new(usage_schema(), columns).map_err(GenerateError::from)
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), GenerateError> {
    let file = fs::File::create(path).map_err(io(path))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(
            parquet::basic::ZstdLevel::try_new(1).map_err(GenerateError::from)?,
        ))
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(GenerateError::from)?;
    w.write(batch).map_err(GenerateError::from)?;
    w.close().map_err(GenerateError::from)?;
    Ok(())
}

fn write_csv(path: &Path, batch: &RecordBatch) -> Result<(), GenerateError> {
    let file = fs::File::create(path).map_err(io(path))?;
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .with_date_format("%Y-%m-%d".into())
        .build(file);
    w.write(batch).map_err(GenerateError::from)
}

/// Everything but the usage: reference tables as CSV (small), deterministic from the seed.
fn references(s: &Scenario, dir: &Path) -> Result<(), GenerateError> {
    let mut rng = Rng::new(s.seed, 0);
    let r = dir.join("reference");
    fs::create_dir_all(&r).map_err(io(&r))?;
    // Tiered plans: three bands per product.
    let mut plans = String::from("sku,model,band_from,band_to,unit_price\n");
    for p in 0..PRODUCTS {
        let base = 10_000 + rng.below(990_000) as i128; // 0.010000 .. 1.000000 per unit
        let b1 = 100 * (1 + rng.below(10));
        let b2 = b1 * 10;
        let price = |v: i128| format!("{}.{:06}", v / 1_000_000, v % 1_000_000);
        let _ = writeln!(plans, "P{p:04},tiered,0,{b1},{}", price(base));
        let _ = writeln!(plans, "P{p:04},tiered,{b1},{b2},{}", price(base * 85 / 100));
        let _ = writeln!(plans, "P{p:04},tiered,{b2},,{}", price(base * 70 / 100));
    }
    write_file(&r.join("price_plans.csv"), plans)?;
    // Subscriptions: customer, reseller, distributor.
    let mut subs = String::from("subscription_id,customer_id,reseller_id,distributor_id\n");
    for i in 0..s.subscriptions {
        let reseller = rng.below((DISTRIBUTORS * RESELLERS_PER_DISTRIBUTOR) as u64) as usize;
        let distributor = reseller / RESELLERS_PER_DISTRIBUTOR;
        let _ = writeln!(subs, "S{i:06},C{:06},R{reseller:04},D{distributor:02}", i / 3);
    }
    write_file(&r.join("subscriptions.csv"), subs)?;
    // Channel terms: markups of distributors and resellers, and their currency.
    let mut terms = String::from("organization_id,currency,markup_pct\n");
    for d in 0..DISTRIBUTORS {
        let _ = writeln!(
            terms,
            "D{d:02},{},0.{:04}",
            CURRENCIES[d % CURRENCIES.len()].0,
            500 + rng.below(1_500)
        );
        for k in 0..RESELLERS_PER_DISTRIBUTOR {
            let _ = writeln!(
                terms,
                "R{:04},{},0.{:04}",
                d * RESELLERS_PER_DISTRIBUTOR + k,
                CURRENCIES[d % CURRENCIES.len()].0,
                1_000 + rng.below(2_000)
            );
        }
    }
    write_file(&r.join("channel_terms.csv"), terms)?;
    // Daily exchange rates from USD, each valid for its day.
    let mut fx = String::from("from_currency,to_currency,rate,valid_from,valid_to\n");
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    for (code, base) in CURRENCIES {
        let mut rate = *base;
        for d in 0..DAYS {
            let day = epoch + chrono::Days::new((OCTOBER_1 + d) as u64);
            let next = day + chrono::Days::new(1);
            rate += rate * (rng.below(2_001) as i128 - 1_000) / 200_000; // +-0.5% a day
            let _ = writeln!(
                fx,
                "USD,{code},{}.{:08},{day},{next}",
                rate / 100_000_000,
                rate % 100_000_000
            );
        }
    }
    write_file(&r.join("fx_rates.csv"), fx)?;
    Ok(())
}

/// The pipeline over the generated files: the vendor rates usage per subscription and
/// product (tiered), each distributor converts its share to its currency at the day's
/// rate and marks it up (one `for_each` stream, a partition per distributor), and each
/// reseller marks up its distributor's price (a partition per reseller).
/// The generated pipeline's sources and references (after its organisations).
const PIPELINE_INPUTS: &str = r#"
sources:
  usage:
    url: inputs/usage-*.parquet
    schema:
      - { name: record_id, type: integer, nullable: false }
      - { name: usage_date, type: date, nullable: false }
      - { name: subscription_id, type: string, nullable: false }
      - { name: sku, type: string, nullable: false }
      - { name: quantity, type: "decimal(18,6)", nullable: false }

references:
  subscriptions:
    url: reference/subscriptions.csv
    schema:
      - { name: subscription_id, type: string }
      - { name: customer_id, type: string }
      - { name: reseller_id, type: string }
      - { name: distributor_id, type: string }
  price_plans:
    url: reference/price_plans.csv
    schema:
      - { name: sku, type: string }
      - { name: model, type: string }
      - { name: band_from, type: "decimal(18,6)" }
      - { name: band_to, type: "decimal(18,6)" }
      - { name: unit_price, type: "decimal(18,6)" }
  channel_terms:
    url: reference/channel_terms.csv
    schema:
      - { name: organization_id, type: string }
      - { name: currency, type: string }
      - { name: markup_pct, type: "decimal(9,4)" }
  fx_rates:
    url: reference/fx_rates.csv
    schema:
      - { name: from_currency, type: string }
      - { name: to_currency, type: string }
      - { name: rate, type: "decimal(18,8)" }
      - { name: valid_from, type: date }
      - { name: valid_to, type: date }

streams:
  - id: vendor-rated-usage
    kind: usage
    owner: vendor
    input: { source: usage }
    review: { policy: auto, max_rejected_percent: 100 }
    period: usage_date
    stages:
      - { name: subscriber, kind: lookup, reference: subscriptions, keys: [subscription_id], columns: [customer_id, reseller_id, distributor_id], on_missing: reject }
      - { name: rate, kind: rate, price_list: price_plans, keys: [sku], group_by: [subscription_id], quantity: quantity, output: cost_usd, scale: 4, on_missing_price: reject }
    columns:
      - { name: record_id, type: integer, nullable: false }
      - { name: usage_date, type: date, nullable: false }
      - { name: subscription_id, type: string, nullable: false }
      - { name: sku, type: string, nullable: false }
      - { name: quantity, type: "decimal(18,6)", nullable: false }
      - { name: customer_id, type: string, nullable: false }
      - { name: reseller_id, type: string, nullable: false }
      - { name: distributor_id, type: string, nullable: false }
      - { name: cost_usd, type: "decimal(18,4)", nullable: false }
"#;

/// The generated pipeline's streams.
const PIPELINE_STREAMS: &str = r#"
  # Every distributor converts its share to its currency and marks it up: one stream
  # for the tier, one partition of its batch per distributor.
  - id: distributor-usage
    kind: billing
    for_each: { tier: distributor, column: distributor_id }
    input: { stream: vendor-rated-usage }
    review: { policy: auto, max_rejected_percent: 100 }
    stages:
      - { name: currency, kind: lookup, reference: channel_terms, keys: [{ column: distributor_id, reference_column: organization_id }], columns: [currency] }
      - { name: convert, kind: convert_currency, amount: cost_usd, from: USD, to_column: currency, rates: fx_rates, date: usage_date, output: cost, scale: 4 }
      - { name: markup, kind: markup, column: cost, output: price, rules: { reference: channel_terms, keys: [{ column: distributor_id, reference_column: organization_id }], rate_column: markup_pct } }
    columns:
      - { name: record_id, type: integer, nullable: false }
      - { name: usage_date, type: date, nullable: false }
      - { name: subscription_id, type: string, nullable: false }
      - { name: sku, type: string, nullable: false }
      - { name: quantity, type: "decimal(18,6)", nullable: false }
      - { name: customer_id, type: string, nullable: false }
      - { name: reseller_id, type: string, nullable: false }
      - { name: distributor_id, type: string, nullable: false }
      - { name: cost_usd, type: "decimal(18,4)", nullable: false }
      - { name: currency, type: string, nullable: false }
      - { name: cost, type: "decimal(18,4)", nullable: false }
      - { name: price, type: "decimal(18,4)", nullable: false }

  # Every reseller marks up its distributor's price: one partition per reseller.
  - id: reseller-usage
    kind: billing
    for_each: { tier: reseller, column: reseller_id }
    input: { stream: distributor-usage }
    review: { policy: auto, max_rejected_percent: 100 }
    stages:
      - { name: markup, kind: markup, column: price, output: reseller_price, rules: { reference: channel_terms, keys: [{ column: reseller_id, reference_column: organization_id }], rate_column: markup_pct } }
    columns:
      - { name: record_id, type: integer, nullable: false }
      - { name: usage_date, type: date, nullable: false }
      - { name: subscription_id, type: string, nullable: false }
      - { name: sku, type: string, nullable: false }
      - { name: quantity, type: "decimal(18,6)", nullable: false }
      - { name: customer_id, type: string, nullable: false }
      - { name: reseller_id, type: string, nullable: false }
      - { name: distributor_id, type: string, output: false }
      - { name: cost_usd, type: "decimal(18,4)", output: false }
      - { name: currency, type: string, nullable: false }
      - { name: cost, type: "decimal(18,4)", output: false }
      - { name: price, type: "decimal(18,4)", nullable: false }
      - { name: reseller_price, type: "decimal(18,4)", nullable: false }
"#;

fn pipeline(dir: &Path) -> Result<(), GenerateError> {
    let mut y = String::from(
        "# Generated by `billflow generate`: a large three-tier scenario.\npipeline: generated\nwarehouse: warehouse\n\norganizations:\n  - { id: vendor, name: Vendor Inc., tier: vendor, currency: USD }\n",
    );
    for d in 0..DISTRIBUTORS {
        let _ = writeln!(
            y,
            "  - {{ id: D{d:02}, name: Distributor {d}, tier: distributor, upstream: vendor, currency: {} }}",
            CURRENCIES[d % CURRENCIES.len()].0
        );
    }
    for r in 0..DISTRIBUTORS * RESELLERS_PER_DISTRIBUTOR {
        let d = r / RESELLERS_PER_DISTRIBUTOR;
        let _ = writeln!(
            y,
            "  - {{ id: R{r:04}, name: Reseller {r}, tier: reseller, upstream: D{d:02}, currency: {} }}",
            CURRENCIES[d % CURRENCIES.len()].0
        );
    }
    y.push_str(PIPELINE_INPUTS);
    y.push_str(PIPELINE_STREAMS);
    write_file(&dir.join("pipeline.yaml"), y)
}

/// Write the whole scenario under `dir`. CSV copies of the usage are written too when
/// `csv` is set (meant for small runs).
pub fn generate(s: &Scenario, dir: &Path, csv: bool) -> Result<(), GenerateError> {
    let inputs = dir.join("inputs");
    fs::create_dir_all(&inputs).map_err(io(&inputs))?;
    references(s, dir)?;
    pipeline(dir)?;
    let files = s.rows.div_ceil(ROWS_PER_FILE).max(1);
    (0..files).into_par_iter().try_for_each(|f| {
        let start = f * ROWS_PER_FILE;
        let len = ROWS_PER_FILE.min(s.rows.saturating_sub(start));
        let batch = usage_chunk(s, f as u64, start, len)?;
        write_parquet(&inputs.join(format!("usage-{f:05}.parquet")), &batch)?;
        if csv {
            write_csv(&inputs.join(format!("usage-{f:05}.csv")), &batch)?;
        }
        Ok::<(), GenerateError>(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_deterministic_and_skewed() {
        let s = Scenario::new(50_000, 42);
        let a = usage_chunk(&s, 0, 0, 50_000).unwrap();
        let b = usage_chunk(&s, 0, 0, 50_000).unwrap();
        assert_eq!(a, b);
        let c = usage_chunk(&Scenario::new(50_000, 43), 0, 0, 50_000).unwrap();
        assert_ne!(a, c, "another seed, other data");
        // The top 1% of subscriptions carry far more than 1% of the rows.
        let subs = a.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        let top = subs.iter().filter(|v| v.is_some_and(|v| v < "S000020")).count();
        assert!(top > 50_000 / 10, "top 1% of 2000 subscriptions: {top} rows");
    }
}

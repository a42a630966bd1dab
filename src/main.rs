//! The `billflow` command: a thin layer over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use billflow::batches::StoreLocation;
use billflow::execution::{NoProgress, Progress};
use billflow::{Engine, Period, RunOptions, cli, plan};
use clap::{Parser, Subcommand, ValueEnum};

const DEFAULT_PIPELINE: &str = "data-samples/cloud-reseller/pipeline.yaml";

#[derive(Parser)]
#[command(
    name = "billflow",
    version,
    about = "Rate and convert billing data as it flows through a software supply chain"
)]
struct Cli {
    /// Threads: DataFusion partitions per stream plan and runtime workers; default: all cores.
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Memory for sorts, aggregations and joins (e.g. 512M, 4G); past it, sorts and
    /// aggregations spill to disk (TMPDIR). `0`: no limit.
    #[arg(long, global = true, default_value = "4G", value_parser = parse_size)]
    memory_limit: usize,
    /// Refuse any pipeline file, source, reference, query, pairs, sample or manual file
    /// outside DIR (a pipeline is trusted code: it reads and writes the files it names).
    #[arg(long, global = true, value_name = "DIR")]
    sandbox: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a pipeline file: structure, references, the chain, and every stage's schema.
    Validate {
        #[arg(default_value = DEFAULT_PIPELINE)]
        pipeline: PathBuf,
    },
    /// Show the DAG: organisations, streams and their stages.
    Explain {
        #[arg(default_value = DEFAULT_PIPELINE)]
        pipeline: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Tree)]
        format: Format,
        /// Also print DataFusion's logical and physical plan of each stream (tree format).
        #[arg(long)]
        verbose: bool,
    },
    /// Run every stream for a period and write one batch per stream.
    Run {
        #[arg(default_value = DEFAULT_PIPELINE)]
        pipeline: PathBuf,
        /// `YYYY-MM` or `YYYY-MM-DD..YYYY-MM-DD` (end exclusive).
        #[arg(long)]
        period: String,
        /// Where batches go (a folder, `s3://bucket/prefix`, `gs://…` or `az://…`); default: the pipeline's
        /// `warehouse`, else ./warehouse.
        #[arg(long, value_parser = location)]
        warehouse: Option<StoreLocation>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
        /// Run the chain down to this tier only (e.g. `distributor`), each stream's
        /// review policy applied as its batch is committed; lower tiers are not run.
        #[arg(long, value_name = "TIER")]
        until_tier: Option<String>,
    },
    /// Write a deterministic large scenario (usage as Parquet, references, pipeline).
    Generate {
        #[arg(long)]
        rows: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Also write the usage as CSV (for small runs).
        #[arg(long)]
        csv: bool,
    },
    /// Run each stream that declares a `sample` on it and diff against the expected rows.
    Test {
        #[arg(default_value = DEFAULT_PIPELINE)]
        pipeline: PathBuf,
    },
    /// Review batches: list them, show one and its history, move it along its lifecycle.
    Batch {
        #[command(subcommand)]
        command: BatchCommand,
        /// The warehouse (a folder, `s3://bucket/prefix`, `gs://…` or `az://…`); default: ./warehouse.
        #[arg(long, global = true, default_value = "warehouse", value_parser = location)]
        warehouse: StoreLocation,
        /// Act as this organisation: see only its batches and those published to it, and
        /// change only its own (also `BILLFLOW_ORG`).
        #[arg(long = "as", global = true, value_name = "ORG")]
        as_org: Option<String>,
    },
    /// SQL over the committed batches: one statement, or with none an interactive shell.
    /// A schema per organisation with a table per stream (`-` written `_`), plus
    /// `billflow.batches`, `billflow.events` and `billflow.streams`. Read-only.
    Query {
        /// The statement (or `\d`, `\d NAME`); none: the shell.
        #[arg(allow_hyphen_values = true, conflicts_with = "file")]
        sql: Option<String>,
        /// Run the statement in FILE (e.g. one of queries/).
        #[arg(long, short = 'f', value_name = "FILE")]
        file: Option<PathBuf>,
        /// The warehouse (a folder, `s3://bucket/prefix`, `gs://…` or `az://…`); default: ./warehouse.
        #[arg(long, default_value = "warehouse", value_parser = location)]
        warehouse: StoreLocation,
        /// As this organisation: its batches and those published to it (also `BILLFLOW_ORG`).
        #[arg(long = "as", value_name = "ORG")]
        as_org: Option<String>,
        #[arg(long, value_enum, default_value_t = billflow::query::output::Format::Table)]
        format: billflow::query::output::Format,
        /// Write the result to FILE instead of the terminal.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// A Postgres wire-protocol server over the same catalog as `query`, so psql, DBeaver,
    /// Metabase, Grafana or any Postgres driver can query the batches. Read-only; each
    /// user (SCRAM-SHA-256) sees what `--as` their organisation sees. Stops on Ctrl-C.
    Serve {
        /// The warehouse (a folder, `s3://bucket/prefix`, `gs://…` or `az://…`); default: ./warehouse.
        #[arg(long, default_value = "warehouse", value_parser = location)]
        warehouse: StoreLocation,
        /// Who may connect, YAML: `users: { NAME: { organization: ORG ("*": all),
        /// password: P | password_env: VAR } }` (also `BILLFLOW_USERS`).
        #[arg(long, value_name = "FILE", env = "BILLFLOW_USERS")]
        users: PathBuf,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// 0: any free port (the one taken is printed).
        #[arg(long, default_value_t = 5433)]
        port: u16,
        /// A PEM certificate chain: clients connect with TLS (needs --tls-key).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's PEM private key.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Check a period's published batches: each one's data files still add up to its
    /// control totals, and every batch of the tier below built from it read exactly
    /// what was published (from the version published now). Exit 1 on any difference.
    Reconcile {
        #[arg(long)]
        period: String,
        /// The warehouse (a folder, `s3://bucket/prefix`, `gs://…` or `az://…`); default: ./warehouse.
        #[arg(long, default_value = "warehouse", value_parser = location)]
        warehouse: StoreLocation,
        /// As this organisation: its batches and those published to it (also `BILLFLOW_ORG`).
        #[arg(long = "as", value_name = "ORG")]
        as_org: Option<String>,
    },
}

#[derive(Subcommand)]
enum BatchCommand {
    /// The batches, with their status and version.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// ready, accepted, rejected, held, published, voided or superseded.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// One batch: its manifest, control totals, rejects and history.
    Show { id: String },
    /// The batch's lifecycle events, oldest first.
    History { id: String },
    /// What batch B (a newer version) changes in batch A: rows added, removed and changed,
    /// matched on the key columns, and the control totals side by side.
    Diff {
        a: String,
        b: String,
        /// The columns that match a row of A to its row in B, e.g. `--key record_id`.
        #[arg(long, value_delimiter = ',', required = true)]
        key: Vec<String>,
    },
    /// Accept a ready batch.
    Accept(StepArgs),
    /// Reject a ready batch (a note is required).
    Reject(StepArgs),
    /// Publish an accepted batch to the organisations directly below.
    Publish(StepArgs),
    /// Withdraw a published batch (a note is required).
    Void(StepArgs),
    /// Keep a ready or accepted batch from being published.
    Hold(StepArgs),
    /// Let a held batch go on from where it was held.
    Release(StepArgs),
}

/// One batch by its id, or (without an id) every batch the filters match whose status
/// allows the step, e.g. `batch publish --stream reseller-usage --period 2026-10`.
#[derive(clap::Args)]
struct StepArgs {
    id: Option<String>,
    /// Why (required to reject and to void).
    #[arg(long)]
    note: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
}

/// Which batches: each filter given must match.
#[derive(clap::Args)]
struct FilterArgs {
    #[arg(long)]
    tier: Option<String>,
    #[arg(long)]
    organization: Option<String>,
    #[arg(long)]
    stream: Option<String>,
    #[arg(long)]
    period: Option<String>,
}

impl FilterArgs {
    fn filter(self, status: Option<billflow::batches::lifecycle::Status>) -> billflow::batches::review::Filter {
        billflow::batches::review::Filter {
            tier: self.tier,
            organization: self.organization,
            stream: self.stream,
            period: self.period,
            status,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Tree,
    Mermaid,
    Dot,
}

/// `4G`, `512M`, `64K`, `1.5G` or a number of bytes.
fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], t[i..].to_ascii_uppercase()),
        None => (t, String::new()),
    };
    let factor: f64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        "T" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("unknown unit `{unit}` in `{text}`: use K, M, G or T (e.g. 4G)")),
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 4G, 512M)"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("`{text}` is not a size (e.g. 4G, 512M)"));
    }
    Ok((n * factor) as usize)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    limit_malloc_arenas(
        cli.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    );
    // `RUST_LOG=billflow=debug` shows each stream's phases and their timings (on stderr,
    // beside the progress bars); nothing is logged by default.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = cli.threads {
        builder.worker_threads(t.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(cli))
}

/// glibc gives a thread that finds the arenas busy an arena of its own, up to eight per
/// core, and each keeps the memory freed in it for reuse: with the runtime's, the blocking
/// pool's and the writers' threads, a run held far more than it used. One arena per
/// compute thread: shape2's peak memory 388 to 319 MiB at 10M rows, its time the same
/// (benches/pipeline/README.md). `MALLOC_ARENA_MAX`, when set, decides instead.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas(threads: usize) {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let arenas = libc::c_int::try_from(threads.max(2)).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt sets one of glibc's allocator tunables; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas(_threads: usize) {}

/// The engine, and the sandbox pipelines are loaded in.
struct Env {
    engine: Arc<Engine>,
    sandbox: Option<billflow::definition::Sandbox>,
}

async fn load(env: &Env, path: &Path) -> Result<billflow::Plan, ExitCode> {
    billflow::check_in(&env.engine, path, env.sandbox.clone())
        .await
        .map_err(|d| {
            eprint!("{}", d.render());
            ExitCode::from(2)
        })
}

async fn run(cli: Cli) -> ExitCode {
    let limit = (cli.memory_limit > 0).then_some(cli.memory_limit);
    let engine = match Engine::new(cli.threads).and_then(|e| e.with_memory_limit(limit)) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let sandbox = match cli
        .sandbox
        .as_deref()
        .map(billflow::definition::Sandbox::new)
        .transpose()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: --sandbox: {e}");
            return ExitCode::from(2);
        }
    };
    let env = Env { engine, sandbox };
    let outcome = match cli.command {
        Command::Validate { pipeline } => validate(&env, &pipeline).await,
        Command::Explain {
            pipeline,
            format,
            verbose,
        } => explain(&env, &pipeline, format, verbose).await,
        Command::Run {
            pipeline,
            period,
            warehouse,
            quiet,
            until_tier,
        } => run_pipeline(&env, &pipeline, &period, warehouse, quiet, until_tier.as_deref()).await,
        Command::Query {
            sql,
            file,
            warehouse,
            as_org,
            format,
            output,
        } => {
            let org = as_org.or_else(|| std::env::var("BILLFLOW_ORG").ok());
            let warehouse =
                billflow::query::Warehouse::open(warehouse, org, env.engine.runtime(), env.engine.partitions());
            let sql = match file.map(|path| std::fs::read_to_string(&path).map_err(|e| (path, e))) {
                Some(Ok(text)) => Some(text),
                Some(Err((path, e))) => {
                    eprintln!("error: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
                None => sql,
            };
            query(&warehouse, sql.as_deref(), format, output.as_deref()).await
        }
        Command::Serve {
            warehouse,
            users,
            host,
            port,
            tls_cert,
            tls_key,
        } => {
            let warehouse =
                billflow::query::Warehouse::open(warehouse, None, env.engine.runtime(), env.engine.partitions());
            let options = billflow::serve::ServeOptions {
                host,
                port,
                tls: tls_cert.zip(tls_key),
            };
            serve(warehouse, &users, &options).await
        }
        Command::Reconcile {
            period,
            warehouse,
            as_org,
        } => {
            reconcile(
                &period,
                &warehouse,
                as_org.or_else(|| std::env::var("BILLFLOW_ORG").ok()),
            )
            .await
        }
        Command::Generate { rows, seed, out, csv } => generate(rows, seed, &out, csv),
        Command::Test { pipeline } => test(&env, &pipeline).await,
        Command::Batch {
            command,
            warehouse,
            as_org,
        } => {
            batch(
                command,
                &warehouse,
                as_org.or_else(|| std::env::var("BILLFLOW_ORG").ok()),
            )
            .await
        }
    };
    outcome.unwrap_or_else(|code| code)
}

/// `--warehouse`: a folder, or a URL of an object store.
fn location(text: &str) -> Result<StoreLocation, String> {
    StoreLocation::parse(text).map_err(|e| e.to_string())
}

async fn validate(env: &Env, pipeline: &Path) -> Result<ExitCode, ExitCode> {
    let plan = load(env, pipeline).await?;
    let p = &plan.pipeline;
    println!(
        "{}: pipeline `{}` is valid: {} organisations, {} sources, {} references, {} streams, {} stages",
        pipeline.display(),
        p.id.value,
        p.organizations.len(),
        p.sources.len(),
        p.references.len(),
        plan.streams.len(),
        plan.streams.iter().map(|s| s.stages.len()).sum::<usize>()
    );
    Ok(ExitCode::SUCCESS)
}

async fn explain(env: &Env, pipeline: &Path, format: Format, verbose: bool) -> Result<ExitCode, ExitCode> {
    let plan = load(env, pipeline).await?;
    match format {
        Format::Tree => {
            print!("{}", plan::explain::tree(&plan));
            if verbose {
                print!("{}", billflow::execution::explain_plans(&env.engine, &plan).await);
            }
        }
        Format::Mermaid => print!("{}", plan::explain::mermaid(&plan)),
        Format::Dot => print!("{}", plan::explain::dot(&plan)),
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_pipeline(
    env: &Env,
    pipeline: &Path,
    period: &str,
    warehouse: Option<StoreLocation>,
    quiet: bool,
    until_tier: Option<&str>,
) -> Result<ExitCode, ExitCode> {
    let period = Period::parse(period).map_err(|e| {
        eprintln!("error: --period: {e}");
        ExitCode::from(2)
    })?;
    let plan = Arc::new(load(env, pipeline).await?);
    let until_level = until_tier.map(|t| plan.tier_level(t)).transpose().map_err(|e| {
        eprintln!("error: --until-tier: {e}");
        ExitCode::from(2)
    })?;
    let warehouse = match warehouse {
        Some(w) => w,
        None => location(plan.pipeline.warehouse.as_deref().unwrap_or("warehouse")).map_err(|e| {
            eprintln!("error: warehouse: {e}");
            ExitCode::from(2)
        })?,
    };
    let progress: Arc<dyn Progress> = if quiet {
        Arc::new(NoProgress)
    } else {
        Arc::new(cli::Bars::new())
    };
    let options = RunOptions {
        period,
        warehouse,
        until_level,
    };
    let report = env.engine.run(plan, options, progress).await;
    print!("{}", cli::summary_table(&report));
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn generate(rows: usize, seed: u64, out: &Path, csv: bool) -> Result<ExitCode, ExitCode> {
    let started = std::time::Instant::now();
    billflow::generate::generate(&billflow::generate::Scenario::new(rows, seed), out, csv).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    println!(
        "wrote {rows} usage rows (seed {seed}) and the pipeline to {} in {:.1}s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

async fn test(env: &Env, pipeline: &Path) -> Result<ExitCode, ExitCode> {
    let plan = load(env, pipeline).await?;
    let outcomes = billflow::testing::run_samples(&env.engine, &plan).await;
    if outcomes.is_empty() {
        println!("no stream declares a `sample`; nothing to test");
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = 0;
    for o in &outcomes {
        if o.passed() {
            println!("ok    {} ({} rows)", o.stream, o.actual_rows);
        } else {
            failed += 1;
            println!(
                "FAIL  {} (expected {} rows, got {})",
                o.stream, o.expected_rows, o.actual_rows
            );
            if let Some(e) = &o.error {
                println!("      error: {e}");
            }
            for r in &o.missing {
                println!("      - {r}");
            }
            for r in &o.unexpected {
                println!("      + {r}");
            }
        }
        for r in &o.rejected {
            println!("      rejected: {r}");
        }
    }
    println!("{} of {} samples match", outcomes.len() - failed, outcomes.len());
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn batch(command: BatchCommand, warehouse: &StoreLocation, as_org: Option<String>) -> Result<ExitCode, ExitCode> {
    use billflow::batches::lifecycle::{Action, Status};
    use billflow::batches::review::Reviewer;
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    };
    let reviewer = Reviewer::open(warehouse.clone(), as_org).map_err(|e| fail(&e))?;
    let (action, step) = match command {
        BatchCommand::List { filter, status, format } => {
            let status = match status.as_deref().map(|s| (s, Status::parse(s))) {
                Some((_, Some(s))) => Some(s),
                Some((text, None)) => {
                    let names: Vec<&str> = billflow::batches::lifecycle::ALL_STATUSES
                        .iter()
                        .map(|s| s.name())
                        .collect();
                    eprintln!(
                        "error: --status: `{text}` is not a status (one of {})",
                        names.join(", ")
                    );
                    return Err(ExitCode::from(2));
                }
                None => None,
            };
            let filter = filter.filter(status);
            let entries = reviewer.list(&filter).await.map_err(|e| fail(&e))?;
            let text = match format {
                ListFormat::Table => cli::batch_table(&entries),
                ListFormat::Json => cli::batch_json_lines(&entries),
                ListFormat::Csv => cli::batch_csv(&entries),
            };
            print!("{text}");
            return Ok(ExitCode::SUCCESS);
        }
        BatchCommand::Show { id } => {
            let (entry, history) = reviewer.history(&id).await.map_err(|e| fail(&e))?;
            print!("{}", cli::batch_details(&entry, &history));
            return Ok(ExitCode::SUCCESS);
        }
        BatchCommand::Diff { a, b, key } => {
            let (a, b, d) = reviewer.diff(&a, &b, &key).await.map_err(|e| fail(&e))?;
            print!("{}", cli::batch_diff(&a, &b, &d));
            return Ok(ExitCode::SUCCESS);
        }
        BatchCommand::History { id } => {
            let (_, history) = reviewer.history(&id).await.map_err(|e| fail(&e))?;
            print!("{}", cli::batch_history(&history));
            return Ok(ExitCode::SUCCESS);
        }
        BatchCommand::Accept(step) => (Action::Accept, step),
        BatchCommand::Reject(step) => (Action::Reject, step),
        BatchCommand::Publish(step) => (Action::Publish, step),
        BatchCommand::Void(step) => (Action::Void, step),
        BatchCommand::Hold(step) => (Action::Hold, step),
        BatchCommand::Release(step) => (Action::Release, step),
    };
    let said = |event: &billflow::batches::lifecycle::Event| {
        println!(
            "batch {}: {} -> {} ({} by {})",
            event.batch,
            event.from.map_or("-", |s| s.name()),
            event.to.name(),
            event.action.name(),
            event.actor
        )
    };
    let note = step.note.as_deref();
    if let Some(id) = &step.id {
        let event = reviewer.act(id, action, note).await.map_err(|e| fail(&e))?;
        said(&event);
        return Ok(ExitCode::SUCCESS);
    }
    let filter = step.filter.filter(None);
    if filter.tier.is_none() && filter.organization.is_none() && filter.stream.is_none() && filter.period.is_none() {
        eprintln!(
            "error: name a batch, or filter the batches to {} (--stream, --period, --tier, --organization)",
            action.name()
        );
        return Err(ExitCode::from(2));
    }
    let done = reviewer.act_on_all(&filter, action, note).await.map_err(|e| fail(&e))?;
    let (mut moved, mut refused) = (0, 0);
    for outcome in &done {
        match outcome {
            Ok(event) => {
                moved += 1;
                said(event);
            }
            Err(e) => {
                refused += 1;
                eprintln!("error: {e}");
            }
        }
    }
    println!("{moved} batch(es) moved, {refused} refused");
    if refused > 0 {
        return Err(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn query(
    warehouse: &billflow::query::Warehouse,
    sql: Option<&str>,
    format: billflow::query::output::Format,
    output: Option<&Path>,
) -> Result<ExitCode, ExitCode> {
    let Some(sql) = sql else {
        return match billflow::shell::run(warehouse, format).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("error: the shell: {e}");
                Err(ExitCode::from(2))
            }
        };
    };
    let sql = billflow::shell::statement_sql(sql).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    let answer = warehouse.query(&sql).await.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })?;
    let written = match output {
        Some(path) => std::fs::File::create(path)
            .map_err(|e| billflow::query::QueryError::Internal(format!("{}: {e}", path.display())))
            .and_then(|f| billflow::query::output::write(&answer, format, f)),
        None => billflow::query::output::write(&answer, format, std::io::stdout()),
    };
    written.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    warehouse: billflow::query::Warehouse,
    users: &Path,
    options: &billflow::serve::ServeOptions,
) -> Result<ExitCode, ExitCode> {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    let users = billflow::serve::users::Users::load(users, |var| std::env::var(var).ok()).map_err(|e| fail(&e))?;
    let server = billflow::serve::Server::bind(warehouse, users, options)
        .await
        .map_err(|e| fail(&e))?;
    let address = server.local_addr().map_err(|e| fail(&e))?;
    eprintln!(
        "billflow serve: listening on {address} ({} users, {}); Ctrl-C stops",
        server.users(),
        if server.tls() { "TLS" } else { "no TLS" }
    );
    tokio::select! {
        () = server.run() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = terminated() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM, as a service manager stops a server.
async fn terminated() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        term.recv().await;
        return;
    }
    std::future::pending::<()>().await
}

async fn reconcile(period: &str, warehouse: &StoreLocation, as_org: Option<String>) -> Result<ExitCode, ExitCode> {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    let period = Period::parse(period).map_err(|e| {
        eprintln!("error: --period: {e}");
        ExitCode::from(2)
    })?;
    let reviewer = billflow::batches::review::Reviewer::open(warehouse.clone(), as_org).map_err(|e| fail(&e))?;
    let report = reviewer.reconcile(&period.label).await.map_err(|e| fail(&e))?;
    print!("{}", cli::reconcile_report(&period.label, &report));
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_with_binary_units() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("4X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1G").is_err());
    }
}

//! Batches are immutable and appear atomically: a re-run finds the same batch instead of
//! writing a duplicate, a changed input gives a new batch, and a killed run leaves nothing
//! visible.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use billflow::batches::{Store, StreamLocation};
use billflow::execution::Status;

use crate::common::*;

fn visible_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_reuses_the_same_batches_and_a_changed_input_makes_new_ones() {
    let (tmp, pipeline) = sample_copy();
    let wh = tmp.path().join("wh");
    let first = run(&pipeline, "2026-10", &wh).await;
    assert!(first.ok());
    let second = run(&pipeline, "2026-10", &wh).await;
    for (a, b) in first.streams.iter().zip(&second.streams) {
        assert_eq!(b.status, Status::Reused, "{}", b.stream);
        assert_eq!(a.batch_id, b.batch_id, "{}: same inputs, same batch id", a.stream);
        assert_eq!(a.control_totals, b.control_totals);
        let stream_dir = a.batch_dir.as_ref().unwrap().parent().unwrap();
        assert_eq!(visible_entries(stream_dir).len(), 1, "{}: no duplicate batch", a.stream);
    }

    // A changed exchange rate touches the distributors (and everything below them), not
    // the vendor's streams, whose stages do not read the rates.
    let fx = tmp.path().join("data-samples/cloud-reseller/reference/fx_rates.csv");
    let text = std::fs::read_to_string(&fx)
        .unwrap()
        .replace("0.78912345", "0.78912346");
    std::fs::write(&fx, text).unwrap();
    let third = run(&pipeline, "2026-10", &wh).await;
    assert!(third.ok());
    for (a, c) in first.streams.iter().zip(&third.streams) {
        let stream_dir = c.batch_dir.as_ref().unwrap().parent().unwrap();
        if c.stream.starts_with("nimbus-") {
            assert_eq!(c.status, Status::Reused);
            assert_eq!(a.batch_id, c.batch_id);
            assert_eq!(visible_entries(stream_dir).len(), 1);
            continue;
        }
        assert_eq!(c.status, Status::Written, "{}", c.stream);
        assert_ne!(a.batch_id, c.batch_id, "{}: new inputs, new batch", c.stream);
        assert_eq!(
            visible_entries(stream_dir).len(),
            2,
            "{}: old batch kept, new one added",
            c.stream
        );
    }
    // Editing a query is a new definition: new batches from that stream down.
    let q = tmp.path().join("queries/cloud-reseller/vendor_publish.sql");
    std::fs::write(&q, format!("{}\n-- reviewed\n", std::fs::read_to_string(&q).unwrap())).unwrap();
    let fourth = run(&pipeline, "2026-10", &wh).await;
    for s in &fourth.streams {
        let want = if s.stream.ends_with("price-list") || s.stream == "nimbus-subscription-fees" {
            Status::Reused
        } else {
            Status::Written
        };
        assert_eq!(s.status, want, "{}", s.stream);
    }
    let gbp = |r: &billflow::RunReport| r.stream("britdist-usage").unwrap().control_totals["cost"].clone();
    assert_eq!(
        gbp(&first),
        gbp(&third),
        "a 1e-8 rate change does not move 4-decimal totals here"
    );

    // Another period is another batch, beside the first.
    let sept = run(&pipeline, "2026-09", &wh).await;
    assert!(sept.ok());
    assert_eq!(sept.stream("nimbus-rated-usage").unwrap().rows_out, 3);
}

/// Build a big single-stream pipeline so a run takes long enough to be killed mid-write.
pub fn big_pipeline(dir: &Path, rows: usize) -> std::path::PathBuf {
    let data = dir.join("big.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&data).unwrap());
    writeln!(f, "id,day,amount").unwrap();
    for i in 0..rows {
        writeln!(f, "R{i},2026-10-{:02},{}.{:04}", 1 + i % 28, i % 1000, i % 10000).unwrap();
    }
    drop(f);
    let p = dir.join("pipeline.yaml");
    std::fs::write(
        &p,
        r#"pipeline: big
organizations:
  - { id: v, name: Vendor, tier: vendor }
sources:
  usage:
    url: big.csv
    schema:
      - { name: id, type: string, nullable: false }
      - { name: day, type: date }
      - { name: amount, type: "decimal(18,4)" }
streams:
  - id: totals
    kind: usage
    owner: v
    input: { source: usage }
    period: day
    stages:
      - kind: sql
        query: SELECT id, day, amount * 2 AS amount FROM input ORDER BY id
    columns:
      - { name: id, type: string, nullable: false }
      - { name: day, type: date }
      - { name: amount, type: "decimal(19,4)" }
"#,
    )
    .unwrap();
    p
}

#[tokio::test]
async fn a_killed_run_leaves_no_visible_batch_and_the_rerun_commits_exactly_one() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = big_pipeline(tmp.path(), 1_500_000);
    let wh = tmp.path().join("wh");
    let stream_dir = wh.join("vendor/v/totals");
    let bin = env!("CARGO_BIN_EXE_billflow");
    let mut child = Command::new(bin)
        .args(["run", "--quiet", "--threads", "1", "--period", "2026-10", "--warehouse"])
        .arg(&wh)
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the batch is being written, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut saw_staging = false;
    while Instant::now() < deadline {
        let staging = std::fs::read_dir(&stream_dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with(".staging-"))
            })
            .unwrap_or(false);
        if staging {
            saw_staging = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        saw_staging,
        "the run finished before it could be killed; make the input bigger"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::new(&wh);
    let at = StreamLocation {
        tier: "vendor".into(),
        organization: "v".into(),
        stream: "totals".into(),
    };
    assert!(store.list(&at).await.is_empty(), "no batch may be visible after a kill");
    assert!(
        visible_entries(&stream_dir).is_empty(),
        "only hidden staging remains: {:?}",
        visible_entries(&stream_dir)
    );

    // The re-run commits the batch once and clears the dead run's staging directory.
    let out = Command::new(bin)
        .args(["run", "--quiet", "--period", "2026-10", "--warehouse"])
        .arg(&wh)
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let batches = store.list(&at).await;
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].rows, 1_500_000);
    let all: Vec<String> = std::fs::read_dir(&stream_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(all, vec![batches[0].batch_id.clone()], "stale staging is cleaned up");

    // And once more: nothing new.
    let again = Command::new(bin)
        .args(["run", "--quiet", "--period", "2026-10", "--warehouse"])
        .arg(&wh)
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"));
    assert_eq!(store.list(&at).await.len(), 1);
}

mod review {
    use billflow::batches::lifecycle::{Action, LifecycleError, Log, Status as Lifecycle, Step};
    use billflow::batches::reconcile::Against;
    use billflow::batches::review::{Filter, ReviewError, Reviewer};

    use crate::common::*;

    async fn ids(r: &Reviewer, stream: &str) -> Vec<String> {
        let filter = Filter {
            stream: Some(stream.into()),
            ..Filter::default()
        };
        r.list(&filter)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id().to_string())
            .collect()
    }

    /// Issue 16: a run creates its batches `ready`; review moves each along the allowed
    /// steps only, and every step is an event of an append-only log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_moves_only_along_the_allowed_steps_and_each_step_is_logged() {
        let (tmp, pipeline) = manual_sample_copy();
        let wh = tmp.path().join("wh");
        run(&pipeline, "2026-10", &wh).await;
        let admin = Reviewer::open(&wh, None).unwrap();
        let nimbus = Reviewer::open(&wh, Some("nimbus".into())).unwrap();
        let all = admin.list(&Filter::default()).await.unwrap();
        assert_eq!(all.len(), 3, "the vendor's batches; the tiers below wait for them");
        assert!(all.iter().all(|e| e.status == Lifecycle::Ready && e.version == 1));
        let id = ids(&admin, "nimbus-rated-usage").await.remove(0);
        // An abbreviated id names the batch, as git's do.
        let short = &id[..12];

        // Refused: publishing what is not accepted, with the status and the next steps.
        let e = nimbus.act(short, Action::Publish, None).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("batch {id} is ready: it cannot be published; what it can be now: accept, reject, hold")
        );
        // A reject needs its reason.
        let e = nimbus.act(short, Action::Reject, None).await.unwrap_err();
        assert!(e.to_string().contains("`reject` needs a reason"), "{e}");
        // Hold, release (back to ready), accept, hold, release (back to accepted),
        // publish, void.
        let steps = [
            (Action::Hold, None, Lifecycle::Held),
            (Action::Release, None, Lifecycle::Ready),
            (Action::Accept, Some("totals checked"), Lifecycle::Accepted),
            (Action::Hold, None, Lifecycle::Held),
            (Action::Release, None, Lifecycle::Accepted),
            (Action::Publish, None, Lifecycle::Published),
        ];
        for (action, note, to) in steps {
            let ev = nimbus.act(short, action, note).await.unwrap();
            assert_eq!(ev.to, to, "{action:?}");
            assert_eq!(ev.actor.split(' ').next(), Some("nimbus"));
        }
        let e = nimbus.act(short, Action::Accept, None).await.unwrap_err();
        assert!(e.to_string().ends_with("what it can be now: void"), "{e}");
        let ev = nimbus.act(short, Action::Void, Some("wrong rates")).await.unwrap();
        assert_eq!((ev.from, ev.to), (Some(Lifecycle::Published), Lifecycle::Voided));
        let e = nimbus.act(short, Action::Publish, None).await.unwrap_err();
        assert!(e.to_string().ends_with("nothing more can happen to it"), "{e}");

        // The history: the run's creation, then every step, numbered, each its own file.
        let (_, history) = admin.history(&id).await.unwrap();
        let actions: Vec<&str> = history.iter().map(|e| e.action.name()).collect();
        assert_eq!(
            actions,
            [
                "create", "hold", "release", "accept", "hold", "release", "publish", "void"
            ]
        );
        assert_eq!(history[3].reason.as_deref(), Some("totals checked"));
        assert_eq!(history[7].reason.as_deref(), Some("wrong rates"));
        for (i, e) in history.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
            // The first entry is a file of its own, the others in the batch's folder.
            let entry = match e.seq {
                1 => format!("_log/{id}.00000001.json"),
                n => format!("_log/{id}/{n:08}.json"),
            };
            assert!(wh.join(entry).is_file());
        }

        // A log event that does not parse is named, not skipped.
        std::fs::write(wh.join(format!("_log/{id}/00000009.json")), "{ not json").unwrap();
        let e = admin.history(&id).await.unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "event _log/{id}/00000009.json of the lifecycle log cannot be read"
            )),
            "{e}"
        );
    }

    /// Issue 16: a tier below reads only what was published to it. Run before anything
    /// is published, it says what it waits for (and the run fails); as each tier
    /// publishes, the next run goes one tier further. Acting as an organisation, a batch
    /// it may not see is "not found", like one that does not exist; it changes only its
    /// own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_move_down_the_chain_tier_by_tier_as_each_tier_publishes() {
        use billflow::execution::Status;
        let (tmp, pipeline) = manual_sample_copy();
        let wh = tmp.path().join("wh");
        let admin = Reviewer::open(&wh, None).unwrap();
        let nimbus = Reviewer::open(&wh, Some("nimbus".into())).unwrap();
        let eurodist = Reviewer::open(&wh, Some("eurodist".into())).unwrap();
        let alpha = Reviewer::open(&wh, Some("alpha-it".into())).unwrap();
        let status = |r: &billflow::RunReport, s: &str| r.stream(s).unwrap().status.clone();

        // 1. Nothing published: the vendor's batches are ready, the distributors wait.
        let first = run(&pipeline, "2026-10", &wh).await;
        assert!(!first.ok());
        assert_eq!(status(&first, "nimbus-rated-usage"), Status::Written);
        let wait = first.stream("eurodist-usage").unwrap().error.clone().unwrap();
        assert_eq!(status(&first, "eurodist-usage"), Status::Waiting);
        let usage = ids(&admin, "nimbus-rated-usage").await.remove(0);
        assert_eq!(
            wait.message,
            format!(
                "waits for a batch of stream `nimbus-rated-usage` for 2026-10 to be published: batch {usage} is ready"
            )
        );
        assert!(wait.hint.unwrap().contains(&format!("billflow batch publish {usage}")));
        assert_eq!(status(&first, "alpha-it-invoice-lines"), Status::Skipped);

        // Not published: another organisation's batch is not found, in every command.
        let not_found = format!("no batch `{usage}`");
        for r in [&eurodist, &alpha] {
            assert_eq!(r.find(&usage).await.unwrap_err().to_string(), not_found);
            assert_eq!(
                r.act(&usage, Action::Accept, None).await.unwrap_err().to_string(),
                not_found
            );
            assert_eq!(r.history(&usage).await.unwrap_err().to_string(), not_found);
            let keys = ["record_id".to_string()];
            assert_eq!(r.diff(&usage, &usage, &keys).await.unwrap_err().to_string(), not_found);
            let seen = r.reconcile("2026-10").await.unwrap();
            assert_eq!((seen.published, seen.consumers), (0, 0));
        }
        assert!(eurodist.list(&Filter::default()).await.unwrap().is_empty());

        // 2. Nimbus publishes its usage and price list: visible to the distributors directly
        // below it (not to the resellers), and the next run goes one tier down.
        for stream in ["nimbus-rated-usage", "nimbus-price-list"] {
            let id = ids(&nimbus, stream).await.remove(0);
            nimbus.act(&id, Action::Accept, Some("checked")).await.unwrap();
            nimbus.act(&id, Action::Publish, None).await.unwrap();
        }
        assert_eq!(eurodist.find(&usage).await.unwrap().status, Lifecycle::Published);
        assert!(alpha.find(&usage).await.is_err());
        let e = eurodist.act(&usage, Action::Void, Some("not ours")).await.unwrap_err();
        assert!(matches!(e, ReviewError::NotOwner { .. }), "{e}");
        assert!(e.to_string().contains("only `nimbus` can void it"), "{e}");
        let second = run(&pipeline, "2026-10", &wh).await;
        for s in ["eurodist-usage", "britdist-usage", "eurodist-price-list"] {
            assert_eq!(status(&second, s), Status::Written, "{s}");
        }
        assert_eq!(status(&second, "nimbus-rated-usage"), Status::Reused);
        assert_eq!(status(&second, "alpha-it-invoice-lines"), Status::Waiting);
        let seen: Vec<String> = eurodist
            .list(&Filter::default())
            .await
            .unwrap()
            .iter()
            .map(|e| format!("{} {}", e.manifest.stream, e.status.name()))
            .collect();
        assert_eq!(
            seen,
            [
                "eurodist-price-list ready",
                "eurodist-usage ready",
                "nimbus-price-list published",
                "nimbus-rated-usage published"
            ]
        );

        // 3. EuroDist publishes: its resellers run; BritDist's still waits for BritDist.
        let euro = ids(&eurodist, "eurodist-usage").await.remove(0);
        eurodist.act(&euro, Action::Accept, None).await.unwrap();
        eurodist.act(&euro, Action::Publish, None).await.unwrap();
        let third = run(&pipeline, "2026-10", &wh).await;
        assert_eq!(status(&third, "alpha-it-invoice-lines"), Status::Written);
        assert_eq!(status(&third, "bergen-data-invoice-lines"), Status::Written);
        assert_eq!(status(&third, "clyde-cloud-invoice-lines"), Status::Waiting);
        // The reseller billed exactly what was published to it: the golden totals.
        let lines = third.stream("alpha-it-invoice-lines").unwrap();
        assert_eq!(lines.control_totals["amount"], "391.19");
        assert_eq!(alpha.find(&euro).await.unwrap().status, Lifecycle::Published);
    }

    /// Issue 16: of two processes changing one batch at once, exactly one wins; the other
    /// is told what happened instead.
    #[test]
    fn two_processes_accepting_one_batch_at_once_one_wins() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (tmp, pipeline) = manual_sample_copy();
        let wh = tmp.path().join("wh");
        rt.block_on(run(&pipeline, "2026-10", &wh));
        let admin = Reviewer::open(&wh, None).unwrap();
        let all: Vec<String> = rt
            .block_on(admin.list(&Filter::default()))
            .unwrap()
            .iter()
            .map(|e| e.id().to_string())
            .collect();
        for id in &all {
            let accept = || {
                std::process::Command::new(env!("CARGO_BIN_EXE_billflow"))
                    .args(["batch", "accept", id, "--warehouse", wh.to_str().unwrap()])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            let (a, b) = (accept(), accept());
            let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
            let won = outs.iter().filter(|o| o.status.success()).count();
            assert_eq!(won, 1, "{id}: {outs:?}");
            let lost = outs.iter().find(|o| !o.status.success()).unwrap();
            let why = String::from_utf8_lossy(&lost.stderr);
            assert!(
                why.contains("was changed meanwhile: it is now accepted")
                    || why.contains("is accepted: it cannot be accepted"),
                "{why}"
            );
            let (_, history) = rt.block_on(admin.history(id)).unwrap();
            assert_eq!(history.iter().filter(|e| e.action == Action::Accept).count(), 1);
        }
    }

    /// Issue 16: a step for every batch the filters match (e.g. every reseller's batch of
    /// a period); batches whose status does not allow it are left as they are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_step_applies_to_every_matching_batch_whose_status_allows_it() {
        let (tmp, pipeline) = manual_sample_copy();
        let wh = tmp.path().join("wh");
        run(&pipeline, "2026-10", &wh).await;
        let nimbus = Reviewer::open(&wh, Some("nimbus".into())).unwrap();
        let fees = ids(&nimbus, "nimbus-subscription-fees").await.remove(0);
        nimbus.act(&fees, Action::Hold, None).await.unwrap();
        let vendor = Filter {
            tier: Some("vendor".into()),
            period: Some("2026-10".into()),
            ..Filter::default()
        };
        let accepted = nimbus.act_on_all(&vendor, Action::Accept, None).await.unwrap();
        assert_eq!(accepted.len(), 2, "the held batch is left alone");
        assert!(accepted.iter().all(Result::is_ok));
        let published = nimbus.act_on_all(&vendor, Action::Publish, None).await.unwrap();
        assert_eq!(published.len(), 2);
        let statuses: Vec<(String, Lifecycle)> = nimbus
            .list(&vendor)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.manifest.stream.clone(), e.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("nimbus-price-list".to_string(), Lifecycle::Published),
                ("nimbus-rated-usage".to_string(), Lifecycle::Published),
                ("nimbus-subscription-fees".to_string(), Lifecycle::Held),
            ]
        );
        // Another organisation's batches are not its to publish.
        let eurodist = Reviewer::open(&wh, Some("eurodist".into())).unwrap();
        let void = eurodist.act_on_all(&vendor, Action::Void, Some("no")).await.unwrap();
        assert_eq!(void.len(), 2);
        assert!(void.iter().all(|r| matches!(r, Err(ReviewError::NotOwner { .. }))));
    }

    /// Issue 16: what a correction changes, for a reviewer: rows added, removed and
    /// changed (matched on the key), the columns that changed, the totals side by side.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_diff_of_two_versions_shows_the_rows_and_totals_a_correction_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let yaml = "pipeline: t\norganizations:\n  - { id: v, name: V, tier: vendor }\nsources:\n  usage:\n    url: in.csv\n    schema:\n      - { name: id, type: integer }\n      - { name: sku, type: string }\n      - { name: amount, type: \"decimal(18,2)\" }\nstreams:\n  - id: s\n    kind: usage\n    owner: v\n    input: { source: usage }\n    columns:\n      - { name: id, type: integer }\n      - { name: sku, type: string }\n      - { name: amount, type: \"decimal(18,2)\" }\n";
        std::fs::write(dir.join("p.yaml"), yaml).unwrap();
        std::fs::write(
            dir.join("in.csv"),
            "id,sku,amount\n1,A,1.00\n2,B,2.00\n3,C,3.00\n4,D,4.00\n5,E,5.00\n",
        )
        .unwrap();
        let wh = dir.join("wh");
        run(&dir.join("p.yaml"), "2026-10", &wh).await;
        // The correction: 2 removed, 3's amount and 4's sku changed, 9 added.
        std::fs::write(
            dir.join("in.csv"),
            "id,sku,amount\n1,A,1.00\n3,C,3.50\n4,X,4.00\n5,E,5.00\n9,Z,0.25\n",
        )
        .unwrap();
        run(&dir.join("p.yaml"), "2026-10", &wh).await;
        let admin = Reviewer::open(&wh, None).unwrap();
        let v = ids(&admin, "s").await;
        assert_eq!(v.len(), 2);
        let (a, b, d) = admin.diff(&v[0], &v[1], &["id".to_string()]).await.unwrap();
        assert_eq!((a.version, b.version), (1, 2));
        assert_eq!((d.added, d.removed, d.changed, d.unchanged), (1, 1, 2, 2));
        assert_eq!(
            d.changed_columns
                .iter()
                .map(|(c, n)| (c.as_str(), *n))
                .collect::<Vec<_>>(),
            [("amount", 1), ("sku", 1)]
        );
        // 1+2+3+4+5 = 15.00; 1+3.50+4+5+0.25 = 13.75
        assert_eq!(d.totals["amount"], (Some("15.00".into()), Some("13.75".into())));
        let e = admin.diff(&v[0], &v[1], &["nope".to_string()]).await.unwrap_err();
        assert!(e.to_string().starts_with("`nope` is not a column of"), "{e}");
    }

    /// Of two writers that read the same history, the second to append is refused with
    /// what the first did (the create-if-absent put decides, not timing).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_to_a_history_that_moved_on_is_a_conflict() {
        let (tmp, pipeline) = manual_sample_copy();
        let wh = tmp.path().join("wh");
        run(&pipeline, "2026-10", &wh).await;
        let admin = Reviewer::open(&wh, None).unwrap();
        let id = ids(&admin, "nimbus-price-list").await.remove(0);
        let (one, two) = (Log::local(&wh).unwrap(), Log::local(&wh).unwrap());
        let read_by_two = two.history(&id).await.unwrap();
        one.append(&id, Action::Accept, "first", None, None).await.unwrap();
        let e = two
            .append_after(&read_by_two, &id, &[Step::new(Action::Hold, "second")])
            .await
            .unwrap_err();
        assert!(matches!(e, LifecycleError::Conflict { .. }), "{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "batch {id} was changed meanwhile: it is now accepted (accept by first at "
            )),
            "{e}"
        );
        let history = one.history(&id).await.unwrap();
        assert_eq!(history.len(), 2, "the loser wrote nothing");
    }

    /// Issue 16: a step killed at any moment (kill -9) leaves the log whole: the step
    /// happened or it did not, and the next step goes on from there.
    #[test]
    fn a_step_killed_at_any_moment_leaves_the_log_whole() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (tmp, pipeline) = manual_sample_copy();
        let wh = tmp.path().join("wh");
        rt.block_on(run(&pipeline, "2026-10", &wh));
        let admin = Reviewer::open(&wh, None).unwrap();
        let id = rt.block_on(ids(&admin, "nimbus-price-list")).remove(0);
        let mut rng = billflow::generate::Rng::new(20261203, 7);
        for trial in 0..24 {
            let before = rt.block_on(admin.find(&id)).unwrap().status;
            let step = if before == Lifecycle::Held { "release" } else { "hold" };
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_billflow"))
                .args(["batch", step, &id, "--warehouse", wh.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_micros(rng.below(30_000)));
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            let (_, history) = rt
                .block_on(admin.history(&id))
                .unwrap_or_else(|e| panic!("trial {trial}: the log is not whole: {e}"));
            let after = history.last().map(|e| e.to).unwrap_or(Lifecycle::Ready);
            let expected_after = if before == Lifecycle::Held {
                Lifecycle::Ready
            } else {
                Lifecycle::Held
            };
            assert!(
                after == before || after == expected_after,
                "trial {trial}: {before:?} -> {after:?}"
            );
            for (i, e) in history.iter().enumerate() {
                assert_eq!(e.seq, i as u64 + 1, "trial {trial}: numbered without a gap");
            }
        }
    }

    /// Issue 16: a re-run with changed inputs is a new version that supersedes the old
    /// one; nothing is overwritten.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rerun_with_changed_inputs_supersedes_the_previous_version() {
        let (tmp, pipeline) = sample_copy();
        let wh = tmp.path().join("wh");
        assert!(run(&pipeline, "2026-10", &wh).await.ok());
        let admin = Reviewer::open(&wh, None).unwrap();
        let first = ids(&admin, "britdist-usage").await.remove(0);
        // `review: auto` (the sample's) published it at once.
        assert_eq!(admin.find(&first).await.unwrap().status, Lifecycle::Published);
        let fx = tmp.path().join("data-samples/cloud-reseller/reference/fx_rates.csv");
        let text = std::fs::read_to_string(&fx)
            .unwrap()
            .replace("0.78912345", "0.78912346");
        std::fs::write(&fx, text).unwrap();
        assert!(run(&pipeline, "2026-10", &wh).await.ok());
        let versions = admin
            .list(&Filter {
                stream: Some("britdist-usage".into()),
                ..Filter::default()
            })
            .await
            .unwrap();
        let seen: Vec<(usize, Lifecycle)> = versions.iter().map(|e| (e.version, e.status)).collect();
        assert_eq!(seen, [(1, Lifecycle::Superseded), (2, Lifecycle::Published)]);
        assert_eq!(versions[0].id(), first);
        let (_, history) = admin.history(&first).await.unwrap();
        let last = history.last().unwrap();
        assert_eq!(last.action, Action::Supersede);
        assert_eq!(last.by.as_deref(), Some(versions[1].id()));
        assert!(
            std::path::Path::new(&versions[0].dir()).join("batch.json").is_file(),
            "the old version stays"
        );
        // A superseded batch cannot be published any more.
        let e = admin.act(&first, Action::Publish, None).await.unwrap_err();
        assert!(
            matches!(e, ReviewError::Lifecycle(LifecycleError::Refused { .. })),
            "{e}"
        );
        // The same inputs again: the same batch, no new event (created, accepted and
        // published by the auto review).
        assert!(run(&pipeline, "2026-10", &wh).await.ok());
        let log = Log::local(&wh).unwrap();
        let again: Vec<&str> = log
            .history(versions[1].id())
            .await
            .unwrap()
            .iter()
            .map(|e| e.action.name())
            .collect();
        assert_eq!(again, ["create", "accept", "publish"]);

        // A correction flows down: the vendor voids its usage batch; what the tier below
        // built from it is stale until a run builds it again from what is published.
        let usage = ids(&admin, "nimbus-rated-usage").await.remove(0);
        let stale = |stream: &'static str| {
            let admin = &admin;
            async move {
                let filter = Filter {
                    stream: Some(stream.into()),
                    ..Filter::default()
                };
                admin
                    .list(&filter)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.stale)
                    .collect::<Vec<bool>>()
            }
        };
        assert_eq!(stale("eurodist-usage").await, [false, false]);
        admin.act(&usage, Action::Void, Some("wrong usage file")).await.unwrap();
        assert_eq!(stale("eurodist-usage").await, [true, true]);
        assert_eq!(stale("nimbus-rated-usage").await, [false], "voided, not stale");
    }

    /// Issue 16: `reconcile` on the sample run in one go finds nothing: each published
    /// batch's files add up to its totals and each batch below read exactly what was
    /// published. A hand-edited data file, a deleted one, and a batch below built from a
    /// version since superseded are each named, and the exit status is 1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconcile_is_clean_on_the_sample_and_names_what_does_not_add_up() {
        let (tmp, pipeline) = sample_copy();
        let wh = tmp.path().join("wh");
        assert!(run(&pipeline, "2026-10", &wh).await.ok());
        let reconcile = |as_org: Option<&str>| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_billflow"));
            cmd.args(["reconcile", "--period", "2026-10", "--warehouse"]).arg(&wh);
            if let Some(org) = as_org {
                cmd.args(["--as", org]);
            }
            let out = cmd.output().unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let admin = Reviewer::open(&wh, None).unwrap();
        let report = admin.reconcile("2026-10").await.unwrap();
        assert!(report.clean(), "{:?}", report.findings);
        // Every stream's batch is published (the sample's policies are `auto`); all but
        // the vendor's three were built from one.
        let all = admin.list(&Filter::default()).await.unwrap();
        assert_eq!(report.published, all.len());
        assert_eq!(report.consumers, all.len() - 3);
        let (code, out) = reconcile(None);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("everything reconciles"), "{out}");

        // EuroDist's batch loses a row to a hand edit; BritDist's loses its file.
        let euro = admin.find(&ids(&admin, "eurodist-usage").await[0]).await.unwrap();
        let brit = admin.find(&ids(&admin, "britdist-usage").await[0]).await.unwrap();
        drop_first_row(&euro.data_files()[0]);
        std::fs::remove_file(&brit.data_files()[0]).unwrap();
        let report = admin.reconcile("2026-10").await.unwrap();
        let found: Vec<(String, String)> = report
            .findings
            .iter()
            .map(|f| {
                let what = match &f.against {
                    Against::DataFiles { problem: Some(p) } => p.clone(),
                    _ => f
                        .differences
                        .iter()
                        .map(|d| format!("{} {} -> {}", d.what, d.published, d.found))
                        .collect::<Vec<_>>()
                        .join("; "),
                };
                (f.batch.manifest.stream.clone(), what)
            })
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].0, "britdist-usage");
        assert!(
            found[0].1.starts_with("data file ") && found[0].1.ends_with(" is missing"),
            "{found:?}"
        );
        assert_eq!(found[1].0, "eurodist-usage");
        let rows = euro.manifest.rows;
        assert!(
            found[1].1.starts_with(&format!("rows {rows} -> {}", rows - 1)),
            "{found:?}"
        );
        let (code, out) = reconcile(None);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(euro.id()) && out.contains(brit.id()), "{out}");
        // An organisation reconciles what it sees: Alpha IT sees EuroDist's batch, Clyde
        // Cloud (below BritDist) sees neither of EuroDist's.
        let (code, out) = reconcile(Some("alpha-it"));
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(euro.id()) && !out.contains(brit.id()), "{out}");
        let clyde = Reviewer::open(&wh, Some("clyde-cloud".into())).unwrap();
        let seen = clyde.reconcile("2026-10").await.unwrap();
        assert!(seen.findings.iter().all(|f| f.batch.id() != euro.id()));
    }

    /// Issue 16: `run --until-tier` runs the chain down to a tier; a correction published
    /// above leaves what was built from the old version stale, and `reconcile` says so
    /// until the next run builds it again.
    #[test]
    fn until_tier_stops_the_chain_and_reconcile_names_a_stale_batch_below() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (tmp, pipeline) = sample_copy();
        let wh = tmp.path().join("wh");
        let billflow = |args: &[&str]| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_billflow"))
                .args(args)
                .arg("--warehouse")
                .arg(&wh)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            (out.status.code(), text)
        };
        let p = pipeline.to_str().unwrap();
        let (code, out) = billflow(&["run", "--quiet", "--period", "2026-10", "--until-tier", "resseller", p]);
        assert_eq!(code, Some(2), "{out}");
        assert!(
            out.contains("--until-tier") && out.contains("did you mean `reseller`"),
            "{out}"
        );
        let (code, out) = billflow(&[
            "run",
            "--quiet",
            "--period",
            "2026-10",
            "--until-tier",
            "distributor",
            p,
        ]);
        assert_eq!(code, Some(0), "{out}");
        assert!(
            out.contains("eurodist-usage") && !out.contains("alpha-it-invoice-lines"),
            "{out}"
        );
        let admin = Reviewer::open(&wh, None).unwrap();
        let tiers: std::collections::BTreeSet<String> = rt
            .block_on(admin.list(&Filter::default()))
            .unwrap()
            .iter()
            .map(|e| e.manifest.tier.clone())
            .collect();
        assert_eq!(tiers.into_iter().collect::<Vec<_>>(), ["distributor", "vendor"]);
        let (code, out) = billflow(&["run", "--quiet", "--period", "2026-10", p]);
        assert_eq!(code, Some(0), "{out}");

        // A correction of BritDist's rates, run down to the distributors only.
        let fx = tmp.path().join("data-samples/cloud-reseller/reference/fx_rates.csv");
        let text = std::fs::read_to_string(&fx)
            .unwrap()
            .replace("0.78912345", "0.78912346");
        std::fs::write(&fx, text).unwrap();
        let (code, out) = billflow(&[
            "run",
            "--quiet",
            "--period",
            "2026-10",
            "--until-tier",
            "distributor",
            p,
        ]);
        assert_eq!(code, Some(0), "{out}");
        let clyde = rt.block_on(ids(&admin, "clyde-cloud-invoice-lines")).remove(0);
        assert!(rt.block_on(admin.find(&clyde)).unwrap().stale);
        let report = rt.block_on(admin.reconcile("2026-10")).unwrap();
        let stale: Vec<String> = report
            .findings
            .iter()
            .filter_map(|f| match &f.against {
                Against::Stale { consumer, read } => Some(format!("{} {read}", consumer.manifest.stream)),
                _ => None,
            })
            .collect();
        // The rates feed both distributors: every reseller batch built from their first
        // versions is stale, and reconcile names each (and only those).
        let mut expected: Vec<String> = rt
            .block_on(admin.list(&Filter::default()))
            .unwrap()
            .iter()
            .filter(|e| e.stale)
            .map(|e| e.manifest.stream.clone())
            .collect();
        expected.sort();
        let mut named: Vec<String> = stale.iter().map(|s| s.split(' ').next().unwrap().to_string()).collect();
        named.sort();
        assert_eq!(named, expected, "{:?}", report.findings);
        assert!(named.contains(&"clyde-cloud-invoice-lines".to_string()), "{named:?}");
        assert!(stale.iter().all(|s| s.ends_with("(superseded)")), "{stale:?}");
        let (code, out) = billflow(&["reconcile", "--period", "2026-10"]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("stale") && out.contains(&clyde), "{out}");
        // The next run builds it again from what is published: clean.
        let (code, out) = billflow(&["run", "--quiet", "--period", "2026-10", p]);
        assert_eq!(code, Some(0), "{out}");
        let (code, out) = billflow(&["reconcile", "--period", "2026-10"]);
        assert_eq!(code, Some(0), "{out}");
    }
}

/// Three runs of the sample at once into one local warehouse: all succeed (the second to
/// commit a batch finds it there; the second to review it finds it reviewed, or being
/// published, which failed the run before), and the warehouse holds what one run gives.
#[test]
fn runs_at_once_into_one_warehouse_all_succeed_and_commit_each_batch_once() {
    let (tmp, pipeline) = sample_copy();
    let shared = tmp.path().join("shared");
    let alone = tmp.path().join("alone");
    let run = |wh: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_billflow"))
            .args(["run", "--quiet", "--period", "2026-10", "--warehouse"])
            .arg(wh)
            .arg(&pipeline)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let at_once = [run(&shared), run(&shared), run(&shared)];
    for child in at_once.into_iter().chain([run(&alone)]) {
        ok(child.wait_with_output().unwrap());
    }
    let catalog = |wh: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_billflow"))
            .args(["query", "--format", "csv", "--warehouse"])
            .arg(wh)
            .arg("SELECT id, stream, status, version, rows FROM billflow.batches ORDER BY id")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let once = catalog(&alone);
    assert!(once.contains("published"), "{once}");
    assert_eq!(catalog(&shared), once);
}

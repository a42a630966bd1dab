//! Cross-reference checks on a parsed pipeline: names that must exist, organisations that
//! must form a vendor-rooted tree, streams that must flow down it without cycles, files
//! that must be there. Runs before any data is read.

use std::collections::HashMap;

use super::diagnostics::{Diagnostics, did_you_mean};
use super::model::*;
use super::reader::Text;

pub const KNOWN_TIERS: &[(&str, usize)] = &[("vendor", 1), ("distributor", 2), ("reseller", 3)];

pub fn validate(p: &mut Pipeline, diags: &mut Diagnostics) {
    check_unique(p, diags);
    check_organizations(p, diags);
    check_tables(p, diags);
    check_streams(p, diags);
}

fn check_unique(p: &Pipeline, diags: &mut Diagnostics) {
    let mut seen: HashMap<(&str, &str), &super::diagnostics::Location> = HashMap::new();
    let all = p
        .organizations
        .iter()
        .map(|o| ("organisation", &o.id))
        .chain(p.streams.iter().map(|s| ("stream", &s.id)))
        .chain(p.sources.iter().map(|s| ("table", &s.name)))
        .chain(p.references.iter().map(|s| ("table", &s.name)));
    for (what, id) in all {
        if let Some(first) = seen.insert((what, id.value.as_str()), &id.location) {
            // Organisations may come from files: name the first one's file when it differs.
            let at = if first.file.path == id.location.file.path {
                format!("line {}", first.line)
            } else {
                first.to_string()
            };
            diags
                .error(
                    format!("{what} `{}` is declared twice", id.value),
                    Some(id.location.clone()),
                )
                .hint = Some(format!("the first declaration is at {at}; ids must be unique"));
        }
    }
    for r in &p.references {
        if r.name.value == "input" {
            diags
                .error("a reference cannot be named `input`", Some(r.name.location.clone()))
                .hint = Some("`input` is the name of the stream's current table in sql stages".into());
        }
    }
}

fn check_organizations(p: &mut Pipeline, diags: &mut Diagnostics) {
    let ids: Vec<String> = p.organizations.iter().map(|o| o.id.value.clone()).collect();
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        position.entry(id.as_str()).or_insert(i);
    }
    // Level = number of organisations from the vendor down to this one; a walk up the
    // `upstream` links with a cycle guard. Each problem is reported by the organisation
    // that has it, once.
    let levels: Vec<Option<usize>> = (0..p.organizations.len())
        .map(|i| {
            let mut path = vec![i];
            let mut cur = i;
            loop {
                let o = &p.organizations[cur];
                let Some(up) = &o.upstream else { return Some(path.len()) };
                match position.get(up.value.as_str()).copied() {
                    Some(j) if path.contains(&j) => {
                        if cur == i || j == i {
                            let names: Vec<&str> = path.iter().map(|k| ids[*k].as_str()).collect();
                            diags
                                .error(
                                    format!("organisations form a cycle: {}", names.join(" -> ")),
                                    Some(up.location.clone()),
                                )
                                .hint = Some("each organisation's `upstream` must lead up to one vendor".into());
                        }
                        return None;
                    }
                    Some(j) => {
                        path.push(j);
                        cur = j;
                    }
                    None => {
                        if cur == i {
                            let hint = did_you_mean(&up.value, ids.iter().map(String::as_str));
                            let d = diags.error(
                                format!("organisation `{}` has unknown upstream `{}`", o.id.value, up.value),
                                Some(up.location.clone()),
                            );
                            d.expected = Some("the id of an organisation in this file".into());
                            d.hint = hint;
                        }
                        return None;
                    }
                }
            }
        })
        .collect();
    for (o, level) in p.organizations.iter_mut().zip(levels) {
        let Some(level) = level else { continue };
        o.level = level;
        let tier = o.tier.value.as_str();
        match KNOWN_TIERS.iter().find(|(t, _)| *t == tier) {
            Some((_, expected)) if *expected != level => {
                let d = diags.error(
                    format!(
                        "organisation `{}` is a {tier} but sits at tier level {level} of the chain",
                        o.id.value
                    ),
                    Some(o.tier.location.clone()),
                );
                d.expected = Some(format!(
                    "a {tier} at level {expected} ({})",
                    match expected {
                        1 => "no upstream".to_string(),
                        2 => "upstream: a vendor".to_string(),
                        _ => "upstream: a distributor".to_string(),
                    }
                ));
                d.hint = Some(match level {
                    1 => "add `upstream:` naming the organisation it buys from".into(),
                    _ => format!("check `upstream` or use the tier `{}`", tier_name(level)),
                });
            }
            Some(_) => {}
            None if level <= 3 => {
                let hint = did_you_mean(tier, KNOWN_TIERS.iter().map(|(t, _)| *t));
                let d = diags.error(
                    format!("unknown tier `{tier}` for organisation `{}`", o.id.value),
                    Some(o.tier.location.clone()),
                );
                d.expected = Some(format!("`{}` at this level of the chain", tier_name(level)));
                d.hint = hint.or(Some("custom tier names are for levels below reseller".into()));
            }
            None => {} // a deeper level, named by the user (e.g. `sub-reseller`)
        }
    }
}

pub fn tier_name(level: usize) -> String {
    KNOWN_TIERS
        .iter()
        .find(|(_, l)| *l == level)
        .map(|(t, _)| t.to_string())
        .unwrap_or_else(|| format!("tier-{level}"))
}

fn check_tables(p: &Pipeline, diags: &mut Diagnostics) {
    for t in p.sources.iter().chain(&p.references) {
        if t.url.value.contains("://") {
            check_object_url(p, t, diags);
            continue;
        }
        let full = p.resolve(&t.url.value);
        let pattern = full.to_string_lossy().to_string();
        let matches =
            glob::glob(&pattern).map(|g| g.filter_map(Result::ok).filter(|m| m.is_file()).collect::<Vec<_>>());
        if let (Some(sandbox), Ok(files)) = (&p.sandbox, &matches)
            && let Some(e) = files
                .iter()
                .find_map(|f| sandbox.admit(f, &f.display().to_string()).err())
        {
            diags
                .error(
                    format!("{e} (a file `{}` names)", t.url.value),
                    Some(t.url.location.clone()),
                )
                .hint =
                Some("with --sandbox DIR, every source, reference, query and manual file lies under DIR".into());
            continue;
        }
        match matches.as_ref().map(Vec::len) {
            Ok(0) => {
                diags
                    .error(
                        format!("no file matches `{}`", t.url.value),
                        Some(t.url.location.clone()),
                    )
                    .hint = Some(format!(
                    "paths are relative to the pipeline file's directory ({})",
                    p.dir.display()
                ));
            }
            Ok(_) => {}
            Err(e) => {
                diags.error(
                    format!("`{}` is not a valid glob: {}", t.url.value, e.msg),
                    Some(t.url.location.clone()),
                );
            }
        }
    }
}

/// A table in an object store: `s3://bucket/key` (or gs://, az://) or a glob over keys. Whether objects
/// match is known only by asking the store, which a run does (validate reads no data).
fn check_object_url(p: &Pipeline, t: &TableDef, diags: &mut Diagnostics) {
    let url = &t.url.value;
    let at = Some(t.url.location.clone());
    let expected = "a local file path or glob, relative to the pipeline file, or s3://, gs:// or az://bucket/key \
                    (a glob over keys too)";
    if p.sandbox.is_some() {
        diags.error(format!("`{url}` is not a file under the sandbox"), at).hint =
            Some("with --sandbox DIR, every source, reference, query and manual file lies under DIR".into());
        return;
    }
    let (scheme, rest) = url.split_once("://").unwrap_or_default();
    let problem = if !crate::definition::model::STORE_SCHEMES.contains(&scheme) {
        Some(format!("`{url}`: unknown scheme `{scheme}://`"))
    } else {
        match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => glob::Pattern::new(key)
                .err()
                .map(|e| format!("`{url}` is not a valid glob: {}", e.msg)),
            _ => Some(format!("`{url}` names no object: expected {scheme}://bucket/key")),
        }
    };
    if let Some(message) = problem {
        diags.error(message, at).expected = Some(expected.into());
    }
}

fn check_streams(p: &Pipeline, diags: &mut Diagnostics) {
    let org_ids: Vec<&str> = p.organizations.iter().map(|o| o.id.value.as_str()).collect();
    let stream_ids: Vec<&str> = p.streams.iter().map(|s| s.id.value.as_str()).collect();
    let source_names: Vec<&str> = p.sources.iter().map(|s| s.name.value.as_str()).collect();
    for s in &p.streams {
        let owner = p.organization(&s.owner.value);
        if let Some(each) = &s.for_each {
            check_for_each(p, s, each, diags);
        } else if owner.is_none() {
            let d = diags.error(
                format!("stream `{}` has unknown owner `{}`", s.id.value, s.owner.value),
                Some(s.owner.location.clone()),
            );
            d.expected = Some("the id of an organisation in this file".into());
            d.hint = did_you_mean(&s.owner.value, org_ids.iter().copied());
        }
        match &s.input {
            InputRef::Source(name) => {
                if p.source(&name.value).is_none() {
                    let d = diags.error(
                        format!("stream `{}` reads unknown source `{}`", s.id.value, name.value),
                        Some(name.location.clone()),
                    );
                    d.expected = Some("a name declared under `sources:`".into());
                    d.hint = did_you_mean(&name.value, source_names.iter().copied()).or_else(|| {
                        p.stream(&name.value).map(|_| {
                            format!(
                                "`{}` is a stream: write `input: {{ stream: {} }}`",
                                name.value, name.value
                            )
                        })
                    });
                }
            }
            InputRef::Stream(name) => match p.stream(&name.value) {
                None => {
                    let d = diags.error(
                        format!("stream `{}` reads unknown stream `{}`", s.id.value, name.value),
                        Some(name.location.clone()),
                    );
                    d.expected = Some("the id of another stream in this file".into());
                    d.hint = did_you_mean(&name.value, stream_ids.iter().copied()).or_else(|| {
                        p.source(&name.value).map(|_| {
                            format!(
                                "`{}` is a source: write `input: {{ source: {} }}`",
                                name.value, name.value
                            )
                        })
                    });
                }
                Some(up) if s.for_each.is_some() || up.for_each.is_some() => {
                    check_tier_order(p, s, up, name, diags);
                }
                Some(up) => {
                    if let (Some(owner), Some(up_owner)) = (owner, p.organization(&up.owner.value))
                        && !is_downstream_or_same(p, owner, up_owner)
                    {
                        let d = diags.error(
                            format!(
                                "stream `{}` (owner `{}`) cannot read stream `{}` of `{}`: `{}` is not downstream of `{}`",
                                s.id.value, owner.id.value, up.id.value, up_owner.id.value, owner.id.value, up_owner.id.value
                            ),
                            Some(name.location.clone()),
                        );
                        d.expected = Some(format!(
                            "a stream owned by `{}` or by one of its upstream organisations",
                            owner.id.value
                        ));
                        d.hint = Some("data flows down the chain: vendor -> distributor -> reseller".into());
                    }
                }
            },
        }
        if let Some(sample) = &s.sample {
            for t in [&sample.input, &sample.expected] {
                if let Err(e) = p.confine(&t.value) {
                    diags.error(e.to_string(), Some(t.location.clone())).hint =
                        Some("with --sandbox DIR, every file the pipeline names lies under DIR".into());
                } else if !p.resolve(&t.value).is_file() {
                    diags
                        .error(
                            format!("sample file `{}` does not exist", t.value),
                            Some(t.location.clone()),
                        )
                        .hint = Some(format!(
                        "paths are relative to the pipeline file's directory ({})",
                        p.dir.display()
                    ));
                }
            }
        }
        for o in &s.order_by {
            if !s.columns.iter().any(|c| c.output && c.name.value == o.value) {
                let published: Vec<&str> = s.output_columns().map(|c| c.name.value.as_str()).collect();
                let d = diags.error(
                    format!(
                        "stream `{}` orders by `{}`, which it does not publish",
                        s.id.value, o.value
                    ),
                    Some(o.location.clone()),
                );
                d.expected = Some(format!("one of the published columns: {}", published.join(", ")));
                d.hint = did_you_mean(&o.value, published.iter().copied());
            }
        }
        if !s.columns.iter().any(|c| c.output) {
            diags
                .error(
                    format!("stream `{}` publishes no column", s.id.value),
                    Some(s.id.location.clone()),
                )
                .hint = Some("at least one column needs `output: true` (the default)".into());
        }
    }
    check_stream_cycles(p, diags);
}

/// The level of a stream's owner, or of the tier of a `for_each` stream.
fn stream_level(p: &Pipeline, s: &StreamDef) -> Option<usize> {
    match &s.for_each {
        Some(e) => p.organizations_of(&e.tier.value).next().map(|o| o.level),
        None => p.organization(&s.owner.value).map(|o| o.level),
    }
}

/// A `for_each` stream on either side of an input: data may only flow down (or stay on)
/// the chain's levels.
fn check_tier_order(p: &Pipeline, s: &StreamDef, up: &StreamDef, name: &Text, diags: &mut Diagnostics) {
    let (Some(level), Some(up_level)) = (stream_level(p, s), stream_level(p, up)) else {
        return; // an unknown owner or tier is reported on its own
    };
    if up_level > level {
        let d = diags.error(
            format!(
                "stream `{}` ({}) cannot read stream `{}` ({}): data flows down the chain",
                s.id.value, s.owner.value, up.id.value, up.owner.value
            ),
            Some(name.location.clone()),
        );
        d.expected = Some("a stream of the same tier or of a tier above".into());
        d.hint = Some("data flows down the chain: vendor -> distributor -> reseller".into());
    }
}

fn check_for_each(p: &Pipeline, s: &StreamDef, each: &ForEach, diags: &mut Diagnostics) {
    if p.organizations_of(&each.tier.value).next().is_none() {
        let mut tiers: Vec<&str> = p.organizations.iter().map(|o| o.tier.value.as_str()).collect();
        tiers.dedup();
        let d = diags.error(
            format!(
                "stream `{}` runs for each organisation of tier `{}`, but no organisation has that tier",
                s.id.value, each.tier.value
            ),
            Some(each.tier.location.clone()),
        );
        d.expected = Some(format!(
            "one of the tiers declared under `organizations:` ({})",
            tiers.join(", ")
        ));
        d.hint = did_you_mean(&each.tier.value, tiers.iter().copied());
    }
    match s.columns.iter().find(|c| c.name.value == each.column.value) {
        None => {
            let d = diags.error(
                format!(
                    "stream `{}` splits its rows by column `{}`, which is not one of its columns",
                    s.id.value, each.column.value
                ),
                Some(each.column.location.clone()),
            );
            d.expected = Some("a declared `string` column that holds each row's organisation id".into());
            d.hint = did_you_mean(&each.column.value, s.columns.iter().map(|c| c.name.value.as_str()));
        }
        Some(c) if c.ty != ColumnType::String || !c.output => {
            let d = diags.error(
                format!(
                    "column `{}` of stream `{}` must be a published `string` column to split rows by organisation",
                    each.column.value, s.id.value
                ),
                Some(c.name.location.clone()),
            );
            d.expected = Some("`type: string` and `output: true`".into());
        }
        Some(_) => {}
    }
}

/// True if `org` is `up` or below it in the chain.
fn is_downstream_or_same(p: &Pipeline, org: &Organization, up: &Organization) -> bool {
    p.chain(&org.id.value).iter().any(|o| o.id.value == up.id.value)
}

fn check_stream_cycles(p: &Pipeline, diags: &mut Diagnostics) {
    for s in &p.streams {
        let mut path = vec![s.id.value.as_str()];
        let mut cur = s;
        while let InputRef::Stream(up) = &cur.input {
            if up.value == s.id.value {
                path.push(&up.value);
                let d = diags.error(
                    format!("streams form a cycle: {}", path.join(" -> ")),
                    Some(s.id.location.clone()),
                );
                d.hint = Some("a stream cannot read its own output, directly or through others".into());
                break;
            }
            match p.stream(&up.value) {
                Some(next) if !path.contains(&next.id.value.as_str()) => {
                    path.push(&next.id.value);
                    cur = next;
                }
                _ => break,
            }
        }
    }
}

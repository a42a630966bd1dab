//! `billflow explain`: the DAG as an indented tree, a Mermaid flowchart or a Graphviz graph.

use std::fmt::Write;

use super::{Plan, PlannedStream};
use crate::definition::{InputRef, TableDef};

fn table_line(t: &TableDef) -> String {
    format!("{} ({} {})", t.name.value, t.format.name(), t.url.value)
}

/// Organisations in chain order with their streams, each stream with its stages.
pub fn tree(plan: &Plan) -> String {
    let mut out = String::new();
    header(plan, &mut out);
    let _ = writeln!(
        out,
        "streams (in run order; streams at the same depth can run in parallel):"
    );
    walk(plan, None, 0, &mut out);
    for_each_streams(plan, &mut out);
    out
}

/// The pipeline in one line, then its sources and references.
fn header(plan: &Plan, out: &mut String) {
    let p = &plan.pipeline;
    let tiers = p.organizations.iter().map(|o| o.level).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "pipeline {} ({} organisations in {} tiers, {} sources, {} references, {} streams)",
        p.id.value,
        p.organizations.len(),
        tiers,
        p.sources.len(),
        p.references.len(),
        plan.streams.len()
    );
    for (title, tables) in [("sources", &p.sources), ("references", &p.references)] {
        if !tables.is_empty() {
            let _ = writeln!(out, "{title}:");
            for t in tables {
                let _ = writeln!(out, "  {}", table_line(t));
            }
        }
    }
}

/// Whether organisation `id` or one below it owns a stream.
fn subtree_has(plan: &Plan, id: &str, hops: usize) -> bool {
    let p = &plan.pipeline;
    plan.streams.iter().any(|s| plan.def(s).owner.value == id)
        || (hops < p.organizations.len()
            && p.organizations
                .iter()
                .filter(|o| o.upstream.as_ref().is_some_and(|u| u.value == id))
                .any(|o| subtree_has(plan, &o.id.value, hops + 1)))
}

/// The organisation tree from the vendor(s) down, each organisation with its streams;
/// organisations with no stream in their subtree are counted, not listed (a chain may
/// have thousands of resellers).
fn walk(plan: &Plan, parent: Option<&str>, depth: usize, out: &mut String) {
    let p = &plan.pipeline;
    let mut quiet = 0;
    let pad = "  ".repeat(depth + 1);
    for o in &p.organizations {
        if o.upstream.as_ref().map(|u| u.value.as_str()) != parent {
            continue;
        }
        // The vendor always shows; below it, only organisations with streams.
        if parent.is_some() && !subtree_has(plan, &o.id.value, 0) {
            quiet += 1;
            continue;
        }
        let _ = writeln!(out, "{pad}{} {} ({})", o.tier.value, o.id.value, o.name);
        for ps in plan.streams.iter().filter(|s| plan.def(s).owner.value == o.id.value) {
            print_stream(plan, out, &pad, ps);
        }
        walk(plan, Some(&o.id.value), depth + 1, out);
    }
    if quiet > 0 {
        let what = if quiet == 1 { "organisation" } else { "organisations" };
        let _ = writeln!(out, "{pad}(+{quiet} {what} without streams of their own)");
    }
}

/// Streams that run for every organisation of a tier, under the tier.
fn for_each_streams(plan: &Plan, out: &mut String) {
    let mut tiers: Vec<&str> = Vec::new();
    for ps in &plan.streams {
        if let Some(e) = &plan.def(ps).for_each
            && !tiers.contains(&e.tier.value.as_str())
        {
            tiers.push(e.tier.value.as_str());
        }
    }
    for tier in tiers {
        let n = plan.pipeline.organizations_of(tier).count();
        let _ = writeln!(out, "  each {tier} ({n} organisations)");
        for ps in plan
            .streams
            .iter()
            .filter(|s| plan.def(s).for_each.as_ref().is_some_and(|e| e.tier.value == tier))
        {
            print_stream(plan, out, "  ", ps);
        }
    }
}

/// A stream: its input, its stages in order, and where its batch lands.
fn print_stream(plan: &Plan, out: &mut String, pad: &str, ps: &PlannedStream) {
    let s = plan.def(ps);
    let input = match &s.input {
        InputRef::Source(t) => format!("source {}", t.value),
        InputRef::Stream(t) => format!("stream {}", t.value),
    };
    let period = s
        .period
        .as_ref()
        .map(|p| format!(", period column {}", p.value))
        .unwrap_or_default();
    let each = s
        .for_each
        .as_ref()
        .map(|e| format!(", a partition per `{}`", e.column.value))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{pad}  stream {} [{}] <- {input}{period}{each}",
        s.id.value,
        s.kind.name()
    );
    for (i, st) in ps.stages.iter().enumerate() {
        let fused = if st.stage.fuses() { "" } else { "  (materialises)" };
        let tables = st.stage.tables();
        let reads = if tables.is_empty() {
            String::new()
        } else {
            format!("  [reads {}]", tables.join(", "))
        };
        let _ = writeln!(
            out,
            "{pad}    {}. {} - {}{reads}{fused}",
            i + 1,
            st.name,
            st.stage.describe()
        );
    }
    let published: Vec<String> = s
        .output_columns()
        .map(|c| format!("{} {}", c.name.value, c.ty))
        .collect();
    let hidden = s.columns.len() - published.len();
    let at = match &s.for_each {
        Some(_) => format!("{}/_each/{}/<batch>/data/<organisation>.part-*", ps.tier, s.id.value),
        None => format!("{}/{}/{}/<batch>", ps.tier, s.owner.value, s.id.value),
    };
    let hidden = if hidden > 0 {
        format!(" (+{hidden} intermediate)")
    } else {
        String::new()
    };
    let _ = writeln!(out, "{pad}    => {at}: {}{hidden}", published.join(", "));
}

fn node_id(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}_{clean}")
}

pub fn mermaid(plan: &Plan) -> String {
    let p = &plan.pipeline;
    let mut out = String::from("flowchart LR\n");
    for t in &p.sources {
        let _ = writeln!(
            out,
            "    {}[(\"source: {}\")]",
            node_id("src", &t.name.value),
            t.name.value
        );
    }
    for t in &p.references {
        let _ = writeln!(
            out,
            "    {}[(\"reference: {}\")]",
            node_id("ref", &t.name.value),
            t.name.value
        );
    }
    for ps in &plan.streams {
        let s = plan.def(ps);
        let stages: Vec<String> = ps.stages.iter().map(|st| format!("{}: {}", st.kind, st.name)).collect();
        let _ = writeln!(
            out,
            "    {}[\"<b>{}</b><br/>{} {} / {}<br/>{}\"]",
            node_id("s", &s.id.value),
            s.id.value,
            ps.tier,
            s.owner.value,
            s.kind.name(),
            stages.join("<br/>")
        );
        let from = match &s.input {
            InputRef::Source(t) => node_id("src", &t.value),
            InputRef::Stream(t) => node_id("s", &t.value),
        };
        let _ = writeln!(out, "    {from} --> {}", node_id("s", &s.id.value));
        for r in references_of(ps) {
            let _ = writeln!(out, "    {} -.-> {}", node_id("ref", &r), node_id("s", &s.id.value));
        }
    }
    out
}

/// References read by any stage of a stream.
fn references_of(ps: &super::PlannedStream) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for st in &ps.stages {
        for t in st.stage.tables() {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

pub fn dot(plan: &Plan) -> String {
    let p = &plan.pipeline;
    let mut out = format!(
        "digraph \"{}\" {{\n    rankdir=LR;\n    node [shape=box, fontname=\"Helvetica\"];\n",
        p.id.value
    );
    for t in &p.sources {
        let _ = writeln!(
            out,
            "    {} [shape=cylinder, label=\"source: {}\"];",
            node_id("src", &t.name.value),
            t.name.value
        );
    }
    for t in &p.references {
        let _ = writeln!(
            out,
            "    {} [shape=cylinder, label=\"reference: {}\"];",
            node_id("ref", &t.name.value),
            t.name.value
        );
    }
    for ps in &plan.streams {
        let s = plan.def(ps);
        let stages: Vec<String> = ps.stages.iter().map(|st| format!("{}: {}", st.kind, st.name)).collect();
        let _ = writeln!(
            out,
            "    {} [label=\"{}\\n{} {} / {}\\n{}\"];",
            node_id("s", &s.id.value),
            s.id.value,
            ps.tier,
            s.owner.value,
            s.kind.name(),
            stages.join("\\n")
        );
        let from = match &s.input {
            InputRef::Source(t) => node_id("src", &t.value),
            InputRef::Stream(t) => node_id("s", &t.value),
        };
        let _ = writeln!(out, "    {from} -> {};", node_id("s", &s.id.value));
        for r in references_of(ps) {
            let _ = writeln!(
                out,
                "    {} -> {} [style=dashed];",
                node_id("ref", &r),
                node_id("s", &s.id.value)
            );
        }
    }
    out.push_str("}\n");
    out
}

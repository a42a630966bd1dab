//! `billflow explain`: the DAG as an indented tree, a Mermaid flowchart or a Graphviz graph.

use std::fmt::Write;

use super::Plan;
use crate::definition::{InputRef, TableDef};

fn table_line(t: &TableDef) -> String {
    format!("{} ({} {})", t.name.value, t.format.name(), t.url.value)
}

/// Organisations in chain order with their streams, each stream with its stages.
pub fn tree(plan: &Plan) -> String {
    let p = &plan.pipeline;
    let mut out = String::new();
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
    if !p.sources.is_empty() {
        let _ = writeln!(out, "sources:");
        for s in &p.sources {
            let _ = writeln!(out, "  {}", table_line(s));
        }
    }
    if !p.references.is_empty() {
        let _ = writeln!(out, "references:");
        for s in &p.references {
            let _ = writeln!(out, "  {}", table_line(s));
        }
    }
    let _ = writeln!(
        out,
        "streams (in run order; streams at the same depth can run in parallel):"
    );
    // Walk the organisation tree from the vendor(s) down.
    let mut orgs: Vec<(usize, &str)> = Vec::new();
    fn walk<'a>(
        p: &'a crate::definition::Pipeline,
        parent: Option<&str>,
        depth: usize,
        out: &mut Vec<(usize, &'a str)>,
    ) {
        for o in &p.organizations {
            if o.upstream.as_ref().map(|u| u.value.as_str()) == parent {
                out.push((depth, o.id.value.as_str()));
                walk(p, Some(&o.id.value), depth + 1, out);
            }
        }
    }
    walk(p, None, 0, &mut orgs);
    for (depth, org_id) in orgs {
        let Some(org) = p.organization(org_id) else { continue };
        let pad = "  ".repeat(depth + 1);
        let _ = writeln!(out, "{pad}{} {} ({})", org.tier.value, org.id.value, org.name);
        for ps in plan.streams.iter().filter(|s| plan.def(s).owner.value == org_id) {
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
            let _ = writeln!(
                out,
                "{pad}  stream {} [{}] <- {input}{period}",
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
            let _ = writeln!(
                out,
                "{pad}    => {}/{}/{}/<batch>: {}{}",
                ps.tier,
                s.owner.value,
                s.id.value,
                published.join(", "),
                if hidden > 0 {
                    format!(" (+{hidden} intermediate)")
                } else {
                    String::new()
                }
            );
        }
    }
    out
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

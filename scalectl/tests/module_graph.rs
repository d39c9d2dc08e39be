//! The crate's modules import each other without a loop: each layer
//! (quantities, the controller, the simulation, the search, the charts,
//! the command line) can be read and tested knowing only the ones below.
//! A loop once ran chart -> plan -> hpa -> watch -> chart, because the
//! controller borrowed watch's quantity parser.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its files name as `crate::x`.
fn graph() -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![src.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(&src)?
                .to_string_lossy()
                .replace('\\', "/");
            let top = relative
                .trim_end_matches(".rs")
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let deps = graph.entry(top.clone()).or_default();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let name: String = line[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top {
                        deps.insert(name);
                    }
                }
            }
        }
    }
    Ok(graph)
}

/// A loop in `graph`, as the path around it, if there is one.
fn find_loop(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut vec![], &mut done))
}

#[test]
fn the_modules_import_each_other_without_a_loop() -> anyhow::Result<()> {
    let graph = graph()?;
    // The reader works: it sees the edges that are there.
    assert!(graph["chart"].contains("plan"), "{graph:?}");
    assert!(graph["hpa"].contains("quantity"), "{graph:?}");
    assert_eq!(find_loop(&graph), None, "{graph:?}");
    // And the check would see one.
    let mut looped = graph.clone();
    looped
        .entry("quantity".into())
        .or_default()
        .insert("chart".into());
    assert!(find_loop(&looped).is_some());
    Ok(())
}

//! The device crate's modules import each other along the data flow only: the components
//! (top-level modules of `src/`) form no cycle of imports. Test code is left out: tests may start
//! a whole agent from anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file below `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The component a source file belongs to: its top-level module.
fn component(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap();
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

/// The code of a file without its tests (`#[cfg(test)]` and all after it).
fn code_without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// The top-level modules a piece of code names through `crate::`, including grouped imports
/// (`use crate::{a, b::c}`).
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    push_first_segment(&mut names, &item);
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else if depth == 1 || !item.contains("::") {
                    item.push(c);
                }
            }
        } else {
            push_first_segment(&mut names, rest);
        }
    }
    names
}

fn push_first_segment(names: &mut BTreeSet<String>, path: &str) {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if name.chars().next().is_some_and(|c| c.is_lowercase()) && name != "self" {
        names.insert(name);
    }
}

/// Component → the other components its code imports.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(&src) {
        let from = component(&src, &file);
        if from == "lib" || from == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let edges = graph.entry(from.clone()).or_default();
        for to in named_modules(code_without_tests(&text)) {
            if to != from {
                edges.insert(to);
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
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
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_components_import_each_other_without_a_cycle() {
    let graph = imports();
    for component in [
        "intake",
        "runner",
        "activation",
        "install",
        "uplink",
        "agent",
    ] {
        assert!(
            graph.contains_key(component),
            "no component {component}: {graph:?}"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle between components: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_data_flow_runs_one_way() {
    let graph = imports();
    // What each component must never import: whatever it sends to must not call back.
    let forbidden = [
        (
            "uplink",
            ["intake", "runner", "activation", "install", "agent"].as_slice(),
        ),
        (
            "install",
            &["intake", "runner", "activation", "uplink", "agent"],
        ),
        ("runner", &["intake", "activation", "agent"]),
        ("intake", &["activation", "agent"]),
        ("activation", &["intake", "agent"]),
    ];
    for (component, never) in forbidden {
        for other in never {
            assert!(
                !graph[component].contains(*other),
                "{component} imports {other}: {:?}",
                graph[component]
            );
        }
    }
}

#[test]
fn the_import_reader_sees_grouped_and_nested_imports() {
    let code = "use crate::{AgentError, cloud::{self, Client}, locks::lock};\nlet x = crate::clock::now_ms();";
    let names: Vec<String> = named_modules(code).into_iter().collect();
    assert_eq!(names, ["clock", "cloud", "locks"]);
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "a"]);
}

//! The source's shape, checked: no module of `src/` depends on another that
//! depends back on it, through any chain (a newcomer reads each file's
//! imports and never has to go round in a circle). A module may use its
//! ancestors' items (`super::internal_reply`) and its children; the graph
//! is between the rest. Test code (`#[cfg(test)]` onwards) is left out.
//! No source file is longer than `MAX_FILE_LINES`. And docs/DESIGN.md's map
//! of the source names every folder of `src/` and every file of its two
//! flat levels, `src/` and `src/chat/`. Every setting is in README's table
//! and in .env.example.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of `src/` (`chat::server`, `bus`, …) with the modules its
/// code names through `crate::` or `super::` paths.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let relative = path.strip_prefix(&root).expect("under src/");
            let name = relative
                .with_extension("")
                .to_string_lossy()
                .replace('/', "::");
            let name = name.strip_suffix("::mod").unwrap_or(&name).to_string();
            if name == "lib" || name == "main" || path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            sources.insert(name, code);
        }
    }
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (name, code) in &sources {
        let parent = name.rsplit_once("::").map_or("", |(p, _)| p);
        let mut uses = BTreeSet::new();
        for (prefix, base) in [("crate::", ""), ("super::", parent)] {
            for (at, _) in code.match_indices(prefix) {
                let path: String = code[at + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let mut target = base.to_string();
                let mut found = None;
                for part in path.split("::").filter(|p| !p.is_empty()) {
                    target = if target.is_empty() {
                        part.to_string()
                    } else {
                        format!("{target}::{part}")
                    };
                    if modules.contains(&target) {
                        found = Some(target.clone());
                    } else {
                        break;
                    }
                }
                if let Some(target) = found {
                    let related = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}::"));
                    if !related(name, &target) && !related(&target, name) {
                        uses.insert(target);
                    }
                }
            }
        }
        graph.insert(name.clone(), uses);
    }
    graph
}

/// A chain of modules that leads back to its start, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(module) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|m| m == module).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(module.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(module.to_string(), Mark::Open);
        path.push(module.to_string());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(module.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let graph = module_graph();
    assert!(
        graph.contains_key("chat::server") && graph["chat::session"].contains("chat::messages"),
        "the graph was read: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(m, uses)| (m.to_string(), uses.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

/// Longest a source file may be: one a newcomer reads in one sitting. A
/// module that outgrows it becomes a folder (`mod.rs` and files named for
/// what each holds).
const MAX_FILE_LINES: usize = 600;

#[test]
fn no_source_file_is_longer_than_a_sitting() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut long = Vec::new();
    // The server, and the workspace's other crates: the load generator,
    // the entities and the migrations.
    let mut dirs: Vec<_> = ["src", "bench/src", "entity/src", "migration/src"]
        .iter()
        .map(|dir| root.join(dir))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source directory is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let lines = std::fs::read_to_string(&path)
                    .expect("a source file")
                    .lines()
                    .count();
                if lines > MAX_FILE_LINES {
                    long.push(format!("{} ({lines} lines)", path.display()));
                }
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_FILE_LINES} lines: {}",
        long.join(", ")
    );
}

/// What docs/DESIGN.md's map ("Shape", its first code block) does not name:
/// a folder of `src/` as `name/`, a file of `src/` or `src/chat/` by its
/// file name (the files of the other folders are described with their
/// folder). A module added without a line there leaves a newcomer's map
/// short.
fn missing_from_the_map(root: &Path, design: &str) -> Vec<String> {
    let map = design.split("```").nth(1).unwrap_or("");
    let mut missing = Vec::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        let flat = dir == root.join("src") || dir == root.join("src/chat");
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            let name = path
                .file_name()
                .expect("an entry has a name")
                .to_string_lossy()
                .to_string();
            let named = if path.is_dir() {
                dirs.push(path.clone());
                map.contains(&format!("{name}/"))
            } else {
                !flat || ["lib.rs", "mod.rs"].contains(&name.as_str()) || map.contains(&name)
            };
            if !named {
                let relative = path.strip_prefix(root).expect("under the root");
                missing.push(relative.display().to_string());
            }
        }
    }
    missing.sort();
    missing
}

#[test]
fn the_design_map_names_every_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let design = std::fs::read_to_string(root.join("docs/DESIGN.md")).expect("docs/DESIGN.md");
    let missing = missing_from_the_map(root, &design);
    assert!(
        missing.is_empty(),
        "not in docs/DESIGN.md's map (Shape): {}",
        missing.join(", ")
    );
    // And the check can fail: the map without one line of each kind.
    let short = design
        .replace("  telemetry.rs ", "  ")
        .replace("    timers.rs ", "    ")
        .replace("    writer/ ", "    ");
    assert_eq!(
        missing_from_the_map(root, &short),
        ["src/chat/timers.rs", "src/chat/writer", "src/telemetry.rs"]
    );
}

/// How many settings `src/config/` reads (each group's fields, upper-cased:
/// envy reads `PORT` into `port`), and those of them that README's table
/// (`` `NAME` ``) or .env.example (`NAME=`, set or commented out) does not
/// show.
fn undocumented_settings(root: &Path, readme: &str, example: &str) -> (usize, Vec<String>) {
    let mut settings = Vec::new();
    for entry in std::fs::read_dir(root.join("src/config")).expect("src/config is readable") {
        let path = entry.expect("a directory entry").path();
        // mod.rs holds the groups themselves, not settings.
        if path.file_name().is_some_and(|name| name == "mod.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a source file");
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for line in code.lines() {
            let Some(rest) = line.trim_start().strip_prefix("pub ") else {
                continue;
            };
            let Some((field, _)) = rest.split_once(':') else {
                continue;
            };
            if !field.is_empty()
                && field
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                settings.push(field.to_ascii_uppercase());
            }
        }
    }
    settings.sort();
    let missing = settings
        .iter()
        .filter(|name| {
            !readme.contains(&format!("`{name}`"))
                || !example.lines().any(|line| {
                    line.trim_start_matches(['#', ' '])
                        .starts_with(&format!("{name}="))
                })
        })
        .cloned()
        .collect();
    (settings.len(), missing)
}

#[test]
fn every_setting_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let example = std::fs::read_to_string(root.join(".env.example")).expect(".env.example");
    let (count, missing) = undocumented_settings(root, &readme, &example);
    assert!(count > 60, "the settings were read: {count}");
    assert!(
        missing.is_empty(),
        "settings missing from README's table or .env.example: {}",
        missing.join(", ")
    );
    // And the check can fail: a setting taken out of each.
    let readme = readme.replace("`OUTBOX_CAPACITY`", "");
    let example = example.replace("EDIT_WINDOW_SECONDS=", "");
    assert_eq!(
        undocumented_settings(root, &readme, &example).1,
        ["EDIT_WINDOW_SECONDS", "OUTBOX_CAPACITY"]
    );
}

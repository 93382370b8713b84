//! The arrows between modules point one way: `watch` (app) and `replay` feed the
//! pipeline, which hands its lookups to the sinks and the screen. This reads the
//! sources and fails if one of them reaches back to what feeds it.
use std::{collections::BTreeSet, path::Path};

/// For each module, the modules its code must not name.
const RULES: &[(&str, &[&str])] = &[
    // Outputs read what they are handed; the screen is a peer of the sinks, not one of them.
    ("sink", &["app", "replay", "pipeline", "tui"]),
    ("tui", &["app", "replay", "pipeline"]),
    ("metrics", &["app", "replay", "pipeline", "tui"]),
    ("hold", &["app", "replay", "pipeline", "tui"]),
    // The command line is validated into settings; it knows none of the stages it sets.
    ("cli", &["app", "replay", "pipeline", "sink", "tui"]),
    // Both commands feed the pipeline; it knows neither.
    ("pipeline", &["app", "replay"]),
];

/// The crate's modules that `src` names: the first name of every `crate::` path, and of
/// every item of a `crate::{…}` group. Comments and unit tests do not count.
fn crate_modules(src: &str) -> BTreeSet<String> {
    let code: String = src
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or_default()
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            found.insert(rest.chars().take_while(|&c| ident(c)).collect());
            continue;
        };
        // Walk the group: a name that starts an item at the outer level is a module.
        let (mut depth, mut at_item, mut name) = (1, true, String::new());
        for c in group.chars() {
            if at_item && depth == 1 && ident(c) {
                name.push(c);
                continue;
            }
            if !name.is_empty() {
                found.insert(std::mem::take(&mut name));
            }
            if !c.is_whitespace() {
                at_item = false;
            }
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => break,
                '}' => depth -= 1,
                ',' if depth == 1 => at_item = true,
                _ => {}
            }
        }
    }
    found
}

/// Every `.rs` file of a module (`dir.rs`, or under `dir`), except test-only `tests.rs` files.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let file = dir.with_extension("rs");
    if file.is_file() {
        out.push(file);
        return;
    }
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

#[test]
fn a_module_path_is_found_in_paths_and_use_groups_not_in_comments() {
    let src = "use crate::{\n    capture::{Batch, links::Framing},\n    tui,\n};\n\
               let x = crate::replay::run(); // crate::app\n\
               #[cfg(test)]\nmod tests {\n    use crate::pipeline::Done;\n}\n";
    let want: BTreeSet<String> = ["capture", "replay", "tui"].map(String::from).into();
    assert_eq!(crate_modules(src), want);
}

#[test]
fn outputs_and_the_pipeline_never_reach_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (module, forbidden) in RULES {
        let mut files = Vec::new();
        sources(&src.join(module), &mut files);
        assert!(!files.is_empty(), "no sources in src/{module}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for m in crate_modules(&text) {
                if forbidden.contains(&m.as_str()) {
                    wrong.push(format!("{} uses crate::{m}", file.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows pointing back:\n{}",
        wrong.join("\n")
    );
}

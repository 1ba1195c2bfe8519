//! The layer guard: every `crate::` path in every file under `src/` names a module of a lower layer than
//! the file's own (or its own module). The layer table is the one in `ARCHITECTURE.md` ("Layers"), read
//! from between its markers, so the document and this check cannot disagree; every module that `src/lib.rs`
//! declares must be in it exactly once.
//!
//! Comments are skipped (an intra-doc link is not an import); test modules inside `src/` are checked like
//! the rest. `src/main.rs` is the binary: it uses the library as `troupe::`, from above every layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::helpers::root;

const BEGIN: &str = "<!-- layers:begin -->";
const END: &str = "<!-- layers:end -->";

/// Module name -> its layer number.
type Layers = BTreeMap<String, u32>;

/// Reads the layer table from `ARCHITECTURE.md`: rows `| N | `a`, `b` | ... |` between the markers.
fn layer_table(architecture: &str) -> Result<Layers, String> {
    let start = architecture
        .find(BEGIN)
        .ok_or("ARCHITECTURE.md has no layers:begin marker")?;
    let end = architecture
        .find(END)
        .ok_or("ARCHITECTURE.md has no layers:end marker")?;
    let mut layers = Layers::new();
    for line in architecture[start + BEGIN.len()..end].lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let Some(Ok(layer)) = cells.first().map(|cell| cell.parse::<u32>()) else {
            continue; // the header, the separator, blank lines
        };
        let modules = cells
            .get(1)
            .ok_or(format!("layer {layer} names no modules"))?;
        for module in modules.split(',') {
            let module = module.trim().trim_matches('`').to_owned();
            if let Some(earlier) = layers.insert(module.clone(), layer) {
                return Err(format!("`{module}` is in layers {earlier} and {layer}"));
            }
        }
    }
    Ok(layers)
}

/// The top-level modules `src/lib.rs` declares.
fn declared_modules(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').trim().to_owned())
        })
        .collect()
}

/// `source` without its comments: whole-line comments, and the rest of a line after a `//` that is not
/// inside a string literal.
fn without_comments(source: &str) -> String {
    let mut code = String::with_capacity(source.len());
    for line in source.lines() {
        let mut in_string = false;
        let mut previous = '\0';
        let mut cut = line.len();
        for (at, character) in line.char_indices() {
            match character {
                '"' if previous != '\\' => in_string = !in_string,
                '/' if !in_string && previous == '/' => {
                    cut = at - 1;
                    break;
                }
                _ => {}
            }
            previous = character;
        }
        code.push_str(&line[..cut]);
        code.push('\n');
    }
    code
}

/// The top-level modules that `code` names through `crate::` paths, including every member of a
/// `crate::{a::X, b}` group.
fn crate_imports(code: &str) -> Vec<String> {
    let mut modules = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        // `$crate::` (macros) and `foo_crate::` are not this crate's paths.
        if before.is_some_and(|c| c == '$' || c == '_' || c.is_alphanumeric()) {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut items = Vec::new();
            for character in group.chars() {
                match character {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => items.push(std::mem::take(&mut item)),
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth >= 1 && !(character == ',' && depth == 1) {
                    item.push(character);
                }
            }
            items.push(item);
            for item in items {
                let name = leading_identifier(item.trim());
                if !name.is_empty() {
                    modules.push(name);
                }
            }
        } else {
            let name = leading_identifier(rest);
            if !name.is_empty() {
                modules.push(name);
            }
        }
    }
    modules
}

fn leading_identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level module a file under `src/` belongs to (`src/storage/writer.rs` -> `storage`); `None` for
/// the crate root and the binary.
fn module_of(relative: &Path) -> Option<String> {
    let mut parts = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned());
    let first = parts.next()?;
    if relative.components().count() == 1 {
        let stem = first.strip_suffix(".rs")?;
        return (stem != "lib" && stem != "main").then(|| stem.to_owned());
    }
    Some(first)
}

/// Every upward (or sideways) import in `files` (path relative to `src/`, contents), as messages naming
/// the file, the import and both layers.
fn violations(layers: &Layers, files: &[(PathBuf, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, source) in files {
        let Some(module) = module_of(path) else {
            continue;
        };
        let Some(&own) = layers.get(&module) else {
            found.push(format!(
                "src/{}: module `{module}` is not in the layer table",
                path.display()
            ));
            continue;
        };
        for imported in crate_imports(&without_comments(source)) {
            if imported == module {
                continue;
            }
            match layers.get(&imported) {
                Some(&layer) if layer < own => {}
                Some(&layer) => found.push(format!(
                    "src/{}: imports crate::{imported} (layer {layer}) from `{module}` (layer {own}); a \
                     module may import only from layers below its own",
                    path.display()
                )),
                None => found.push(format!(
                    "src/{}: imports crate::{imported}, which is not in the layer table",
                    path.display()
                )),
            }
        }
    }
    found
}

fn rust_files(dir: &Path, base: &Path, files: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, base, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let source = std::fs::read_to_string(&path).unwrap();
            files.push((path.strip_prefix(base).unwrap().to_path_buf(), source));
        }
    }
}

fn project_layers() -> Layers {
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    layer_table(&architecture).unwrap()
}

#[test]
fn every_module_is_in_exactly_one_layer() {
    let layers = project_layers();
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let declared = declared_modules(&lib);
    let missing: Vec<_> = declared
        .iter()
        .filter(|module| !layers.contains_key(*module))
        .collect();
    let stale: Vec<_> = layers
        .keys()
        .filter(|module| !declared.contains(module))
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "ARCHITECTURE.md's layer table and src/lib.rs disagree: not in the table {missing:?}, not in \
         src/lib.rs {stale:?}"
    );
}

#[test]
fn no_module_imports_from_its_own_layer_or_above() {
    let layers = project_layers();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    assert!(
        files.len() > 40,
        "found only {} files under src/",
        files.len()
    );
    let found = violations(&layers, &files);
    assert!(
        found.is_empty(),
        "{} import(s) break the layers of ARCHITECTURE.md:\n{}",
        found.len(),
        found.join("\n")
    );
}

// The checker itself, on sources written here: it must see through groups and comments, and fail on an
// upward import.

fn toy_layers() -> Layers {
    layer_table(&format!(
        "{BEGIN}\n| layer | modules | holds |\n|---|---|---|\n| 0 | `domain` | ids |\n| 1 | `storage`, \
         `sandbox` | rows |\n| 2 | `events` | hub |\n{END}"
    ))
    .unwrap()
}

#[test]
fn the_table_is_read_from_between_the_markers() {
    let layers = toy_layers();
    assert_eq!(layers.get("domain"), Some(&0));
    assert_eq!(layers.get("sandbox"), Some(&1));
    assert_eq!(layers.get("events"), Some(&2));
    assert_eq!(layers.len(), 4);
    assert!(layer_table(&format!("{BEGIN}\n| 0 | `a` |\n| 1 | `a` |\n{END}")).is_err());
}

#[test]
fn imports_are_found_in_paths_groups_and_nested_groups() {
    let code = without_comments(
        "use crate::domain::TaskId;\nuse crate::{events::{Hub, Event}, storage::Writer};\n\
         fn f() -> crate::sandbox::Report { todo!() }\nmacro_rules! m { () => { $crate::x::Y } }\n\
         // use crate::commented::Out;\n/// [`crate::doc::Link`]\nlet url = \"http://h//crate::in_string\"; \
         let y = crate::after_string::Z;",
    );
    let mut found = crate_imports(&code);
    found.sort();
    assert_eq!(
        found,
        [
            "after_string",
            "domain",
            "events",
            "in_string",
            "sandbox",
            "storage"
        ]
    );
}

#[test]
fn an_upward_or_sideways_import_is_named_with_its_file() {
    let layers = toy_layers();
    let files = vec![
        (
            PathBuf::from("storage/writer.rs"),
            "use crate::domain::TaskId;\nuse crate::events::Hub;\n".to_owned(),
        ),
        (
            PathBuf::from("sandbox.rs"),
            "use crate::{domain::X, storage::Y};\n".to_owned(),
        ),
        (
            PathBuf::from("events.rs"),
            "use crate::storage::Writer;\nuse crate::events::Hub;\n".to_owned(),
        ),
        (PathBuf::from("lib.rs"), "pub mod events;\n".to_owned()),
    ];
    let found = violations(&layers, &files);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("src/storage/writer.rs: imports crate::events (layer 2)"));
    assert!(found[1].starts_with("src/sandbox.rs: imports crate::storage (layer 1)"));
}

//! Reading rule files: one text, one file, or a directory of them.
//!
//! A directory is read in name order, descending into visible subdirectories; names starting with
//! `.` are skipped, so Kubernetes' `..data`/`..2024_…` directories are never read twice, while the
//! visible `rules.yaml -> ..data/rules.yaml` symlinks are followed. Every file is checked even
//! after one fails, so `tollgate check` reports everything at once. Before parsing, `limits`
//! refuses what could stall the loader: anything but a regular file, files and directories over
//! their size caps, nesting too deep for the parser.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use super::build::{build, unknown_replaces};
use super::limits;
use super::locate::{NodePath, Positions, locate};
use super::matcher::DomainRules;
use super::raw::RawFile;
use super::{ConfigError, LoadOptions};

/// Directory depth limit, against symlink loops that canonicalization cannot see.
const MAX_DEPTH: usize = 16;

/// One file's text to one domain.
pub(crate) fn parse_text(
    file: &Path,
    text: &str,
    options: LoadOptions,
) -> Result<DomainRules, Vec<ConfigError>> {
    let error = |(line, column): (usize, usize), message: String| ConfigError {
        file: file.to_owned(),
        line,
        column,
        message,
    };
    limits::check_depth(file, text).map_err(|e| vec![e])?;
    if is_only_comments(text) {
        return Err(vec![error(
            (1, 1),
            "the file is empty: it needs at least `domain: <name>`".into(),
        )]);
    }
    let raw: RawFile = match serde_norway::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let at = e
                .location()
                .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
            return Err(vec![error(at, strip_positions(&e.to_string()))]);
        }
    };
    let (mut rules, unresolved) = build(file, raw, options).map_err(|problems| {
        let positions = Positions::of(text);
        problems
            .into_iter()
            .map(|(path, message)| error(positions.locate(&path), message))
            .collect::<Vec<_>>()
    })?;
    if !unresolved.is_empty() {
        let positions = Positions::of(text);
        rules.unresolved = unresolved
            .into_iter()
            .map(|(name, path)| {
                let message = unknown_replaces(&name, &rules.name);
                (name, error(positions.locate(&path), message))
            })
            .collect();
    }
    Ok(rules)
}

fn is_only_comments(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

/// serde_norway appends ` at line L column C` (libyaml: ` at position N`). The first is the
/// position we report in front, so it is dropped; later ones (libyaml's context, such as where an
/// unclosed bracket opened) are kept, shortened to `at L:C`.
fn strip_positions(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    let mut first = true;
    while let Some(at) = rest.find(" at ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 4..];
        match parse_position(tail) {
            Some((len, shown)) => {
                if !first {
                    out.push_str(" at ");
                    out.push_str(&shown);
                }
                first = false;
                rest = &tail[len..];
            }
            None => {
                out.push_str(" at ");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A leading `line N column M` (shown `N:M`) or `position N` in `s`, with its length.
fn parse_position(s: &str) -> Option<(usize, String)> {
    fn number(s: &str) -> Option<&str> {
        let n = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        (n > 0).then(|| &s[..n])
    }
    if let Some(r) = s.strip_prefix("line ") {
        let line = number(r)?;
        let c = r[line.len()..].strip_prefix(" column ")?;
        let column = number(c)?;
        Some((
            "line ".len() + line.len() + " column ".len() + column.len(),
            format!("{line}:{column}"),
        ))
    } else {
        let r = s.strip_prefix("position ")?;
        let n = number(r)?;
        Some(("position ".len() + n.len(), format!("byte {n}")))
    }
}

/// Every domain under `path` (a file or a directory), or every error found.
pub(crate) fn load_path(
    path: &Path,
    options: LoadOptions,
) -> Result<Vec<DomainRules>, Vec<ConfigError>> {
    let io_error = |p: &Path, what: &str, e: std::io::Error| ConfigError {
        file: p.to_owned(),
        line: 1,
        column: 1,
        message: format!("cannot {what}: {e}"),
    };
    let meta = fs::metadata(path).map_err(|e| vec![io_error(path, "read", e)])?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        let mut total = 0u64;
        walk(path, &mut |found| match found {
            Found::RuleFile { path, is_file } => {
                // A dangling symlink is skipped like a vanished file; anything else that exists
                // and is not a regular file (a FIFO, a device) is refused without being opened.
                let Ok(meta) = fs::metadata(path) else { return };
                match limits::check_file(path, &meta) {
                    Ok(()) if is_file => {
                        total = total.saturating_add(meta.len());
                        files.push(path.to_owned());
                    }
                    Ok(()) => {}
                    Err(e) => errors.push(e),
                }
            }
            Found::Problem(error) => errors.push(error),
            _ => {}
        });
        errors.extend(limits::check_total(path, total).err());
        if !errors.is_empty() {
            return Err(errors);
        }
        files
    } else {
        vec![path.to_owned()]
    };

    let mut domains: Vec<DomainRules> = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let text = match limits::read_file(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match parse_text(&file, &text, options) {
            Ok(domain) => match domains.iter_mut().find(|d| d.name == domain.name) {
                None => domains.push(domain),
                Some(first) => {
                    let message = if options.merge_domains {
                        match first.merge(domain) {
                            Ok(()) => continue,
                            Err(shown) => format!(
                                "duplicate descriptor `{shown}` in merged domain `{}`: already defined in {}",
                                first.name,
                                first.source.display()
                            ),
                        }
                    } else {
                        format!(
                            "duplicate domain `{}`: already defined in {}",
                            domain.name,
                            first.source.display()
                        )
                    };
                    let (line, column) = locate(&text, &NodePath::default().field("domain"));
                    errors.push(ConfigError {
                        file: file.clone(),
                        line,
                        column,
                        message,
                    });
                }
            },
            Err(mut e) => errors.append(&mut e),
        }
    }
    errors.extend(domains.iter_mut().flat_map(unresolved_replaces));
    if errors.is_empty() {
        Ok(domains)
    } else {
        Err(errors)
    }
}

/// The `replaces` of a merged domain that name no limit in any of its files.
pub(crate) fn unresolved_replaces(domain: &mut DomainRules) -> Vec<ConfigError> {
    let unresolved = std::mem::take(&mut domain.unresolved);
    unresolved
        .into_iter()
        .filter(|(name, _)| {
            !domain
                .rules
                .iter()
                .any(|r| r.rule.name.as_deref() == Some(name.as_str()))
        })
        .map(|(_, error)| error)
        .collect()
}

/// Whether the loader reads a file of this name in a directory: visible, ending in `.yaml` or
/// `.yml`.
pub(crate) fn is_rule_name(path: &Path) -> bool {
    let visible = path
        .file_name()
        .is_some_and(|name| !name.as_encoded_bytes().starts_with(b"."));
    visible
        && matches!(
            path.extension().and_then(OsStr::to_str),
            Some("yaml" | "yml")
        )
}

/// What [`walk`] meets in a rule directory.
#[cfg_attr(
    all(not(feature = "server"), not(test)),
    expect(dead_code, reason = "directories are the file watcher's")
)]
pub(crate) enum Found<'a> {
    /// A directory about to be read, by its canonical path (as reached, if that cannot be had).
    Dir(&'a Path),
    /// A visible entry leading to a directory, which is walked next; as reached from the root,
    /// symlinks unresolved, as are the paths below.
    Subdir(&'a Path),
    /// A visible entry with a rule file's name that does not lead to a directory. `is_file` is
    /// false for a dangling symlink or anything else that is not a regular file: the loader skips
    /// it like a vanished file, a watcher still waits for it to appear.
    RuleFile { path: &'a Path, is_file: bool },
    /// A directory that cannot be read, or one nested deeper than [`MAX_DEPTH`].
    Problem(ConfigError),
}

/// Walks the rule directory `dir` as the loader reads it: visible entries in name order, symlinks
/// followed, subdirectories down to [`MAX_DEPTH`] levels, each directory once.
pub(crate) fn walk(dir: &Path, found: &mut impl FnMut(Found<'_>)) {
    walk_from(dir, 0, &mut HashSet::new(), found);
}

fn walk_from(
    dir: &Path,
    depth: usize,
    visited: &mut HashSet<PathBuf>,
    found: &mut impl FnMut(Found<'_>),
) {
    let dir_error = |message: String| ConfigError {
        file: dir.to_owned(),
        line: 1,
        column: 1,
        message,
    };
    if depth > MAX_DEPTH {
        found(Found::Problem(dir_error(format!(
            "directories nested deeper than {MAX_DEPTH} levels"
        ))));
        return;
    }
    let real = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    if !visited.insert(real.clone()) {
        return;
    }
    found(Found::Dir(&real));
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            found(Found::Problem(dir_error(format!(
                "cannot read the directory: {e}"
            ))));
            return;
        }
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
        .map(|e| e.path())
        .collect();
    names.sort();
    for path in names {
        // `metadata` follows symlinks.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                found(Found::Subdir(&path));
                walk_from(&path, depth + 1, visited, found);
            }
            meta if is_rule_name(&path) => found(Found::RuleFile {
                path: &path,
                is_file: meta.is_ok_and(|m| m.is_file()),
            }),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `walk` reports under `root`, relative to it, in order.
    fn walked(root: &Path) -> Vec<String> {
        let shown = |path: &Path| {
            path.strip_prefix(root)
                .unwrap_or(path)
                .display()
                .to_string()
        };
        let mut seen = Vec::new();
        walk(root, &mut |found| {
            seen.push(match found {
                Found::Dir(dir) => format!("dir {}", shown(dir)),
                Found::Subdir(path) => format!("subdir {}", shown(path)),
                Found::RuleFile { path, is_file } => format!("rule {} {is_file}", shown(path)),
                Found::Problem(error) => format!("problem {}", error.message),
            })
        });
        seen
    }

    #[cfg(unix)]
    #[test]
    fn walk_reads_visible_rule_files_and_each_directory_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for file in [
            "b.yaml",
            "a.txt",
            ".hidden.yaml",
            "team/c.yml",
            "..data/d.yaml",
        ] {
            let path = root.join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, "domain: d\n").unwrap();
        }
        std::os::unix::fs::symlink("team", root.join("alias")).unwrap();
        std::os::unix::fs::symlink("gone.yaml", root.join("dangling.yaml")).unwrap();
        assert_eq!(
            walked(&root),
            [
                "dir ",
                "subdir alias",
                "dir team",
                "rule alias/c.yml true",
                "rule b.yaml true",
                "rule dangling.yaml false",
                "subdir team",
            ]
        );
        assert!(is_rule_name(Path::new("x/e.yml")) && !is_rule_name(Path::new("x/.e.yml")));
        assert!(!is_rule_name(Path::new("e.YAML")));
    }

    #[test]
    fn walk_reports_directories_nested_too_deep() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let deepest =
            (0..=MAX_DEPTH).fold(root.clone(), |path, level| path.join(level.to_string()));
        fs::create_dir_all(&deepest).unwrap();
        let seen = walked(&root);
        assert_eq!(
            seen.last().map(String::as_str),
            Some("problem directories nested deeper than 16 levels")
        );
        assert_eq!(
            seen.iter().filter(|s| s.starts_with("dir")).count(),
            MAX_DEPTH + 1
        );
    }

    #[test]
    fn positions_are_stripped_from_messages() {
        assert_eq!(
            strip_positions("descriptors[0]: unknown field `x` at line 3 column 5"),
            "descriptors[0]: unknown field `x`"
        );
        assert_eq!(
            strip_positions(
                "did not find expected key at line 4 column 3, while parsing a block mapping at line 1 column 1"
            ),
            "did not find expected key, while parsing a block mapping at 1:1"
        );
        assert_eq!(strip_positions("look at me"), "look at me");
        assert_eq!(strip_positions("at line x"), "at line x");
    }
}

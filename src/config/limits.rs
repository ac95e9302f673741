//! What the loader refuses before the YAML parser sees a byte: anything but a regular file, a file
//! over [`MAX_FILE_BYTES`], a directory over [`MAX_TOTAL_BYTES`], nesting deeper than [`MAX_DEPTH`].
//!
//! The type and size come from `metadata` before opening, and again from the open handle (opened
//! non-blocking, so a FIFO swapped in between cannot block); the read itself stops one byte past
//! the cap. The depth pre-scan is one pass over the text: block depth is the stack of indentations
//! (plus each `- ` opening a sequence item on the same line), flow depth the count of open `[`/`{`
//! outside quotes and comments. It can overcount (a block scalar's indented lines), never
//! undercount a real nesting, and at 64 levels no honest rule file comes near.

use std::fs::{self, File, Metadata};
use std::io::Read;
use std::path::Path;

use super::ConfigError;

/// The largest rule file read: 4 MiB (a thousand-rule file is about 200 KiB).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// The most read from one directory, all rule files together: 32 MiB.
pub const MAX_TOTAL_BYTES: u64 = 32 << 20;
/// The deepest nesting of YAML collections in a rule file, block or flow style: 64 levels.
pub const MAX_DEPTH: usize = 64;

fn error(file: &Path, (line, column): (usize, usize), message: String) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

/// What a path is, for a refusal: `a FIFO`, `a socket`, `a device`, `a directory`.
fn kind_of(meta: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Refuses what is not a regular file (symlinks followed) or is over the size cap.
pub(crate) fn check_file(file: &Path, meta: &Metadata) -> Result<(), ConfigError> {
    if !meta.is_file() {
        let kind = kind_of(meta);
        return Err(error(
            file,
            (1, 1),
            format!("not a regular file ({kind}): only regular files are read as rules"),
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(error(
            file,
            (1, 1),
            format!(
                "the file is {} bytes, over the limit of {MAX_FILE_BYTES} bytes (4 MiB) for a rule file",
                meta.len()
            ),
        ));
    }
    Ok(())
}

fn open(file: &Path) -> std::io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(file)
}

/// One rule file's text, refused before reading if it is not a regular file or is too large.
pub(crate) fn read_file(file: &Path) -> Result<String, ConfigError> {
    let io_error =
        |what: &str, e: std::io::Error| error(file, (1, 1), format!("cannot {what}: {e}"));
    check_file(file, &fs::metadata(file).map_err(|e| io_error("read", e))?)?;
    let handle = open(file).map_err(|e| io_error("read", e))?;
    check_file(file, &handle.metadata().map_err(|e| io_error("read", e))?)?;
    let mut bytes = Vec::new();
    handle
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error("read", e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(error(
            file,
            (1, 1),
            format!("the file grew past the limit of {MAX_FILE_BYTES} bytes (4 MiB) while read"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| error(file, (1, 1), format!("the file is not UTF-8: {e}")))
}

/// Refuses a directory whose rule files add up to more than [`MAX_TOTAL_BYTES`].
pub(crate) fn check_total(dir: &Path, total: u64) -> Result<(), ConfigError> {
    if total > MAX_TOTAL_BYTES {
        return Err(error(
            dir,
            (1, 1),
            format!(
                "the rule files add up to {total} bytes, over the limit of {MAX_TOTAL_BYTES} bytes (32 MiB) for a directory"
            ),
        ));
    }
    Ok(())
}

/// The lines of `text` as YAML counts them: a line ends at `\n`, `\r\n`, a lone `\r`, NEL, LS or
/// PS, so the positions the scan reports are the parser's.
fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s
            .char_indices()
            .find(|&(_, c)| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        {
            None => {
                rest = None;
                Some(s).filter(|s| !s.is_empty())
            }
            Some((i, c)) => {
                let next = if s[i..].starts_with("\r\n") {
                    i + 2
                } else {
                    i + c.len_utf8()
                };
                rest = Some(&s[next..]);
                Some(&s[..i])
            }
        }
    })
}

/// The first place where `text` nests collections deeper than [`MAX_DEPTH`], by a pre-scan.
pub(crate) fn check_depth(file: &Path, text: &str) -> Result<(), ConfigError> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for (n, line) in yaml_lines(text).enumerate() {
        let body = line.trim_start_matches(' ');
        if flow == 0 {
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            let indent = line.len() - body.len();
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let mut block = indents.len();
        let mut quote = None;
        let mut in_items = flow == 0;
        let mut prev = ' ';
        for (i, c) in body.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') if prev == ' ' || "[{,:".contains(prev) => quote = Some(c),
                (None, '#') if prev == ' ' || prev == '\t' => break,
                (None, '[' | '{') => flow += 1,
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                (None, '-') if in_items && prev == ' ' && body[i + 1..].starts_with(' ') => {
                    block += 1;
                }
                (None, ' ') => {}
                (None, _) => in_items = false,
            }
            if block + flow > MAX_DEPTH {
                let column = line.len() - body.len() + body[..i].chars().count() + 1;
                return Err(error(
                    file,
                    (n + 1, column),
                    format!("collections nested deeper than the limit of {MAX_DEPTH} levels"),
                ));
            }
            prev = c;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_error(text: &str) -> Option<(usize, usize)> {
        check_depth(Path::new("f.yaml"), text)
            .err()
            .map(|e| (e.line, e.column))
    }

    #[test]
    fn lines_end_where_yaml_ends_them() {
        let lines: Vec<_> = yaml_lines("a\nb\r\nc\rd\u{2028}e\n").collect();
        assert_eq!(lines, ["a", "b", "c", "d", "e"]);
        // A lone \r ends a line for the parser too, so a deep line after one is reported there.
        let deep = format!("k: v\rx: {}", "[".repeat(MAX_DEPTH + 1));
        assert_eq!(depth_error(&deep).map(|(line, _)| line), Some(2));
    }

    #[test]
    fn honest_files_pass_the_depth_scan() {
        let text = "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n        rate_limit: {unit: second, requests_per_unit: 1}\n        metadata: {\"a[\": '{', b: [1, 2]} # [[[\n";
        assert_eq!(depth_error(text), None);
        let deep = (0..30).fold(String::new(), |out, level| {
            format!("{out}{}- \n", " ".repeat(level * 2))
        });
        assert_eq!(depth_error(&deep), None);
    }

    #[test]
    fn deep_flow_and_block_nesting_are_refused_where_they_pass_the_limit() {
        let flow = format!("a: {}1{}\n", "[".repeat(100), "]".repeat(100));
        assert_eq!(depth_error(&flow), Some((1, 4 + MAX_DEPTH - 1)));
        let block = (0..100).fold(String::new(), |out, level| {
            format!("{out}{}k{level}:\n", " ".repeat(level))
        });
        assert_eq!(depth_error(&block), Some((MAX_DEPTH + 1, MAX_DEPTH + 1)));
        let items = format!("{}x\n", "- ".repeat(100));
        assert_eq!(depth_error(&items), Some((1, 2 * MAX_DEPTH - 1)));
        let spread = format!("a: {}\n", "[\n".repeat(100));
        assert_eq!(depth_error(&spread), Some((MAX_DEPTH, 1)));
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_under_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f.yaml");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let e = read_file(&fifo).unwrap_err();
        assert!(e.message.contains("not a regular file (a FIFO)"), "{e}");
        assert!(
            read_file(Path::new("/dev/null"))
                .unwrap_err()
                .message
                .contains("(a device)")
        );

        let big = dir.path().join("big.yaml");
        File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let e = read_file(&big).unwrap_err();
        assert!(e.message.contains("over the limit of 4194304 bytes"), "{e}");
        let ok = dir.path().join("ok.yaml");
        fs::write(&ok, "domain: d\n").unwrap();
        std::os::unix::fs::symlink(&ok, dir.path().join("link.yaml")).unwrap();
        assert_eq!(
            read_file(&dir.path().join("link.yaml")).unwrap(),
            "domain: d\n"
        );
        assert!(check_total(dir.path(), MAX_TOTAL_BYTES).is_ok());
        assert!(check_total(dir.path(), MAX_TOTAL_BYTES + 1).is_err());
    }
}

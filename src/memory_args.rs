//! `--memory-limit`: the bytes the counters kept in this process may hold, and its default, which
//! follows the container's memory limit (docs/limits.md, "Memory").

use std::path::Path;

/// Share of the cgroup memory limit the store gets by default: the rest is the process itself
/// (connections, buffers, the rules, metrics) and the allocator's slack.
const CGROUP_SHARE: u64 = 2;

/// A cgroup v1 "no limit" is a huge number (`PAGE_COUNTER_MAX` pages); anything from here up is
/// taken as no limit.
const NO_LIMIT: u64 = 1 << 62;

#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    /// The most the memory store's counters (with `--store redis`: the over-limit cache) may hold,
    /// e.g. `256MiB`, `1GiB`, `500MB`, or bytes. When full, it evicts expired and under-limit
    /// counters, never exhausted ones, and denies new keys if nothing else can go (docs/limits.md).
    /// [default: half the cgroup memory limit (memory.max, or v1 memory.limit_in_bytes), else 512MiB]
    #[arg(long, env = "TOLLGATE_MEMORY_LIMIT", value_parser = parse_size)]
    pub memory_limit: Option<u64>,
}

impl MemoryArgs {
    /// The capacity in bytes: the flag, or half the cgroup limit, or the library's fixed default.
    pub fn capacity(&self) -> usize {
        let bytes = self.memory_limit.or_else(|| {
            cgroup_limit(
                read("/sys/fs/cgroup/memory.max").as_deref(),
                read("/sys/fs/cgroup/memory/memory.limit_in_bytes").as_deref(),
            )
            .map(|limit| limit / CGROUP_SHARE)
        });
        bytes.map_or(tollgate::store::memory::DEFAULT_CAPACITY, |b| {
            usize::try_from(b).unwrap_or(usize::MAX)
        })
    }
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The memory limit the cgroup files state (v2 first), if any: `max`, an unreadable or absent file
/// and v1's "unlimited" all mean none.
fn cgroup_limit(v2: Option<&str>, v1: Option<&str>) -> Option<u64> {
    [v2, v1]
        .into_iter()
        .flatten()
        .find_map(|text| text.trim().parse::<u64>().ok())
        .filter(|&limit| limit > 0 && limit < NO_LIMIT)
}

/// `256MiB`, `1GiB`, `500MB`, `64k`, `1048576`: binary units (`KiB`, `MiB`, `GiB`, `TiB`, and `K`,
/// `M`, `G`, `T` as Kubernetes' `Ki`… spells them), decimal ones (`KB`, `MB`, `GB`, `TB`), or bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 256MiB or 1GiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use KiB, MiB, GiB, MB, GB…)"
            ));
        }
    };
    match number.checked_mul(scale) {
        Some(0) => Err("the memory limit must be more than 0".to_string()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("`{text}` is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("8m"), Ok(8 << 20));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 2 GiB "), Ok(2 << 30));
        for bad in [
            "",
            "MiB",
            "1.5GiB",
            "-1",
            "12parsecs",
            "0",
            "99999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cgroup_limit_comes_from_v2_then_v1_and_max_means_none() {
        assert_eq!(cgroup_limit(Some("536870912\n"), None), Some(512 << 20));
        assert_eq!(cgroup_limit(Some("max\n"), None), None);
        assert_eq!(cgroup_limit(None, Some("1073741824\n")), Some(1 << 30));
        assert_eq!(cgroup_limit(None, Some("9223372036854771712\n")), None);
        assert_eq!(cgroup_limit(Some("max"), Some("1073741824")), Some(1 << 30));
        assert_eq!(cgroup_limit(None, None), None);
    }

    #[test]
    fn the_flag_wins_over_the_cgroup() {
        let args = MemoryArgs {
            memory_limit: Some(8 << 20),
        };
        assert_eq!(args.capacity(), 8 << 20);
    }
}

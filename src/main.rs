//! The `tollgate` binary: `serve`, `check` and `bench`. Its command line ([`cli`]) and what each
//! subcommand does ([`commands`]) are its own; everything else is the library.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command};

mod admin_tls_args;
mod cli;
mod commands;
mod connection_args;
mod memory_args;
mod peer_env;
mod redis_args;

// glibc's malloc was a sixth of the server's and the load generator's CPU under load (perf: malloc,
// _int_malloc, _int_free, malloc_consolidate); mimalloc's thread-local free lists cost far less.
// Built without transparent huge pages (`no_thp`): under a flood of fresh keys the memory store
// keeps freeing and taking fresh memory, and a first touch of a 2 MiB page zeroes all of it at once
// (7 ms seen in perf on a VM), stalling every call on that thread. 4 KiB pages cost no measurable
// CPU per decision (docs/limits.md, "Memory").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often freed memory is offered back to the OS (docs/limits.md, "Memory after connections
/// close").
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// mimalloc hands pages that emptied back to the OS once they have stayed empty for its purge
/// delay (1 s), but it checks only inside allocator calls: after a storm of connections closes,
/// the threads that freed their buffers go quiet and the memory stays resident. A thread of its
/// own asks once a second (`mi_collect(false)`: its own, empty, heap and the process-wide purge of
/// pages whose delay has passed). Purging at once instead (`MIMALLOC_PURGE_DELAY=0`) returns the
/// memory as well but costs 40 % more CPU per decision under load.
fn spawn_memory_purger() {
    let purger = std::thread::Builder::new()
        .name("tollgate-purge".into())
        .spawn(|| {
            loop {
                std::thread::sleep(PURGE_EVERY);
                purge_freed_memory();
            }
        });
    if let Err(e) = purger {
        tracing::warn!("freed memory is not returned to the OS while idle: {e}");
    }
}

/// Returns to the OS the pages, freed by any thread, that have stayed empty for the purge delay.
fn purge_freed_memory() {
    unsafe extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: mimalloc's public API, callable from any thread at any time.
    unsafe { mi_collect(false) };
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches_from(command_line(std::env::args_os().collect()));
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Check(args) => {
            if commands::check(&args) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Bench(args) => match commands::bench(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(mut args) => {
            // envoyproxy/ratelimit's variables fill in what flags and TOLLGATE_* left at default.
            let serve = matches.subcommand_matches("serve").unwrap_or(&matches);
            let env = std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect();
            let peer = match peer_env::apply(&mut args, serve, &env) {
                Ok(report) => report,
                Err(e) => {
                    eprintln!("tollgate: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = commands::init_logging(&args.log) {
                eprintln!("tollgate: {e:#}");
                return ExitCode::FAILURE;
            }
            peer_env::log(&peer);
            spawn_memory_purger();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tollgate: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(commands::serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("tollgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The command line, with `serve` put in when the binary runs as `ratelimit` (envoyproxy/ratelimit's
/// name: Envoy Gateway starts `/bin/ratelimit` with no arguments, only variables) and no subcommand
/// was given.
fn command_line(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let as_ratelimit = args
        .first()
        .and_then(|arg0| std::path::Path::new(arg0).file_name())
        .is_some_and(|name| name == "ratelimit");
    let subcommand = args.get(1).is_some_and(|arg| {
        Cli::command()
            .get_subcommands()
            .any(|c| arg == c.get_name())
            || ["help", "-h", "--help", "-V", "--version"]
                .iter()
                .any(|h| arg == h)
    });
    if as_ratelimit && !subcommand {
        args.insert(1.min(args.len()), "serve".into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::{command_line, purge_freed_memory};

    fn rss_mib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib >> 10
    }

    /// 64 MiB allocated and freed by a thread that then stays idle, as a gRPC thread after its
    /// connections closed: mimalloc alone keeps it resident; one purge after the delay returns it.
    #[test]
    fn memory_freed_by_an_idle_thread_is_returned_by_the_purge() {
        let (freed, wait) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let before = rss_mib();
        let worker = std::thread::spawn(move || {
            let blocks: Vec<Vec<u8>> = (0..16_384).map(|_| vec![1u8; 4096]).collect();
            let held = rss_mib();
            drop(blocks);
            freed.send(held).unwrap();
            let _ = stopped.recv();
        });
        let held = wait.recv().unwrap();
        assert!(
            held >= before + 48,
            "{before} → {held} MiB: nothing was allocated?"
        );
        // mimalloc's purge delay is 1 s.
        std::thread::sleep(std::time::Duration::from_millis(1_500));
        purge_freed_memory();
        let after = rss_mib();
        stop.send(()).unwrap();
        worker.join().unwrap();
        assert!(
            after <= before + 16,
            "RSS {before} MiB, {held} MiB while held, still {after} MiB after the purge"
        );
    }

    fn line(args: &[&str]) -> Vec<String> {
        command_line(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn ratelimit_with_no_subcommand_serves() {
        assert_eq!(line(&["/bin/ratelimit"]), ["/bin/ratelimit", "serve"]);
        assert_eq!(
            line(&["ratelimit", "--grpc-threads", "2"]),
            ["ratelimit", "serve", "--grpc-threads", "2"]
        );
        assert_eq!(
            line(&["/bin/ratelimit", "check", "x"]),
            ["/bin/ratelimit", "check", "x"]
        );
        assert_eq!(
            line(&["/usr/local/bin/tollgate"]),
            ["/usr/local/bin/tollgate"]
        );
    }
}

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
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    use super::command_line;

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

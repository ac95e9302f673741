//! The `tollgate` binary: `serve`, `check` and `bench`. Its command line ([`cli`]) and what each
//! subcommand does ([`commands`]) are its own; everything else is the library.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command};

mod cli;
mod commands;
mod memory_args;
mod peer_env;

// glibc's malloc was a sixth of the server's and the load generator's CPU under load (perf: malloc,
// _int_malloc, _int_free, malloc_consolidate); mimalloc's thread-local free lists cost far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
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

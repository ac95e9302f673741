//! The `tollgate` binary: `serve`, `check` and `bench`. Its command line ([`cli`]) and what each
//! subcommand does ([`commands`]) are its own; everything else is the library.

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

mod cli;
mod commands;

// glibc's malloc was a sixth of the server's and the load generator's CPU under load (perf: malloc,
// _int_malloc, _int_free, malloc_consolidate); mimalloc's thread-local free lists cost far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Serve(args) => {
            if let Err(e) = commands::init_logging(&args.log) {
                eprintln!("tollgate: {e:#}");
                return ExitCode::FAILURE;
            }
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

//! `tollgate`: parse the command line and call in. Errors end here as one
//! line on standard error and a non-zero exit status.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = tollgate::cli::Cli::parse();
    tollgate::telemetry::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollgate: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tollgate::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tollgate: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

use std::process::ExitCode;

use clap::Parser as _;
use dnstrace::cli::{Cli, Command, WatchConfig};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().filter_or("DNSTRACE_LOG", "warn"))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dnstrace: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Watch(args) => {
                let cfg = WatchConfig::try_from(args)?;
                dnstrace::app::watch(cfg).await.map(|_| ())
            }
        }
    });
    dnstrace::app::flush_stdout();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dnstrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

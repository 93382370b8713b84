use std::process::ExitCode;

use clap::Parser as _;
use dnstrace::cli::{Cli, Command, WatchConfig};

fn main() -> ExitCode {
    dnstrace::logging::init();
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
            Command::Replay(args) => {
                dnstrace::replay::replay(dnstrace::replay::ReplayConfig::from(args))
                    .await
                    .map(|_| ())
            }
            Command::Cleanup(args) => {
                let found = dnstrace::capture::stale::cleanup(&args.ifaces, args.dry_run).await?;
                print!("{}", dnstrace::capture::stale::report(&found, args.dry_run));
                Ok(())
            }
            Command::BenchNoop(args) => {
                let _noop =
                    dnstrace::capture::NoopClassifier::attach(&args.ifaces, args.egress_only)?;
                if let Some(path) = &args.ready_file {
                    dnstrace::outfile::write_ready(path)?;
                }
                tokio::signal::ctrl_c().await?;
                Ok(())
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

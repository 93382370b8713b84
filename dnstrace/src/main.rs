use std::process::ExitCode;

use clap::Parser as _;
use dnstrace::{
    cli::{Cli, Command, ConfigError, WatchConfig},
    say,
    sink::StdoutClosed,
};

/// jemalloc: the pipeline allocates and frees small blocks per event (names, hops,
/// records); glibc's malloc spent about a sixth of dnstrace's CPU on them (BENCHMARKS.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: [`dnstrace::JEMALLOC_CONF`].
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 47] = dnstrace::JEMALLOC_CONF;

/// Exit status of a bad command line, as clap uses.
const USAGE: u8 = 2;
/// `replay --exit-code` found a lookup with a problem verdict.
const PROBLEMS: u8 = 3;

fn main() -> ExitCode {
    dnstrace::logging::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say!("dnstrace: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `replay --exit-code`: how many printed lookups had a problem verdict.
    let mut problem_lookups = 0u64;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Watch(args) => {
                let cfg = WatchConfig::try_from(args)?;
                dnstrace::app::watch(cfg).await.map(|_| ())
            }
            Command::Replay(args) => {
                let exit_code = args.exit_code;
                let summary =
                    dnstrace::replay::replay(dnstrace::replay::ReplayConfig::from(args)).await?;
                let problems = summary.lookups.problems_shown;
                if exit_code && problems > 0 {
                    problem_lookups = problems;
                }
                Ok(())
            }
            Command::Cleanup(args) => {
                let found = dnstrace::capture::stale::cleanup(&args.ifaces, args.dry_run).await?;
                let report = dnstrace::capture::stale::report(&found, args.dry_run);
                std::io::Write::write_all(&mut std::io::stdout(), report.as_bytes())
                    .map_err(dnstrace::sink::stdout_error)
            }
            Command::Completions(args) => {
                let mut out = Vec::new();
                dnstrace::cli::completions(args.shell, &mut out);
                std::io::Write::write_all(&mut std::io::stdout(), &out)
                    .map_err(dnstrace::sink::stdout_error)
            }
            Command::Man(args) => {
                for path in dnstrace::cli::man_pages(&args.dir).map_err(|e| {
                    anyhow::anyhow!("writing the man pages into {}: {e}", args.dir.display())
                })? {
                    say!("dnstrace: wrote {}", path.display());
                }
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
    let result = result.and_then(|()| dnstrace::app::flush_stdout());
    match result {
        Ok(()) if problem_lookups > 0 => {
            say!(
                "dnstrace: {problem_lookups} lookup{} with a verdict other than ok (--exit-code)",
                if problem_lookups == 1 { "" } else { "s" }
            );
            ExitCode::from(PROBLEMS)
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<StdoutClosed>() => dnstrace::app::die_of_sigpipe(),
        Err(e) if e.is::<ConfigError>() => {
            say!("dnstrace: error: {e}\n\nFor more information, try '--help'.");
            ExitCode::from(USAGE)
        }
        Err(e) => {
            say!("dnstrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints clap's error or help and picks the status: help that could not be
/// written (e.g. `--help >/dev/full`) is an error, not a success.
fn clap_exit(e: &clap::Error) -> ExitCode {
    let printed = e.print();
    let code = e.exit_code();
    match printed {
        Err(err) if code == 0 && err.kind() == std::io::ErrorKind::BrokenPipe => {
            dnstrace::app::die_of_sigpipe()
        }
        Err(err) if code == 0 => {
            say!("dnstrace: error: writing the help to stdout: {err}");
            ExitCode::FAILURE
        }
        _ => ExitCode::from(u8::try_from(code).unwrap_or(USAGE)),
    }
}

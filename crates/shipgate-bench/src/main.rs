//! `shipgate-bench`: the benchmark command and the reliability harness.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use shipgate_bench::bench::{self, Report, Size};
use shipgate_bench::{harness, markdown, support};

#[derive(Parser)]
#[command(about = "Shipgate's benchmarks and reliability harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure every figure of docs/BENCHMARKS.md against its same-run baseline and rewrite it.
    Bench {
        /// A tenth of the work, no dashboard run; the document is not rewritten.
        #[arg(long)]
        quick: bool,
        /// Only these scenarios (1..7, comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<u8>,
        /// Where to write the report (default docs/BENCHMARKS.md; `-` for nowhere).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Rollouts of the engine-throughput scenario (3) instead of the size's.
        #[arg(long)]
        rollouts: Option<usize>,
        /// Rollouts in flight in the scheduler scenario (4) instead of the size's.
        #[arg(long)]
        scheduled: Option<usize>,
    },
    /// Run the reliability harness.
    Harness {
        /// The CI form (about two minutes).
        #[arg(long, conflicts_with = "long")]
        short: bool,
        /// The full form (about ten minutes).
        #[arg(long)]
        long: bool,
    },
    /// A bare axum handler, the baseline of the API figures (started by `bench`).
    #[command(hide = true)]
    BareServer,
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Bench {
            quick,
            only,
            output,
            rollouts,
            scheduled,
        } => {
            let mut size = if quick { Size::QUICK } else { Size::FULL };
            size.rollouts = rollouts.unwrap_or(size.rollouts);
            size.scheduled = scheduled.unwrap_or(size.scheduled);
            let binary = support::shipgate_binary(true)?;
            let wanted = |scenario: u8| only.is_empty() || only.contains(&scenario);
            let mut report = Report::default();
            println!("machine: {}", support::machine());
            println!("binary: {}", binary.display());
            let started = chrono::Utc::now();
            if wanted(1) || wanted(6) {
                bench::api_reads(&binary, size, &mut report).await?;
            }
            if wanted(2) {
                bench::webhooks(&binary, size, &mut report).await?;
            }
            if wanted(3) || wanted(6) {
                bench::engine(&binary, size, &mut report).await?;
            }
            if wanted(4) {
                bench::scheduler(&binary, size, &mut report).await?;
            }
            if wanted(5) {
                bench::rollback(&binary, size, &mut report).await?;
            }
            if wanted(7) && size.dashboard {
                bench::dashboard(&mut report)?;
            }
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let output = output.unwrap_or_else(|| {
                if quick {
                    PathBuf::from("-")
                } else {
                    support::workspace_root().join("docs/BENCHMARKS.md")
                }
            });
            if output.as_os_str() != "-" {
                markdown::write(&output, &report, &command, started)?;
                println!("wrote {}", output.display());
            }
            Ok(())
        }
        Command::Harness { short: _, long } => {
            let form = if long {
                harness::Form::Long
            } else {
                harness::Form::Short
            };
            harness::run(form).await
        }
        Command::BareServer => bench::bare_server().await,
    }
}

//! `bench`: the Wasm path against native and against the broker's limit.
//! `make bench` runs it in full and writes docs/BENCHMARKS.md; `--smoke`
//! proves in CI that it still runs, with tiny counts and no figures kept.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(Clone, clap::Parser)]
#[command(about, version)]
struct Args {
    /// Tiny counts, one run, results to target/bench-smoke.md: proves the harness works.
    #[arg(long)]
    smoke: bool,
    /// The broker.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    amqp_url: String,
    /// host-bridge binary to measure.
    #[arg(long, default_value = "target/release/host-bridge")]
    bridge: PathBuf,
    /// wasmtime-cli to host the components (`wasmtime serve`, as `make up`).
    #[arg(long, env = "WASMTIME")]
    wasmtime: Option<PathBuf>,
    /// Requests or jobs per measured run.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Measured runs per case.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the report goes.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
}

fn machine(options: &bench::Options) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    let cmd = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let wasm_host = match &options.wasmtime {
        Some(w) => format!(
            "`wasmtime serve -Scli` ({})",
            cmd(&w.to_string_lossy(), &["--version"])
        ),
        None => "in-process wasmtime 48.0.8 (smoke mode: wasmtime-cli not installed)".to_owned(),
    };
    format!(
        "- CPU: {cpu}, {} cores\n- memory: {mem} GiB\n- kernel: {}\n- {}\n- RabbitMQ: {} (local, quorum queue, single node)\n- components hosted by {wasm_host}\n- host-bridge: `{}`",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cmd("uname", &["-r"]),
        cmd("rustc", &["-V"]),
        cmd("rabbitmqctl", &["version"]),
        options.bridge.display(),
    )
}

impl Args {
    /// The run these flags ask for, or the flag that is missing.
    fn options(&self) -> Result<bench::Options, &'static str> {
        let args = self.clone();
        Ok(if args.smoke {
            bench::Options {
                amqp_url: args.amqp_url,
                bridge: args.bridge,
                wasmtime: args.wasmtime,
                count: 40,
                runs: 1,
                concurrency: vec![1, 4],
                prefetch: vec![1, 4],
            }
        } else {
            bench::Options {
            amqp_url: args.amqp_url,
            bridge: args.bridge,
            wasmtime: Some(args.wasmtime.ok_or(
                "--wasmtime (or WASMTIME) is required: the full run hosts components with wasmtime serve",
            )?),
            count: args.count,
            runs: args.runs,
            concurrency: vec![1, 16, 64],
            prefetch: vec![1, 8, 32],
        }
        })
    }
}

fn main() -> ExitCode {
    let args: Args = cli_contract::parse("bench");
    let options = match args.options() {
        Ok(options) => options,
        Err(missing) => return cli_contract::usage("bench", missing),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return cli_contract::failure("bench", &e.into()),
    };
    match runtime.block_on(run(args, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli_contract::failure("bench", &e),
    }
}

async fn run(args: Args, options: bench::Options) -> Result<()> {
    let results = bench::run(&options).await?;
    let machine = machine(&options);
    let report = bench::report(&results, &options, &machine);
    println!("{report}");
    let out = if args.smoke {
        PathBuf::from("target/bench-smoke.md")
    } else {
        args.out
    };
    let head = "# Benchmarks\n\nMeasured by `make bench` (the `bench` crate): one run, one machine, side by side. \
                Goals and findings are in the last section, written by hand from these figures.\n\n";
    let notes_marker = "\n## Findings\n";
    // Keep the hand-written findings across re-runs.
    let notes = std::fs::read_to_string(&out)
        .ok()
        .and_then(|t| t.find(notes_marker).map(|i| t[i..].to_owned()))
        .unwrap_or_default();
    std::fs::write(&out, format!("{head}{report}{notes}"))
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

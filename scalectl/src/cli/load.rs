//! `scalectl load`: flags to `load::LoadOptions`, a progress bar, the summary.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub(super) struct LoadArgs {
    /// The /generate URL.
    #[arg(
        long,
        env = "SCALECTL_URL",
        default_value = "http://127.0.0.1:3000/generate"
    )]
    url: String,
    /// Requests per second, e.g. 20/s or 600/m; without it, a closed loop at --concurrency.
    #[arg(long, env = "SCALECTL_LOAD_RATE", value_parser = crate::load::parse_rate)]
    rate: Option<f64>,
    /// Requests in flight at most.
    #[arg(long, env = "SCALECTL_LOAD_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Stop after this many requests.
    #[arg(long, env = "SCALECTL_COUNT")]
    count: Option<u64>,
    /// Stop after this long, e.g. 30s.
    #[arg(long, env = "SCALECTL_DURATION", value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Write the accepted job ids here, one per line.
    #[arg(long, env = "SCALECTL_IDS")]
    ids: Option<PathBuf>,
}

pub(super) fn run(args: LoadArgs) -> anyhow::Result<()> {
    let options = crate::load::LoadOptions {
        url: args.url,
        rate: args.rate,
        concurrency: usize::from(args.concurrency),
        count: args.count,
        duration: args.duration,
        timeout: std::time::Duration::from_secs(30),
    };
    let bar = match options.count {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos} sent  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let summary = runtime.block_on(crate::load::run(&options, Some(bar.clone()), async {
        // Ctrl-C stops sending; the summary covers what was sent.
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    bar.finish_and_clear();
    println!("{}", summary.render());
    if let Some(path) = args.ids {
        std::fs::write(&path, summary.ids.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("accepted ids written to {}", path.display());
    }
    Ok(())
}

//! `wasm-oci COMPONENT.wasm LAYOUT_DIR --tag TAG`: writes the component as
//! an OCI artifact layout (see the library).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Writes a Wasm component as an OCI artifact (application/wasm layer) in an
/// OCI image layout directory.
#[derive(clap::Parser)]
#[command(version)]
struct Args {
    /// The component (.wasm).
    component: PathBuf,
    /// The OCI layout directory to write (replaced if it exists).
    layout: PathBuf,
    /// The tag to record in the layout's index.
    #[arg(long, env = "TAG", default_value = "latest")]
    tag: String,
}

fn main() -> ExitCode {
    match run(cli_contract::parse("wasm-oci")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli_contract::failure("wasm-oci", &e),
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let wasm = std::fs::read(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?;
    let artifact =
        wasm_oci::Artifact::new(wasm).with_context(|| format!("{}", args.component.display()))?;
    let manifest = artifact.write_layout(&args.layout, &args.tag)?;
    println!(
        "wasm-oci: {} -> oci:{}:{} ({})",
        args.component.display(),
        args.layout.display(),
        args.tag,
        manifest.digest
    );
    Ok(())
}

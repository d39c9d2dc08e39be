//! The component images as `make images` builds them (buildah, no daemon):
//! one OCI manifest for wasi/wasm, one layer holding exactly spin.toml and
//! the .wasm, both byte-identical to what the repo builds, and an entrypoint
//! for runwasi's wasmtime shim.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| {
        format!(
            "{} is missing: build the images first (`make images`)",
            path.display()
        )
    })?;
    Ok(serde_json::from_slice(&text)?)
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[test]
fn component_images_hold_only_spin_toml_and_the_wasm() -> Result<()> {
    for name in ["producer", "worker"] {
        let layout = PathBuf::from(ROOT).join("target/images").join(name);
        let index = read_json(&layout.join("index.json"))?;
        let manifests = index["manifests"].as_array().context("index.manifests")?;
        ensure!(
            manifests.len() == 1,
            "{name}: one manifest, not a multi-platform index"
        );
        assert_eq!(
            manifests[0]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        let manifest = read_json(&blob(
            &layout,
            manifests[0]["digest"].as_str().unwrap_or_default(),
        ))?;
        let config = read_json(&blob(
            &layout,
            manifest["config"]["digest"].as_str().unwrap_or_default(),
        ))?;
        assert_eq!(
            (config["os"].as_str(), config["architecture"].as_str()),
            (Some("wasi"), Some("wasm")),
            "{name}"
        );
        let entrypoint = config["config"]["Entrypoint"].clone();
        assert_eq!(
            entrypoint,
            serde_json::json!([format!("/{name}.wasm")]),
            "{name}"
        );

        let mut files = BTreeMap::new();
        for layer in manifest["layers"].as_array().context("layers")? {
            assert_eq!(
                layer["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            let bytes = std::fs::read(blob(&layout, layer["digest"].as_str().unwrap_or_default()))?;
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
            for entry in archive.entries()? {
                let mut entry = entry?;
                if entry.header().entry_type().is_dir() {
                    continue;
                }
                let path = entry
                    .path()?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .to_owned();
                let mut content = Vec::new();
                entry.read_to_end(&mut content)?;
                files.insert(path, content);
            }
        }
        let wasm = format!("{name}.wasm");
        assert_eq!(
            files.keys().cloned().collect::<Vec<_>>(),
            {
                let mut expected = vec!["spin.toml".to_owned(), wasm.clone()];
                expected.sort();
                expected
            },
            "{name}: the image holds nothing else"
        );
        let spin_toml = std::fs::read(format!("{ROOT}/components/{name}/spin.toml"))?;
        assert!(
            files["spin.toml"] == spin_toml,
            "{name}: spin.toml differs from the repo's"
        );
        let built = std::fs::read(testkit::wasm::wasm_path(name))?;
        assert!(
            files[&wasm] == built,
            "{name}: the .wasm differs from the build"
        );
        // The manifest in the image points at the .wasm beside it.
        let app: toml::Value = toml::from_str(std::str::from_utf8(&files["spin.toml"])?)?;
        assert_eq!(
            app["component"][name]["source"].as_str(),
            Some(wasm.as_str())
        );
    }
    Ok(())
}

//! The component images as `make images` builds them, with no daemon:
//! - the spin shim's shape (buildah): one OCI manifest for wasi/wasm, one
//!   layer holding exactly spin.toml and the .wasm, both byte-identical to
//!   what the repo builds;
//! - the Wasm artifact (wasm-oci) that runwasi's shims precompile: the
//!   component as an `application/wasm` layer, with the wasm-oci config,
//!   pushed to a real registry and read back unchanged.

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

/// Reads a blob and checks that its bytes hash to its name.
fn verified_blob(layout: &Path, descriptor: &Value) -> Result<Vec<u8>> {
    let digest = descriptor["digest"].as_str().context("digest")?;
    let bytes = std::fs::read(blob(layout, digest))?;
    ensure!(
        wasm_oci::digest(&bytes) == digest,
        "blob {digest} is corrupt"
    );
    ensure!(
        descriptor["size"].as_u64() == Some(bytes.len() as u64),
        "blob {digest}: wrong size"
    );
    Ok(bytes)
}

#[test]
fn component_artifacts_carry_the_wasm_as_a_layer_the_shims_precompile() -> Result<()> {
    for name in ["producer", "worker"] {
        let layout = PathBuf::from(ROOT).join(format!("target/images/{name}-wasm"));
        let index = read_json(&layout.join("index.json"))?;
        let manifests = index["manifests"].as_array().context("index.manifests")?;
        ensure!(manifests.len() == 1, "{name}: one manifest");
        let tag = |index: &Value| {
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"].clone()
        };
        let spin_index = read_json(
            &PathBuf::from(ROOT)
                .join("target/images")
                .join(name)
                .join("index.json"),
        )?;
        assert_eq!(
            tag(&index),
            tag(&spin_index),
            "{name}: the same tag as the spin-shim image"
        );
        let manifest: Value = serde_json::from_slice(&verified_blob(&layout, &manifests[0])?)?;
        assert_eq!(manifest["mediaType"], wasm_oci::MANIFEST_MEDIA_TYPE);
        // runwasi's containerd-shim-wasm (supported_layers_types) and
        // containerd-shim-spin both precompile exactly this layer type.
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.wasm.config.v0+json"
        );
        let layers = manifest["layers"].as_array().context("layers")?;
        ensure!(layers.len() == 1, "{name}: one layer");
        assert_eq!(layers[0]["mediaType"], "application/wasm", "{name}");
        let wasm = verified_blob(&layout, &layers[0])?;
        assert!(
            wasm == std::fs::read(testkit::wasm::wasm_path(name))?,
            "{name}: the layer is the built component, byte for byte"
        );
        let config: Value = serde_json::from_slice(&verified_blob(&layout, &manifest["config"])?)?;
        // runwasi reads the config as a platform: architecture must be wasm.
        assert_eq!(
            (config["architecture"].as_str(), config["os"].as_str()),
            (Some("wasm"), Some("wasip2")),
            "{name}"
        );
        assert_eq!(
            config["layerDigests"],
            serde_json::json!([layers[0]["digest"]])
        );
        let listed = |key: &str| -> Vec<String> {
            config["component"][key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        assert_eq!(
            listed("exports"),
            vec!["wasi:http/incoming-handler@0.2.0".to_owned()],
            "{name}: a wasi:http proxy, which the wasmtime shim serves"
        );
        // The config lists what the component imports: wasi only, as
        // testkit's own reading of the component says.
        let mut imports = listed("imports");
        imports.sort();
        let mut expected = testkit::wasm::imports(name)?;
        expected.sort();
        assert_eq!(imports, expected, "{name}");
        assert!(
            imports.iter().all(|i| i.starts_with("wasi:")),
            "{imports:?}"
        );
    }
    Ok(())
}

/// A real registry (Debian's docker-registry) on a free loopback port, with
/// its storage in a temporary directory; killed on drop.
struct Registry {
    child: std::process::Child,
    addr: String,
    storage: PathBuf,
}

impl Registry {
    fn start() -> Result<Self> {
        let port = testkit::process::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let dir = std::env::temp_dir().join(format!("wasm-jobs-registry-{port}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )?;
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("docker-registry is needed (make test-tools installs it)")?;
        let registry = Self {
            child,
            addr,
            storage: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            ensure!(
                std::time::Instant::now() < deadline,
                "the registry did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(registry)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.storage);
    }
}

fn skopeo(args: &[&str]) -> Result<Vec<u8>> {
    let out = std::process::Command::new("skopeo")
        .args(args)
        .output()
        .context("skopeo is needed (make test-tools installs it)")?;
    ensure!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

#[test]
fn component_artifacts_push_to_a_registry_unchanged() -> Result<()> {
    let registry = Registry::start()?;
    for name in ["producer", "worker"] {
        let layout = PathBuf::from(ROOT).join(format!("target/images/{name}-wasm"));
        let index = read_json(&layout.join("index.json"))?;
        let local = &index["manifests"][0];
        let tag = local["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .context("tag")?;
        let remote = format!("docker://{}/wasm-jobs-{name}-wasm:{tag}", registry.addr);
        skopeo(&[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &remote,
        ])?;
        // What a node would pull: the same manifest, byte for byte, so the
        // media types the shims look for survive the push.
        let pulled = skopeo(&["inspect", "--raw", "--tls-verify=false", &remote])?;
        assert_eq!(
            wasm_oci::digest(&pulled),
            local["digest"].as_str().context("digest")?,
            "{name}: the registry serves the manifest unchanged"
        );
    }
    Ok(())
}

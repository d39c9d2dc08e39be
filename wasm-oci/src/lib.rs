//! wasm-oci: a Wasm component as an OCI artifact in the shape the CNCF TAG
//! Runtime's wasm-oci layout gives it (what `wkg oci push` writes): one
//! `application/wasm` layer holding the component's bytes, untarred, and a
//! config of media type `application/vnd.wasm.config.v0+json` that says
//! `architecture: wasm`, `os: wasip2` and lists the component's imports and
//! exports.
//!
//! Why this shape: runwasi's shims (containerd-shim-wasm's
//! `supported_layers_types`) and containerd-shim-spin both accept an
//! `application/wasm` layer and precompile it once per node into
//! containerd's content store; a plain tar image holding a `.wasm` is
//! compiled again at every container start.
//!
//! The output is an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), which `skopeo copy oci:DIR:TAG docker://…` pushes. It
//! is reproducible: the same component gives the same digests (the config's
//! `created` is fixed; its `layerDigests` keep each config distinct, as the
//! layout requires).

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The manifest's media type (a plain OCI image manifest).
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config's media type in the wasm-oci layout.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The layer's media type: the component's bytes as they are.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The index annotation that names a manifest's tag in a layout.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// A fixed creation time, so that the same component gives the same digest.
const CREATED: &str = "1970-01-01T00:00:00Z";

/// Why an artifact could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes do not parse as Wasm.
    #[error("not a Wasm binary: {0}")]
    Parse(#[from] wasmparser::BinaryReaderError),
    /// The bytes are a core module: the shims serve components.
    #[error("a core Wasm module, not a component (build for wasm32-wasip2)")]
    NotAComponent,
    /// Writing the layout failed.
    #[error("writing {path}: {source}")]
    Io {
        /// What was being written.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The component's world as the config states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Component {
    /// Top-level export names, e.g. `wasi:http/incoming-handler@0.2.0`.
    pub exports: Vec<String>,
    /// Top-level import names.
    pub imports: Vec<String>,
    /// No target world is named (optional in the layout).
    pub target: Option<String>,
}

/// Reads the top-level imports and exports of a component (not those of
/// the core modules or components nested in it).
pub fn component(wasm: &[u8]) -> Result<Component, Error> {
    use wasmparser::{Encoding, Parser, Payload};
    let mut found = Component {
        exports: vec![],
        imports: vec![],
        target: None,
    };
    // parse_all flattens nested modules and components: each starts with a
    // Version payload and ends with End, so depth 1 is the outer component.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding != Encoding::Component {
                    return Err(Error::NotAComponent);
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    found.imports.push(import?.name.0.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    found.exports.push(export?.name.0.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// `sha256:<hex>` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A content descriptor: what a manifest or index points at.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The blob's media type.
    pub media_type: String,
    /// `sha256:…` of the blob.
    pub digest: String,
    /// The blob's length in bytes.
    pub size: u64,
    /// Annotations (the tag, in an index).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl Descriptor {
    fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: digest(bytes),
            size: bytes.len() as u64,
            annotations: Default::default(),
        }
    }
}

/// The three blobs of an artifact, serialized.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The config blob (JSON).
    pub config: Vec<u8>,
    /// The layer blob: the component itself.
    pub layer: Vec<u8>,
    /// The manifest blob (JSON).
    pub manifest: Vec<u8>,
}

impl Artifact {
    /// Builds the artifact for a component.
    pub fn new(wasm: Vec<u8>) -> Result<Self, Error> {
        let world = component(&wasm)?;
        let layer = Descriptor::of(LAYER_MEDIA_TYPE, &wasm);
        let config = serde_json::to_vec(&serde_json::json!({
            "created": CREATED,
            "author": null,
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer.digest],
            "component": world,
        }))
        .expect("JSON values serialize");
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": Descriptor::of(CONFIG_MEDIA_TYPE, &config),
            "layers": [layer],
        }))
        .expect("JSON values serialize");
        Ok(Self {
            config,
            layer: wasm,
            manifest,
        })
    }

    /// Writes the artifact as an OCI image layout at `dir` (replacing what
    /// was there), tagged `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<Descriptor, Error> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| Error::Io { path, source }
        };
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        for blob in [&self.config, &self.layer, &self.manifest] {
            let path = blobs.join(digest(blob).trim_start_matches("sha256:"));
            std::fs::write(&path, blob).map_err(io(&path))?;
        }
        let mut manifest = Descriptor::of(MANIFEST_MEDIA_TYPE, &self.manifest);
        manifest.annotations.insert(REF_NAME.into(), tag.into());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [manifest],
        });
        for (name, value) in [
            (
                "oci-layout",
                serde_json::json!({ "imageLayoutVersion": "1.0.0" }),
            ),
            ("index.json", index),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, value.to_string()).map_err(io(&path))?;
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_module_is_refused() {
        // The smallest core module: magic and version 1.
        let module = b"\0asm\x01\0\0\0".to_vec();
        assert!(matches!(Artifact::new(module), Err(Error::NotAComponent)));
        assert!(matches!(
            Artifact::new(b"not wasm".to_vec()),
            Err(Error::Parse(_))
        ));
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(
            digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

//! spin.toml agrees with the code: the components' sources, their
//! environment (which they read, and only that), the producer's outbound
//! allow-list (exactly the bridge's publish address) and the routes the
//! bridge pushes to.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use clap::Parser;
use toml::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn manifest() -> Result<Value> {
    let text = std::fs::read_to_string(format!("{ROOT}/spin.toml")).context("spin.toml")?;
    Ok(toml::from_str(&text)?)
}

/// The environment variable names a component's source reads, from its
/// `*_ENV: &str = "..."` constants.
fn env_names_read_by(component: &str) -> Result<BTreeSet<String>> {
    let source = std::fs::read_to_string(format!("{ROOT}/components/{component}/src/lib.rs"))?;
    Ok(source
        .lines()
        .filter(|l| l.trim_start().starts_with("const ") && l.contains("_ENV: &str"))
        .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
        .collect())
}

#[test]
fn components_get_exactly_the_environment_they_read() -> Result<()> {
    let manifest = manifest()?;
    for name in ["producer", "worker"] {
        let component = &manifest["component"][name];
        let source = component["source"].as_str().unwrap_or_default();
        assert_eq!(source, format!("target/wasm32-wasip2/release/{name}.wasm"));
        let given: BTreeSet<String> = component["environment"]
            .as_table()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(given, env_names_read_by(name)?, "{name}'s environment");
    }
    Ok(())
}

#[test]
fn producer_may_reach_exactly_the_bridge() -> Result<()> {
    let manifest = manifest()?;
    let producer = &manifest["component"]["producer"];
    let allowed: Vec<&str> = producer["allowed_outbound_hosts"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let bridge = host_bridge::Config::try_parse_from(["host-bridge"])?;
    let origin = format!("http://{}", bridge.publish_addr);
    assert_eq!(allowed, vec![origin.as_str()]);
    for (key, path) in [
        ("BRIDGE_PUBLISH_URL", "/v1/publish"),
        ("BRIDGE_OBSERVE_URL", "/v1/observe"),
    ] {
        assert_eq!(
            producer["environment"][key].as_str(),
            Some(format!("{origin}{path}").as_str())
        );
    }
    let worker = &manifest["component"]["worker"];
    assert_eq!(
        worker["allowed_outbound_hosts"].as_array().map(Vec::len),
        Some(0)
    );
    Ok(())
}

#[test]
fn the_bridge_pushes_to_the_workers_route() -> Result<()> {
    let routes = routes(&manifest()?)?;
    assert!(
        routes.contains(&("/generate".into(), "producer".into())),
        "{routes:?}"
    );
    let bridge = host_bridge::Config::try_parse_from(["host-bridge"])?;
    let worker_path = reqwest::Url::parse(&bridge.worker_url)?.path().to_owned();
    assert!(
        routes.contains(&(worker_path, "worker".into())),
        "{routes:?}"
    );
    Ok(())
}

#[test]
fn image_manifests_configure_each_component_as_the_local_app_does() -> Result<()> {
    let local = manifest()?;
    for name in ["producer", "worker"] {
        let text = std::fs::read_to_string(format!("{ROOT}/components/{name}/spin.toml"))?;
        let image: Value = toml::from_str(&text)?;
        let (a, b) = (&local["component"][name], &image["component"][name]);
        for key in ["environment", "allowed_outbound_hosts"] {
            assert_eq!(
                a.get(key),
                b.get(key),
                "{name}.{key}: image vs local spin.toml"
            );
        }
        assert_eq!(b["source"].as_str(), Some(format!("{name}.wasm").as_str()));
        let components: Vec<&String> = image["component"]
            .as_table()
            .map(|t| t.keys().collect())
            .unwrap_or_default();
        assert_eq!(components, vec![name], "one component per image");
    }
    Ok(())
}

/// The tests run `wasmtime serve` as `make up` does: `scripts/up.sh` gives
/// both components exactly [`testkit::runtime::SERVE_FLAGS`].
#[test]
fn the_tests_serve_with_the_flags_make_up_uses() -> Result<()> {
    let script = std::fs::read_to_string(format!("{ROOT}/scripts/up.sh"))?;
    let flags = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("serve_flags=("))
        .and_then(|l| l.strip_suffix(')'))
        .context("a serve_flags=(...) line in up.sh")?;
    let flags: Vec<&str> = flags.split_whitespace().collect();
    assert_eq!(flags, testkit::runtime::SERVE_FLAGS);
    let uses = script.matches(r#"serve "${serve_flags[@]}""#).count();
    assert_eq!(uses, 2, "both components are served with them");
    Ok(())
}

/// The routes of a Spin manifest, as (route, component).
fn routes(manifest: &Value) -> Result<Vec<(String, String)>> {
    Ok(manifest["trigger"]["http"]
        .as_array()
        .context("[[trigger.http]]")?
        .iter()
        .map(|t| {
            let get = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            (get("route"), get("component"))
        })
        .collect())
}

/// Under `spin up` (and in the producer's image) every path that is not
/// `/generate` or `/work` reaches the producer, whose answer is a JSON 404
/// (`components.rs` checks that answer), never Spin's empty one.
#[test]
fn unknown_paths_reach_the_producer_in_every_app() -> Result<()> {
    let catch_all = ("/...".to_owned(), "producer".to_owned());
    let local = routes(&manifest()?)?;
    assert!(local.contains(&catch_all), "{local:?}");
    let text = std::fs::read_to_string(format!("{ROOT}/components/producer/spin.toml"))?;
    let image = routes(&toml::from_str(&text)?)?;
    assert!(image.contains(&catch_all), "{image:?}");
    // Nothing else catches all: the worker is reached at /work only.
    assert!(
        local
            .iter()
            .all(|(r, c)| c == "producer" || !r.contains("...")),
        "{local:?}"
    );
    Ok(())
}

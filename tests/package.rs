//! The Debian package's inputs: every asset Cargo.toml's
//! `[package.metadata.deb]` lists exists (the generated ones once
//! scripts/gen-assets.sh has run), and it installs the binary, the conffile,
//! the unit, the man page and the completions. `cargo deb` itself is not run
//! here: installing cargo-deb takes minutes.

mod common;

use std::path::Path;
use std::process::Command;

use common::{binary, TempDir};

const MANIFEST: &str = include_str!("../Cargo.toml");

#[test]
fn every_deb_asset_exists_once_generated() {
    let out = TempDir::new("assets");
    let status = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/gen-assets.sh"
        ))
        .args([binary(), out.0.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "gen-assets.sh: {status}");
    let status = Command::new("gzip")
        .arg("-t")
        .arg(out.0.join("ringlb.8.gz"))
        .status()
        .unwrap();
    assert!(status.success(), "the man page is not gzip");

    let manifest: toml::Value = toml::from_str(MANIFEST).unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("[package.metadata.deb] assets");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut installed = Vec::new();
    for asset in assets {
        let source = asset[0].as_str().unwrap();
        let path = match source {
            // The release build is not made here; the debug one stands in.
            "target/release/ringlb" => binary().into(),
            _ => match source.strip_prefix("target/assets/") {
                Some(name) => out.0.join(name),
                None => root.join(source),
            },
        };
        let len = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("deb asset {source} ({}): {e}", path.display()))
            .len();
        assert!(len > 0, "deb asset {source} is empty");
        installed.push(asset[1].as_str().unwrap().to_string());
    }
    for dest in [
        "usr/bin/",
        "etc/ringlb/ringlb.toml",
        "lib/systemd/system/ringlb.service",
        "lib/systemd/system/ringlb@.service",
        "usr/share/man/man8/ringlb.8.gz",
        "usr/share/bash-completion/completions/ringlb",
        "usr/share/zsh/vendor-completions/_ringlb",
        "usr/share/fish/vendor_completions.d/ringlb.fish",
    ] {
        assert!(
            installed.iter().any(|d| d == dest),
            "the package lacks {dest}"
        );
    }
}

//! Both binaries refuse at start, with a clear error, what the shared settings' validators
//! refuse: here a region steering could never match (`EU`, where viewers hint `eu`).

use std::process::Command;

use streamhub_testkit::binary::{edge_binary, origin_binary};

fn refused(bin: std::path::PathBuf, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(
        !out.status.success(),
        "{} started with {args:?}",
        bin.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_region_steering_cannot_match_is_refused_by_both_binaries() {
    for bin in [origin_binary(), edge_binary()] {
        let err = refused(bin.clone(), &["--region", "EU", "--node-id", "n1"]);
        assert!(
            err.contains("invalid region") && err.contains("\"eu\""),
            "{}: {err}",
            bin.display()
        );
    }
}

#[test]
fn unknown_keys_in_the_config_file_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "region = \"eu\"\nreplicas = 3\n").unwrap();
    for bin in [origin_binary(), edge_binary()] {
        let err = refused(bin.clone(), &["--config", file.to_str().unwrap()]);
        assert!(err.contains("replicas"), "{}: {err}", bin.display());
    }
}

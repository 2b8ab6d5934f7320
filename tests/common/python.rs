//! Outside implementations the tests check pulsewatch against, run as Python scripts under
//! `tests/interop/` in the environment `scripts/python-env` makes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The interpreter of the tests' Python environment, made by `scripts/python-env`.
pub fn python() -> PathBuf {
    let out = Command::new(root().join("scripts/python-env")).output().expect("scripts/python-env runs");
    assert!(out.status.success(), "scripts/python-env: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs `tests/interop/SCRIPT ARGS` with `input` on its stdin; its stdout lines.
pub fn run(script: &str, args: &[&str], input: &str) -> Vec<String> {
    let mut child = Command::new(python())
        .arg(root().join("tests/interop").join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

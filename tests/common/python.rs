//! Python tools for tests: one venv per pinned requirement set under
//! `target/`, created on first use and reused while the pins are unchanged.

use std::path::PathBuf;
use std::process::Command;

/// The venv `target/<name>` with exactly `requirements` (pip pins)
/// installed; its `bin/` directory. Creation is serialised: two tests
/// building one venv at once break each other.
pub fn venv(name: &str, requirements: &[&str]) -> PathBuf {
    static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _creating = SETUP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name);
    let marker = venv.join("tollgate-requirements.txt");
    let wanted = requirements.join("\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return venv.join("bin");
    }
    // `--clear`: a venv built for other pins starts empty again.
    let status = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .expect("python3 is needed for this test");
    assert!(status.success(), "python3 -m venv {name} failed");
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(requirements)
        .status()
        .expect("pip");
    assert!(status.success(), "pip install {requirements:?} failed");
    std::fs::write(&marker, wanted).expect("venv marker");
    venv.join("bin")
}

//! The control-plane build script fails loudly and leaves nothing behind
//! that a later run would take for a finished build.

use std::process::Command;

use cellule_e2e::repo_path;

#[test]
fn a_module_the_proxy_does_not_serve_stops_the_build_with_its_name() {
    let dir = std::env::temp_dir().join(format!("cellule-bogus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let versions = std::fs::read_to_string(repo_path("e2e/versions.env")).unwrap();
    let bogus: String = versions
        .lines()
        .map(|l| {
            if l.starts_with("CRANE_VERSION=") {
                "CRANE_VERSION=v0.0.0-cellule-bogus".to_owned()
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let file = dir.join("versions.env");
    std::fs::write(&file, bogus).unwrap();

    // Same cache as the real build: every other tool is already there, so
    // only crane is attempted.
    let out = Command::new("bash")
        .arg(repo_path("e2e/scripts/build-tools.sh"))
        .env("CELLULE_E2E_VERSIONS", &file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the build succeeded with a bogus crane version:\n{stderr}"
    );
    assert!(
        stderr.contains("build of crane@v0.0.0-cellule-bogus failed"),
        "{stderr}"
    );
    let cache = std::path::PathBuf::from(
        std::env::var("XDG_CACHE_HOME")
            .unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap())),
    );
    let tool_dir = cache.join("cellule-e2e/tools/crane@v0.0.0-cellule-bogus-r1");
    assert!(!tool_dir.exists(), "a failed build left {tool_dir:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

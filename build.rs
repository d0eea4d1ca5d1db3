//! Records the git commit the binary is built from (`--version`,
//! `mixpanel_rotator_build_info`): `unknown` outside a git checkout (a
//! source tarball, the Dockerfile's build stage).

fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()));
    // The commit checked out, not whether the tree differs from it (that
    // would need a rerun at every edit).
    let value = commit.unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=MIXPANEL_ROTATOR_COMMIT={value}");
    for path in [".git/HEAD", ".git/refs", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

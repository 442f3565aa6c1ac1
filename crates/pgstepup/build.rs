//! Release builds on Linux link the relay's hot functions (`hot-functions.txt`) first and
//! together, with LLD's symbol ordering: otherwise a session's wake-up runs code from about 40
//! pages spread over the binary, and fetches their lines and translations again every time
//! PostgreSQL and the clients have had the core (benches/RESULTS.md has what it saves). On
//! x86_64-unknown-linux-gnu rustc links with its own LLD (since 1.90); elsewhere an ld.lld on
//! PATH is asked for, and without one the binary links as usual and cargo says why.
//! `PGSTEPUP_LINK_ORDER=0` links as usual too, for comparisons.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=hot-functions.txt");
    println!("cargo:rerun-if-env-changed=PGSTEPUP_LINK_ORDER");
    println!("cargo:rerun-if-env-changed=PATH");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let wanted = std::env::var("PGSTEPUP_LINK_ORDER").map_or(true, |v| v != "0");
    if !(release && linux && wanted) {
        return;
    }
    let rustc_links_with_lld =
        std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    if !rustc_links_with_lld {
        if !on_path("ld.lld") {
            println!(
                "cargo:warning=ld.lld not found: the relay's hot code is linked where it falls, \
                 which costs it some speed (install LLD)"
            );
            return;
        }
        println!("cargo:rustc-link-arg-bins=-fuse-ld=lld");
    }
    let order = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("hot-functions.txt");
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    // Names a newer build no longer has are skipped, silently: the file is regenerated from a
    // profile, not kept in step by hand.
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

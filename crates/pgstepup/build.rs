//! Release builds on Linux link the relay's hot functions (`hot-functions.txt`) first and
//! together, with LLD's symbol ordering: otherwise a session's wake-up runs code from about 40
//! pages spread over the binary, and fetches their lines and translations again every time
//! PostgreSQL and the clients have had the core (benches/RESULTS.md has what it saves). On
//! x86_64-unknown-linux-gnu rustc links with its own LLD (since 1.90); elsewhere an ld.lld on
//! PATH is asked for, and without one the binary links as usual and cargo says why.
//! `PGSTEPUP_LINK_ORDER=0` links as usual too, for comparisons. The decision is
//! `build/link_order.rs`.

#[path = "build/link_order.rs"]
mod link_order;

use std::path::Path;

use link_order::{layout, Build, Layout};

fn main() {
    println!("cargo:rerun-if-changed=hot-functions.txt");
    println!("cargo:rerun-if-changed=build/link_order.rs");
    println!("cargo:rerun-if-env-changed=PGSTEPUP_LINK_ORDER");
    println!("cargo:rerun-if-env-changed=PATH");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let order_file = Path::new(&var("CARGO_MANIFEST_DIR")).join("hot-functions.txt");
    let opt_out = std::env::var("PGSTEPUP_LINK_ORDER").ok();
    let build = Build {
        profile: &var("PROFILE"),
        target_os: &var("CARGO_CFG_TARGET_OS"),
        target: &var("TARGET"),
        opt_out: opt_out.as_deref(),
        lld_on_path: on_path("ld.lld"),
        order_file: &order_file.display().to_string(),
    };
    match layout(&build) {
        Layout::Unordered => {}
        Layout::NoLinker(why) => println!("cargo:warning={why}"),
        Layout::Ordered(args) => {
            for arg in args {
                println!("cargo:rustc-link-arg-bins={arg}");
            }
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

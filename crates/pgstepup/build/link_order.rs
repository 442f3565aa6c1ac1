//! What the build script asks of the linker for the hot-code layout, decided from the build's
//! facts alone, so a unit test can hold every case (`build.rs` gathers the facts).

/// The facts of one build that decide the layout.
pub struct Build<'a> {
    /// Cargo's `PROFILE`.
    pub profile: &'a str,
    /// Cargo's `CARGO_CFG_TARGET_OS`.
    pub target_os: &'a str,
    /// Cargo's `TARGET`.
    pub target: &'a str,
    /// `PGSTEPUP_LINK_ORDER`, if set (`0` turns the layout off, for comparisons).
    pub opt_out: Option<&'a str>,
    /// Whether an `ld.lld` is on PATH.
    pub lld_on_path: bool,
    /// The ordering file, `hot-functions.txt` beside the manifest.
    pub order_file: &'a str,
}

/// What the build script prints: link arguments for the binary, or why there are none.
#[derive(Debug, PartialEq, Eq)]
pub enum Layout {
    /// Not a release build for Linux, or turned off: the binary links as usual, silently.
    Unordered,
    /// Wanted, but no LLD to do it: linked as usual, with a cargo warning saying why.
    NoLinker(&'static str),
    /// These `-C link-arg`s for the binary.
    Ordered(Vec<String>),
}

/// rustc links with its own LLD on this target (since 1.90, the workspace's `rust-version`).
const RUSTC_LINKS_WITH_LLD: &str = "x86_64-unknown-linux-gnu";

pub fn layout(build: &Build<'_>) -> Layout {
    if build.profile != "release" || build.target_os != "linux" || build.opt_out == Some("0") {
        return Layout::Unordered;
    }
    let mut args = Vec::new();
    if build.target != RUSTC_LINKS_WITH_LLD {
        if !build.lld_on_path {
            return Layout::NoLinker(
                "ld.lld not found: the relay's hot code is linked where it falls, which costs \
                 it some speed (install LLD)",
            );
        }
        args.push("-fuse-ld=lld".to_owned());
    }
    args.push(format!("-Wl,--symbol-ordering-file={}", build.order_file));
    // Names a newer build no longer has are skipped, silently: the file is regenerated from a
    // profile, not kept in step by hand.
    args.push("-Wl,--no-warn-symbol-ordering".to_owned());
    Layout::Ordered(args)
}

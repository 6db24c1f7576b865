//! include/kestrel.h is what cbindgen makes of src/ffi.rs today: a stale committed header
//! fails here. `KESTREL_BLESS=1 cargo test --test c_header` rewrites it.

use std::path::Path;

#[test]
fn the_committed_c_header_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi.rs"))
        .generate()
        .expect("cbindgen reads src/ffi.rs");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let fresh = String::from_utf8(fresh).unwrap();
    let path = root.join("include/kestrel.h");
    if std::env::var("KESTREL_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/kestrel.h is stale: run `KESTREL_BLESS=1 cargo test --test c_header` and commit it"
    );
    for f in [
        "kestrel_controller_open",
        "kestrel_controller_step",
        "kestrel_controller_step_f32",
        "kestrel_controller_close",
        "kestrel_last_error",
    ] {
        assert!(fresh.contains(f), "{f} is in the header");
    }
}

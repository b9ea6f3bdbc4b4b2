// Links libphenix.so from $PHENIX_LIB_DIR (default: the checkout's target/release) and records that
// directory as the executable's run-time search path.
fn main() {
    let dir = std::env::var("PHENIX_LIB_DIR").unwrap_or_else(|_| {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        format!("{manifest}/../../../target/release")
    });
    println!("cargo:rerun-if-env-changed=PHENIX_LIB_DIR");
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-lib=dylib=phenix");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
}

// Bake libtorch's folder into the binaries' rpath so they run without LD_LIBRARY_PATH.
// torch-sys exports the folder to crates that depend on it directly (`links = "tch"`).
// Also compile csrc/ (what tch lacks: libtorch's per-device-type autocast switch, dropping a
// gradient, the fused AdamW kernel) against the headers of that same libtorch (`<libtorch>/include` beside `<libtorch>/lib`).
fn main() {
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-changed=csrc/grad.cpp");
    println!("cargo:rerun-if-changed=csrc/adamw.cpp");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not report libtorch's folder (DEP_TCH_LIBTORCH_LIB)");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let include = std::path::Path::new(&lib)
        .parent()
        .expect("libtorch's lib folder has a parent")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/autocast.cpp")
        .file("csrc/grad.cpp")
        .file("csrc/adamw.cpp")
        .include(&include)
        .flag("-std=c++17")
        .flag("-w")
        .compile("pco_csrc");
}

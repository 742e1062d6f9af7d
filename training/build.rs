// Bake libtorch's folder into the binaries' rpath so they run without LD_LIBRARY_PATH.
// torch-sys exports the folder to crates that depend on it directly (`links = "tch"`).
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}

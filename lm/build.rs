// torch-sys sets no rpath; embed the libtorch directory so binaries and tests run without
// LD_LIBRARY_PATH. `DEP_TCH_LIBTORCH_LIB` comes from torch-sys (links = "tch").
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}

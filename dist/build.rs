// Builds src/shim.cpp against the libtorch that torch-sys links (its `links = "tch"` metadata
// gives `DEP_TCH_LIBTORCH_LIB`; LIBTORCH is the fallback). The c10d symbols (TCPStore,
// ProcessGroupGloo, gloo itself) are exported by libtorch_cpu.so; only the gloo *headers*
// come from the system (Debian's libgloo-dev, installed by scripts/setup.sh).
//
// Feature `nccl`: also compiles ProcessGroupNCCL (`-DUSE_C10D_NCCL -DUSE_CUDA`), which needs
// the CUDA and NCCL headers: CUDA_INCLUDE / NCCL_INCLUDE (':'-separated lists) first, then
// the pip wheels next to torch (site-packages/nvidia/cu13/include, nvidia/nccl/include), then
// $CUDA_HOME/include; it links libtorch_cuda. torch's wheels lack two header sets the CUDA
// headers include: `crt/` (pip nvidia-cuda-crt) and `nv/target` (pip nvidia-cuda-cccl), e.g.
//   pip install --target /opt/cuh --no-deps "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*"
//   CUDA_INCLUDE=/opt/cuh/nvidia/cu13/include cargo build -p dist --features nccl
// (a full CUDA toolkit's $CUDA_HOME/include has both).
use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=src/shim.cpp");
    for v in [
        "LIBTORCH",
        "LIBTORCH_CXX11_ABI",
        "CUDA_INCLUDE",
        "NCCL_INCLUDE",
        "CUDA_HOME",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let lib = match env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => PathBuf::from(lib),
        Err(_) => match env::var("LIBTORCH") {
            Ok(root) => PathBuf::from(root).join("lib"),
            Err(_) => panic!("dist: neither DEP_TCH_LIBTORCH_LIB (torch-sys) nor LIBTORCH is set"),
        },
    };
    let root = lib
        .parent()
        .expect("libtorch lib dir has a parent")
        .to_path_buf();
    let include = root.join("include");
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file("src/shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("USE_C10D_GLOO", None)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .flag_if_supported("-Wno-missing-field-initializers")
        .warnings(false);
    if env::var_os("CARGO_FEATURE_NCCL").is_some() {
        build.define("USE_C10D_NCCL", None).define("USE_CUDA", None);
        for dir in cuda_includes(&root) {
            build.include(dir);
        }
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    build.compile("recthinker_dist_shim");

    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    // Binaries and tests of this crate find libtorch without LD_LIBRARY_PATH.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// CUDA runtime and NCCL include directories for the `nccl` feature.
fn cuda_includes(torch_root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for v in ["CUDA_INCLUDE", "NCCL_INCLUDE"] {
        if let Some(list) = env::var_os(v) {
            dirs.extend(env::split_paths(&list));
        }
    }
    // .venv/libtorch -> site-packages/torch: the nvidia wheels sit beside it.
    let real = torch_root
        .canonicalize()
        .unwrap_or_else(|_| torch_root.to_path_buf());
    if let Some(site) = real.parent() {
        for sub in [
            "nvidia/cu13/include",
            "nvidia/cuda_runtime/include",
            "nvidia/nccl/include",
        ] {
            let d = site.join(sub);
            if d.is_dir() {
                dirs.push(d);
            }
        }
    }
    if let Ok(home) = env::var("CUDA_HOME") {
        dirs.push(PathBuf::from(home).join("include"));
    }
    dirs
}

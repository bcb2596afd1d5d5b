//! Compiles the `c` backend's kernels (csrc/) when the `c-backend` feature is on.

fn main() {
    #[cfg(feature = "c-backend")]
    {
        println!("cargo:rerun-if-changed=csrc/gpt_rs_kernels.c");
        cc::Build::new()
            .file("csrc/gpt_rs_kernels.c")
            .opt_level(3)
            .flag_if_supported("-std=c99")
            .flag_if_supported("-fno-math-errno")
            .warnings(true)
            .compile("gpt_rs_kernels");
        println!("cargo:rustc-link-lib=m");
    }
}

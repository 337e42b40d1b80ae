//! Compiles the vendored libopus (float build, generic C: no SIMD dispatch) with the `cc` crate,
//! so the workspace builds with a C compiler and nothing else (no cmake, no system libopus).

use std::path::Path;

fn main() {
    let root = Path::new("vendor/libopus");
    let mut build = cc::Build::new();
    for dir in ["src", "celt", "silk", "silk/float"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("reading vendor/libopus/{dir}: {e}"))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "c"))
            .collect();
        // A stable order keeps the archive (and so the build) reproducible.
        files.sort();
        build.files(files);
    }
    build
        .includes(["include", "celt", "silk", "silk/float", "src"].map(|d| root.join(d)))
        .define("OPUS_BUILD", None)
        // C99 variable-length arrays for the codec's scratch space (what libopus's own build
        // picks on gcc and clang).
        .define("VAR_ARRAYS", None)
        .define("HAVE_LRINT", None)
        .define("HAVE_LRINTF", None)
        .define("PACKAGE_VERSION", "\"1.6.1\"")
        // libopus is built optimised even in debug builds: it runs per 20 ms of every room's
        // audio, and the tests transcode minutes of it.
        .opt_level(2)
        .warnings(false)
        .compile("opus");
    println!("cargo:rerun-if-changed=vendor/libopus");
}

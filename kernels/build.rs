//! Build script of the kernels crate (alexnet-kernels): owns the CUDA
//! kernels' device build (ARCHITECTURE.md, "Kernels").
//!
//! 1. Finds nvcc ($NVCC, else $CUDA_PATH/bin/nvcc, else `nvcc` on PATH;
//!    NVCC=none for no nvcc at all). When found, compiles each kernels/*.cu
//!    into a fatbin (PTX for a base architecture, SASS for common cards); a
//!    kernel that fails to compile fails the build with nvcc's message. When
//!    not found, warns that the kernels will be compiled at run time by
//!    NVRTC (an error instead when ALEXNET_REQUIRE_NVCC=1).
//! 2. Writes $OUT_DIR/kernels.rs, included by src/lib.rs: each kernel file's
//!    name, source (for NVRTC), fatbin (when nvcc ran) and the
//!    `extern "C" __global__` entry points it defines.
//!
//! The host build of the same sources (for tests) is another crate's,
//! kernels/host/, so that it stays out of what the program links.
//!
//! Kernel files cannot `#include` (NVRTC has no headers), so the device code
//! they share, kernels/prelude.cuh, is put in front of each: nvcc compiles,
//! and NVRTC gets, `$OUT_DIR/kernels/<name>.cu` = the prelude, a `#line`
//! directive, then kernels/<name>.cu (so messages name the right file and
//! line).
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// PTX for this architecture goes into every fatbin, so that drivers JIT it
/// for cards newer than the SASS below (CUDA 13 dropped everything older).
const PTX_ARCH: &str = "compute_75";
/// SASS for common cards: Ampere (A100, RTX 30), Ada (RTX 40, L4), Hopper.
/// Each is used only if this nvcc lists it (`--list-gpu-code`).
const SASS_ARCHS: &[&str] = &["sm_80", "sm_86", "sm_89", "sm_90"];

/// What to do when an nvcc is found but cannot build here.
const WITHOUT_NVCC: &str = "if nvcc itself cannot work here (an unsupported host compiler, \
    say), build without it, the kernels then compiled at run time by NVRTC: NVCC=none";

const SETUP_HINT: &str = "run scripts/setup-nvcc (installs nvcc into .cuda/ in this \
    repository and prints its path), then build with NVCC=<that path>; or set CUDA_PATH, \
    or put nvcc on PATH";

fn main() {
    // The whole folder, as the kernel files are found by listing it.
    println!("cargo:rerun-if-changed=.");
    for var in ["NVCC", "CUDA_PATH", "ALEXNET_REQUIRE_NVCC", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    // This crate's folder is kernels/: the .cu files sit beside Cargo.toml.
    let kernel_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let sources = prelude_sources(&kernel_dir, &kernel_sources(&kernel_dir), &out);

    let nvcc = find_nvcc();
    let mut fatbins = vec![None; sources.len()];
    let mut targets = Vec::new();
    match &nvcc {
        Some(nvcc) => {
            targets = gpu_targets(&nvcc.path);
            fatbins = compile_fatbins(&nvcc.path, &targets, &sources, &out);
        }
        None if required() && skipped() => panic!(
            "ALEXNET_REQUIRE_NVCC=1 asks for nvcc but NVCC=none builds without it: \
             unset one of the two (ALEXNET_REQUIRE_NVCC=0 to build for NVRTC)."
        ),
        None if required() => {
            panic!(
                "ALEXNET_REQUIRE_NVCC=1 but no working nvcc was found ($NVCC unless \
                 it is none, $CUDA_PATH/bin/nvcc, PATH). To get one: {SETUP_HINT}."
            );
        }
        None if skipped() => println!(
            "cargo:warning=NVCC=none: the CUDA kernels will be compiled at run time by NVRTC."
        ),
        None => println!(
            "cargo:warning=nvcc not found: the CUDA kernels will be compiled at run time \
             by NVRTC. To embed precompiled kernels: {SETUP_HINT}."
        ),
    }

    let generated = generate(nvcc.as_ref(), &targets, &sources, &fatbins);
    fs::write(out.join("kernels.rs"), generated).expect("write kernels.rs");
}

/// kernels/*.cu, sorted by name.
fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("read kernels/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .cu files in {}", dir.display());
    files
}

/// The shared device code put in front of every kernel file.
const PRELUDE: &str = "prelude.cuh";

/// Writes `$OUT_DIR/kernels/<name>.cu` for each kernel file: the prelude, then
/// the file, each after a `#line` directive naming its own path; returns
/// each as a `Source`.
fn prelude_sources(kernel_dir: &Path, files: &[PathBuf], out: &Path) -> Vec<Source> {
    let prelude_path = kernel_dir.join(PRELUDE);
    let prelude = fs::read_to_string(&prelude_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", prelude_path.display()));
    let dir = out.join("kernels");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    files
        .iter()
        .map(|file| {
            let text =
                fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            let combined = dir.join(file.file_name().unwrap());
            let body = format!(
                "#line 1 \"kernels/{PRELUDE}\"\n{prelude}\n#line 1 \"kernels/{}\"\n{text}",
                file.file_name().unwrap().to_string_lossy()
            );
            fs::write(&combined, body)
                .unwrap_or_else(|e| panic!("write {}: {e}", combined.display()));
            Source {
                original: file.clone(),
                text,
                combined,
            }
        })
        .collect()
}

/// A kernel file: its path in kernels/, its text, and the prelude + text
/// written to $OUT_DIR (what nvcc compiles and NVRTC gets).
struct Source {
    original: PathBuf,
    text: String,
    combined: PathBuf,
}

struct Nvcc {
    path: PathBuf,
    /// "13.2.86" from "Cuda compilation tools, release 13.2, V13.2.86".
    version: String,
}

/// ALEXNET_REQUIRE_NVCC=1: a build without nvcc is an error.
fn required() -> bool {
    env::var("ALEXNET_REQUIRE_NVCC").as_deref() == Ok("1")
}

/// NVCC=none: build without nvcc, whatever is on PATH.
fn skipped() -> bool {
    env::var_os("NVCC").is_some_and(|v| v == "none")
}

/// $NVCC, else $CUDA_PATH/bin/nvcc, else nvcc on PATH; the first that runs
/// `--version`; none for NVCC=none. A set $NVCC that does not run is an
/// error, not a fallback.
fn find_nvcc() -> Option<Nvcc> {
    if skipped() {
        return None;
    }
    if let Some(path) = env::var_os("NVCC").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return match nvcc_version(&path) {
            Some(version) => Some(Nvcc { path, version }),
            None => panic!(
                "NVCC={} does not run (`{} --version` failed); unset NVCC, point it at nvcc, or set NVCC=none to build without nvcc",
                path.display(),
                path.display()
            ),
        };
    }
    let mut candidates = Vec::new();
    if let Some(cuda) = env::var_os("CUDA_PATH").filter(|v| !v.is_empty()) {
        candidates.push(PathBuf::from(cuda).join("bin").join("nvcc"));
    }
    candidates.push(PathBuf::from("nvcc"));
    candidates
        .into_iter()
        .find_map(|path| nvcc_version(&path).map(|version| Nvcc { path, version }))
}

fn nvcc_version(path: &Path) -> Option<String> {
    let out = Command::new(path).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix('V')
                .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        })
        .unwrap_or("unknown");
    Some(version.to_string())
}

/// The fatbin's contents: PTX_ARCH as PTX, plus the SASS_ARCHS this nvcc knows.
fn gpu_targets(nvcc: &Path) -> Vec<String> {
    let listed = Command::new(nvcc)
        .arg("--list-gpu-code")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let known: Vec<&str> = listed.split_whitespace().collect();
    let mut targets = vec![PTX_ARCH.to_string()];
    for &sm in SASS_ARCHS {
        if known.contains(&sm) {
            targets.push(sm.to_string());
        } else {
            println!("cargo:warning=this nvcc cannot build {sm}; the fatbins omit its SASS");
        }
    }
    targets
}

/// `-gencode` flags for `targets` (compute_XX: PTX; sm_XX: SASS).
fn gencode_flags(targets: &[String]) -> Vec<String> {
    targets
        .iter()
        .flat_map(|t| {
            let arch = t.replace("sm_", "compute_");
            ["-gencode".to_string(), format!("arch={arch},code={t}")]
        })
        .collect()
}

/// nvcc -fatbin for every source (two at a time); returns each fatbin's path.
fn compile_fatbins(
    nvcc: &Path,
    targets: &[String],
    sources: &[Source],
    out: &Path,
) -> Vec<Option<PathBuf>> {
    let gencode = gencode_flags(targets);
    let compile = |source: &Source| -> Result<PathBuf, String> {
        let src = &source.original;
        let stem = src.file_stem().unwrap().to_string_lossy();
        let dst = out.join(format!("{stem}.fatbin"));
        let result = Command::new(nvcc)
            .arg("-fatbin")
            .arg("-O3")
            // No fused multiply-add contraction, as in the host build the
            // tests compare with the CPU bit for bit (kernels/host/build.rs):
            // the SGD update and LRN's sums then round as the CPU's do.
            .arg("-fmad=false")
            .args(&gencode)
            .arg("-o")
            .arg(&dst)
            .arg(&source.combined)
            .output()
            .map_err(|e| format!("could not run {}: {e}", nvcc.display()))?;
        if result.status.success() {
            Ok(dst)
        } else {
            Err(format!(
                "nvcc failed to compile {} ({}):\n{}{}",
                src.display(),
                result.status,
                String::from_utf8_lossy(&result.stdout),
                String::from_utf8_lossy(&result.stderr)
            ))
        }
    };
    let results: Vec<Result<PathBuf, String>> = std::thread::scope(|s| {
        let workers: Vec<_> = sources
            .chunks(sources.len().div_ceil(2))
            .map(|chunk| s.spawn(move || chunk.iter().map(compile).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("nvcc worker"))
            .collect()
    });
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if !errors.is_empty() {
        let all: Vec<&str> = errors.iter().map(|e| e.as_str()).collect();
        panic!("{}\n{WITHOUT_NVCC}.", all.join("\n"));
    }
    results.into_iter().map(|r| r.ok()).collect()
}

/// The `extern "C" __global__ void NAME(` entry points of a kernel file.
fn entry_points(src: &Path, text: &str) -> Vec<String> {
    const DECL: &str = "extern \"C\" __global__ void";
    let names: Vec<String> = text
        .match_indices(DECL)
        .map(|(at, _)| {
            text[at + DECL.len()..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    assert!(
        !names.is_empty() && names.iter().all(|n| !n.is_empty()),
        "{}: no `{DECL} name(` entry points found",
        src.display()
    );
    names
}

/// The text of $OUT_DIR/kernels.rs.
fn generate(
    nvcc: Option<&Nvcc>,
    targets: &[String],
    sources: &[Source],
    fatbins: &[Option<PathBuf>],
) -> String {
    let mut s =
        String::from("// Generated by build.rs: the kernels/*.cu files and their builds.\n\n");
    match nvcc {
        Some(n) => writeln!(
            s,
            "pub const NVCC_VERSION: Option<&str> = Some({:?});",
            n.version
        ),
        None => writeln!(s, "pub const NVCC_VERSION: Option<&str> = None;"),
    }
    .unwrap();
    writeln!(s, "pub const FATBIN_TARGETS: &[&str] = &{targets:?};").unwrap();
    writeln!(s, "pub const MODULES: &[Module] = &[").unwrap();
    for (source, fatbin) in sources.iter().zip(fatbins) {
        let src = &source.original;
        let stem = src.file_stem().unwrap().to_string_lossy();
        let fatbin = match fatbin {
            Some(path) => format!("Some(include_bytes!({:?}))", path.display().to_string()),
            None => "None".to_string(),
        };
        writeln!(
            s,
            "    Module {{\n        name: {stem:?},\n        source: include_str!({:?}),\n        \
             fatbin: {fatbin},\n        kernels: &{:?},\n    }},",
            source.combined.display().to_string(),
            entry_points(src, &source.text)
        )
        .unwrap();
    }
    writeln!(s, "];").unwrap();
    s
}

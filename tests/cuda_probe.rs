//! The CUDA probe never panics: without the driver library it returns the
//! "no CUDA driver" error (cudarc itself would panic on first use), and with
//! the driver it lists the GPUs. Which case applies is decided independently
//! of the code under test, by whether libcuda can be opened at all.
use alexnet_cuda::backend::cuda::probe::{self, NO_DRIVER};
use alexnet_cuda::Error;

fn libcuda_loadable() -> bool {
    // SAFETY: only tries to dlopen libcuda's candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

#[test]
fn devices_errors_without_driver_and_lists_gpus_with_one() {
    let got = std::panic::catch_unwind(probe::devices);
    let got = match got {
        Ok(r) => r,
        Err(_) => panic!("probe::devices panicked instead of returning an error"),
    };
    if libcuda_loadable() {
        let devs = got.expect("libcuda is present, so devices() must list the GPUs");
        assert!(!devs.is_empty());
        for (i, d) in devs.iter().enumerate() {
            assert_eq!(d.ordinal, i);
            assert!(d.compute_capability.0 >= 3, "{d:?}");
            assert!(d.total_memory > 0, "{d:?}");
        }
    } else {
        match got {
            Err(Error::NoDevice(msg)) => {
                assert_eq!(msg, NO_DRIVER);
                assert!(msg.contains("libcuda.so") && msg.contains("--cpu"), "{msg}");
            }
            other => panic!("expected the no-driver error, got {other:?}"),
        }
    }
}

#[test]
fn require_names_the_count_found() {
    if libcuda_loadable() {
        let n = probe::devices().map(|d| d.len()).unwrap_or(0);
        match probe::require(&[n + 3]) {
            Err(Error::NoDevice(msg)) => assert!(msg.contains(&format!("{n} GPU")), "{msg}"),
            other => panic!("asking for GPU {} of {n} must fail, got {other:?}", n + 3),
        }
    } else {
        // No driver: require fails with the same clear error, not a panic.
        match probe::require(&[0]) {
            Err(Error::NoDevice(msg)) => assert_eq!(msg, NO_DRIVER),
            other => panic!("expected the no-driver error, got {other:?}"),
        }
    }
}

#[test]
fn backend_new_fails_cleanly_without_driver() {
    if libcuda_loadable() {
        return; // exercised by the GPU check script instead
    }
    let r = alexnet_cuda::backend::cuda::CudaBackend::new(0, Default::default());
    assert!(matches!(r, Err(Error::NoDevice(_))));
}

/// A GPU asked for past those found is named with the ordinals there are,
/// counted from 0 ("GPUs 0 to 1", not Rust's half-open "0..2").
#[test]
fn require_in_names_the_ordinals_there_are() {
    let gpu = |ordinal| probe::DeviceInfo {
        ordinal,
        name: "test GPU".into(),
        compute_capability: (9, 0),
        total_memory: 1 << 30,
    };
    let said = |all: &[probe::DeviceInfo], want: usize| match probe::require_in(all, &[want]) {
        Err(Error::NoDevice(msg)) => msg,
        other => panic!("GPU {want} of {}: {other:?}", all.len()),
    };
    let two = [gpu(0), gpu(1)];
    let msg = said(&two, 2);
    assert!(
        msg.contains("GPU 2 was asked for but 2 GPUs were found (GPUs 0 to 1"),
        "{msg}"
    );
    let msg = said(&two[..1], 1);
    assert!(msg.contains("1 GPU was found (only GPU 0"), "{msg}");
    assert_eq!(
        probe::require_in(&two, &[1, 0]).unwrap(),
        vec![gpu(1), gpu(0)]
    );
}

/// cuInit's failures, each with its own advice: no device visible points
/// at CUDA_VISIBLE_DEVICES when it is set (nvidia-smi ignores it), the
/// toolkit's stub library at LD_LIBRARY_PATH; every one offers --cpu.
#[test]
fn a_failed_cu_init_says_what_to_check() {
    use cudarc::driver::sys::CUresult;
    let none = probe::init_failed(CUresult::CUDA_ERROR_NO_DEVICE, Some(""));
    assert!(
        none.contains("CUDA_VISIBLE_DEVICES=\"\"") && none.contains("unset it"),
        "{none}"
    );
    let unset = probe::init_failed(CUresult::CUDA_ERROR_NO_DEVICE, None);
    assert!(
        !unset.contains("CUDA_VISIBLE_DEVICES") && unset.contains("no GPU"),
        "{unset}"
    );
    let stub = probe::init_failed(CUresult::CUDA_ERROR_STUB_LIBRARY, None);
    assert!(
        stub.contains("stubs/") && stub.contains("LD_LIBRARY_PATH"),
        "{stub}"
    );
    let mismatch = probe::init_failed(CUresult::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH, None);
    assert!(
        mismatch.contains("CUDA_ERROR_SYSTEM_DRIVER_MISMATCH") && mismatch.contains("nvidia-smi"),
        "{mismatch}"
    );
    for msg in [none, unset, stub, mismatch] {
        assert!(msg.contains("--cpu"), "{msg}");
    }
}

/// A CUDA 13 library on LD_LIBRARY_PATH under a name cudarc does not open
/// (`libcublas.so.13`) is found, and only that: not `libcublasLt.so.13`,
/// another library, nor `.so.12`, which cudarc opens itself.
#[test]
fn a_library_under_a_name_cudarc_does_not_open_is_found() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    for f in ["libcublasLt.so.13", "libcublas.so.12", "libnvrtc.so.13.2"] {
        std::fs::write(a.join(f), b"").unwrap();
    }
    std::fs::write(b.join("libcublas.so.13"), b"").unwrap();
    let dirs = [a.clone(), b.clone()];
    assert_eq!(
        probe::unopened_in(&dirs, "cublas"),
        Some(b.join("libcublas.so.13"))
    );
    assert_eq!(
        probe::unopened_in(&dirs, "nvrtc"),
        Some(a.join("libnvrtc.so.13.2"))
    );
    assert_eq!(probe::unopened_in(&dirs[..1], "cublas"), None);
    assert_eq!(probe::unopened_in(&dirs, "cudnn"), None);
}

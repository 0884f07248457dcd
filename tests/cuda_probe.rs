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

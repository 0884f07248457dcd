//! The commands of the `alexnet-cuda` binary, one module each: its flags
//! (a clap `Args` struct) and its `run`. `common` and `device` hold the
//! flags and helpers several commands share; `nccl` makes NCCL loadable
//! for the runs that average gradients with it.
/// A result line on standard output, as `println!` but returning the write's
/// error: a reader that stops reading (`| head`) ends the command through
/// `main`, quietly, instead of `println!`'s panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}

/// [`outln!`] without the newline.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*)
    }};
}

pub mod bench;
pub mod common;
pub mod demo_data;
pub mod device;
pub mod eval;
pub mod export;
pub mod features;
pub mod filters;
pub mod nccl;
pub mod nccl_check;
pub mod neighbors;
pub mod nvrtc_check;
pub mod predict;
pub mod prepare;
pub mod scaling;
pub mod summary;
pub mod train;

//! Pictures of what a trained network learned, as the paper's figures show
//! them: `filters` draws conv1's kernels per tower (figure 3, section 6.1)
//! and measures how colour-specific each tower's kernels are; `confusion`
//! draws eval's confusion matrix.
pub mod confusion;
pub mod filters;

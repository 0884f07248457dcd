//! Data: reading class-folder image sets (`folder`), decoding and resizing
//! one image (`decode`), the decoded in-memory store with split and channel
//! statistics (`store`), the augmenting batch loader (`loader`), and a
//! procedural demo data set (`synth`).
pub mod decode;
pub mod folder;
pub mod loader;
pub mod store;
pub mod synth;

pub use decode::{decode_file, decode_into, resize_centre_crop};
pub use folder::ImageFolder;
pub use loader::{batches, crop_for, epoch_order, Batch, BatchIter, Crop, LoaderConfig};
pub use store::{balanced_subset, BuildOptions, ImageSet};
pub use synth::write_demo_dataset;

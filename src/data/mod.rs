//! Data: reading class-folder image sets (`folder`), decoding and resizing
//! one image (`decode`), a folder read image by image (`files`), the
//! packed on-disk store (`packed`) and `prepare` which writes it (with
//! `duplicates`, the images it stores twice), the
//! decoded in-memory store with split and channel statistics (`store`),
//! PCA lighting noise (`lighting`), the augmenting batch loader (`loader`)
//! and its worker threads, kept across a run's passes (`feed`), the host
//! memory it fills (`hostmem`) and the pool that keeps its batches
//! between epochs (`pool`), and a procedural demo data set (`synth`).
pub mod decode;
pub mod duplicates;
pub mod feed;
pub mod files;
pub mod folder;
pub mod hostmem;
pub mod lighting;
pub mod loader;
pub mod packed;
pub mod pool;
pub mod prepare;
pub mod store;
pub mod synth;

pub use decode::{decode_file, decode_into, decode_some, resize_centre_crop, unread_error};
pub use feed::{batches, batches_from, BatchIter, Feed, Pass};
pub use files::FileSource;
pub use folder::{images_under, is_hidden, ImageFolder};
pub use hostmem::{HostAlloc, HostBuf, HostMemory};
pub use lighting::Pca;
pub use loader::{
    crop_for, default_workers, epoch_order, lighting_alpha, ten_crops, workers_for, Batch, Crop,
    ImageSource, Lighting, LoaderConfig,
};
pub use packed::{Encoding, PackedStore, StoreMeta};
pub use pool::Pool;
pub use store::{
    balanced_subset, folder_digest, held_out_files, limit_covers_classes, limited_len,
    store_digest, warn_of_a_limit_above, BuildOptions, ImageSet,
};
pub use synth::{write_demo_dataset, write_demo_test, write_demo_train};

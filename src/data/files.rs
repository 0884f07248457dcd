//! A class folder read image by image as the loader asks: each file is
//! decoded and resized (as `prepare` does) when its batch is made, on the
//! loader's workers. Nothing is decoded up front, memory does not grow with
//! the set, and `--limit` reads only the images it picks. For one pass over
//! a folder (eval, features); training decodes once into an `ImageSet`
//! instead, since it reads every image each epoch.
use std::path::{Path, PathBuf};

use super::decode::decode_into;
use super::folder::ImageFolder;
use super::loader::ImageSource;
use crate::error::Result;

/// The images of a class folder, decoded on demand at `size x size`.
pub struct FileSource {
    size: usize,
    items: Vec<(PathBuf, u32)>,
    classes: Vec<String>,
}

impl FileSource {
    pub fn new(folder: &ImageFolder, size: usize) -> FileSource {
        FileSource {
            size,
            items: folder.items().to_vec(),
            classes: folder.classes().to_vec(),
        }
    }

    /// The file of image `i`.
    pub fn path(&self, i: usize) -> &Path {
        &self.items[i].0
    }
}

impl ImageSource for FileSource {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn size(&self) -> usize {
        self.size
    }
    fn label(&self, i: usize) -> u32 {
        self.items[i].1
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn pixels<'a>(&'a self, i: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        scratch.resize(self.size * self.size * 3, 0);
        decode_into(&self.items[i].0, self.size, scratch)?;
        Ok(scratch)
    }
}

//! Getting a trained network out: its parameters as named host tensors
//! (PyTorch's names and layouts, `model::net`), written to and read from
//! safetensors files, and (`onnx`) the whole inference graph as an ONNX model.
//!
//! safetensors (github.com/huggingface/safetensors): an 8-byte little-endian
//! header length, a JSON header giving each tensor's dtype, shape and byte
//! range, then the raw little-endian data. The `safetensors` crate does the
//! format; this module adds our tensor type, atomic writes and errors that
//! say which file is wrong and what to do.
pub mod onnx;
mod onnx_pb;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, View};

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::model::trainable::Model;

/// One named float32 tensor on the host, C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Check that `data` holds exactly the elements `shape` promises.
    fn check(&self, op: &'static str) -> Result<()> {
        let want: usize = self.shape.iter().product();
        if want == self.data.len() {
            Ok(())
        } else {
            Err(Error::Shape {
                op,
                detail: format!(
                    "tensor {}: shape {:?} holds {want} values but it has {}",
                    self.name,
                    self.shape,
                    self.data.len()
                ),
            })
        }
    }
}

/// Every parameter of `net`, in table order (conv1.weight, conv1.bias, ...,
/// fc8.bias), with PyTorch's names and shapes.
pub fn network_tensors(net: &dyn Model) -> Result<Vec<Tensor>> {
    net.param_names()
        .into_iter()
        .map(|name| {
            let t = Tensor {
                shape: net.param_shape(&name)?,
                data: net.param(&name)?,
                name,
            };
            t.check("network_tensors")?;
            Ok(t)
        })
        .collect()
}

/// A `Tensor` as the safetensors crate wants to see it: F32, little-endian bytes.
struct F32View<'a>(&'a Tensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.0.data.len() * std::mem::size_of::<f32>()
    }
}

/// Write `tensors` and string `metadata` (the header's `__metadata__`) to a
/// safetensors file, atomically. Names must be unique.
pub fn write_safetensors(
    path: &Path,
    tensors: &[Tensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut seen = HashSet::new();
    for t in tensors {
        t.check("write_safetensors")?;
        if !seen.insert(t.name.as_str()) {
            return Err(Error::Config(format!(
                "{}: tensor name {} appears twice",
                path.display(),
                t.name
            )));
        }
    }
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let views = tensors.iter().map(|t| (t.name.as_str(), F32View(t)));
    let bytes = safetensors::serialize(views, (!meta.is_empty()).then_some(meta)).map_err(|e| {
        Error::Data(format!(
            "{}: cannot encode safetensors: {e}",
            path.display()
        ))
    })?;
    write_atomic(path, &sorted_header(bytes))
}

/// `bytes` with the header's keys in sorted order, so the same tensors and
/// metadata always give the same file: the crate takes the metadata as a
/// HashMap, whose order changes from run to run. The header keeps its
/// length (the same JSON, reordered; the crate's space padding kept), so
/// the data offsets, which count from the header's end, stay right.
fn sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    type Header = BTreeMap<String, serde_json::Value>;
    let len = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes);
    let end = len.and_then(|n| usize::try_from(n).ok()?.checked_add(8));
    let parsed = end
        .and_then(|e| bytes.get(8..e))
        .map(serde_json::from_slice::<Header>);
    let (Some(end), Some(Ok(mut header))) = (end, parsed) else {
        return bytes;
    };
    if let Some(m) = header.get_mut("__metadata__") {
        if let Ok(sorted) = serde_json::from_value::<BTreeMap<String, String>>(m.clone()) {
            *m = serde_json::json!(sorted);
        }
    }
    match serde_json::to_vec(&header) {
        Ok(json) if json.len() <= end - 8 => {
            bytes[8..8 + json.len()].copy_from_slice(&json);
            bytes[8 + json.len()..end].fill(b' ');
            bytes
        }
        _ => bytes,
    }
}

/// What a file that is no safetensors file is, by its first bytes, and
/// how to convert a PyTorch checkpoint (`torch.save`'s zip archive, or an
/// older pickle); an image passed where weights go is named. None
/// otherwise. The callers add what to pass instead.
fn other_format(bytes: &[u8]) -> Option<String> {
    let torch =
        "; save its state dict with safetensors.torch.save_file(state_dict, 'weights.safetensors')";
    let (what, fix) = match bytes {
        [b'P', b'K', 3, 4, ..] => ("a zip archive, as torch.save writes (.pt, .pth)", torch),
        [0x80, 2..=5, ..] => ("a Python pickle, as an older torch.save writes", torch),
        [0xFF, 0xD8, 0xFF, ..] => ("a JPEG image", ""),
        [0x89, b'P', b'N', b'G', ..] => ("a PNG image", ""),
        _ => return None,
    };
    Some(format!("{what}{fix}"))
}

/// Read every tensor of a safetensors file holding F32 tensors, sorted by
/// name (the format keeps no order of its own).
pub fn read_safetensors(path: &Path) -> Result<Vec<Tensor>> {
    Ok(read_safetensors_meta(path)?.0)
}

/// [`read_safetensors`], with the header's `__metadata__` (empty if none).
pub fn read_safetensors_meta(path: &Path) -> Result<(Vec<Tensor>, BTreeMap<String, String>)> {
    if path.is_dir() {
        return Err(Error::Data(format!(
            "{}: a folder, not a safetensors file; pass a file in it, e.g. {}",
            path.display(),
            path.join("best.safetensors").display()
        )));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // Mapped, not read: a checkpoint with momentum is twice its weights, and
    // copying it into a buffer only to convert it cost about 0.5 s for the
    // `alexnet` config. SAFETY: read-only; our checkpoints and exports are
    // written to a temporary name and renamed, never changed in place (a
    // file another program rewrites while it is read could fault).
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        let why = match e {
            SafeTensorError::HeaderTooSmall
            | SafeTensorError::InvalidHeaderLength
            | SafeTensorError::MetadataIncompleteBuffer => {
                "truncated or not a safetensors file".to_string()
            }
            other => format!("not a valid safetensors file ({other})"),
        };
        match other_format(&bytes) {
            Some(what) => Error::Data(format!(
                "{}: not a safetensors file but {what}",
                path.display()
            )),
            None => Error::Data(format!("{}: {why}", path.display())),
        }
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
    let meta: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::Data(format!(
                "{}: tensor {name} is {:?}, expected F32; save it as float32 \
                 (in PyTorch: tensor.float())",
                path.display(),
                view.dtype()
            )));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push(Tensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            data,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, meta))
}

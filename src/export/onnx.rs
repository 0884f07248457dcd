//! The inference graph as an ONNX model (onnx.ai), built from the topology
//! table and the parameters. The messages are `onnx_pb`'s prost structs;
//! prost does the protocol buffers encoding.
//!
//! Inference only: dropout is the identity at test time and is left out.
//! With a [`PixelInput`] the graph takes pixels and does the run's
//! preprocessing itself (mean, std, padding) before the network.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use prost::Message;

use super::onnx_pb::tensor_shape_proto::{dimension, Dimension};
use super::onnx_pb::{
    type_proto, AttributeProto, AttributeType, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto, DATA_TYPE_FLOAT, DATA_TYPE_INT64,
};
use super::Tensor;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::model::topology::{Layer, LayerShape, Op, Topology};
use crate::run_state::Preprocess;

/// IR version 8 (ONNX 1.10) and the default-domain opset 13: every op used
/// here (Sub, Div, Pad, Conv, Relu, LRN, Split, Concat, MaxPool, Flatten,
/// Gemm) is defined there, and
/// onnxruntime and current onnx releases accept both.
const IR_VERSION: i64 = 8;
const OPSET: i64 = 13;
/// Protobuf's limit on a serialized message, 2 GiB less one byte, which the
/// ONNX readers enforce: a larger model must keep its weights as external
/// data (onnx docs/ExternalData.md), which this writer does not do.
const PROTOBUF_MAX: usize = i32::MAX as usize;

/// What a graph that takes pixels does first: the loader's preprocessing
/// of the centre crop at test time. Subtract the mean (the mean image's
/// centre crop, or the channel means), divide by the std where the run did,
/// pad with zeros up to the network's input.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelInput {
    /// [1, 3, crop, crop] or [1, 3, 1, 1], RGB on the 0..255 scale.
    mean: Tensor,
    std: Option<[f32; 3]>,
    crop: usize,
    /// Zeros before and after the crop on each axis (the loader puts
    /// pad / 2 first).
    pad: (usize, usize),
}

impl PixelInput {
    /// The preprocessing `p` a run trained with; `mean_image` is its
    /// checkpoint's `data.mean_image` ([S, S, 3], HWC, S = p.image_size),
    /// which it must hold when `p.mean_image`.
    pub fn new(p: &Preprocess, mean_image: Option<&[f32]>) -> Result<PixelInput> {
        let (s, c) = (p.image_size, p.crop);
        let mean = match (p.mean_image, mean_image) {
            (false, _) => Tensor {
                name: "pixels.mean".into(),
                shape: vec![1, 3, 1, 1],
                data: p.mean.to_vec(),
            },
            (true, Some(m)) if m.len() == s * s * 3 && c <= s => centre_crop(m, s, c),
            (true, Some(_)) if c > s => {
                return Err(Error::Config(format!(
                    "the run's crops ({c}x{c}) are larger than its {s}x{s} images; the checkpoint's preprocessing is damaged"
                )))
            }
            (true, m) => {
                return Err(Error::Config(format!(
                    "the run subtracted a mean image of {s}x{s}x3 but the checkpoint holds {} values for it (data.mean_image); the checkpoint is damaged: export from another checkpoint of the run, or without --pixels",
                    m.map_or(0, <[f32]>::len)
                )))
            }
        };
        Ok(PixelInput {
            mean,
            std: p.std,
            crop: c,
            pad: (p.pad / 2, p.pad - p.pad / 2),
        })
    }
}

/// The centre `c` x `c` of the `s` x `s` HWC image `m`, as [1, 3, c, c]:
/// the crop the loader takes at test time, at offset (s - c) / 2.
fn centre_crop(m: &[f32], s: usize, c: usize) -> Tensor {
    let o = (s - c) / 2;
    let mut data = Vec::with_capacity(3 * c * c);
    for ch in 0..3 {
        for y in o..o + c {
            data.extend((o..o + c).map(|x| m[(y * s + x) * 3 + ch]));
        }
    }
    Tensor {
        name: "pixels.mean".into(),
        shape: vec![1, 3, c, c],
        data,
    }
}

/// Write `topo`'s inference graph with `tensors` (named and shaped as
/// `export::network_tensors` gives them) as initializers, atomically.
/// Input "input" is [N, channels, crop, crop] float32 with a symbolic batch
/// N, or with `pixels` "pixels", [N, 3, c, c] for the run's crop c;
/// output "logits" is [N, classes]. `metadata` goes into the model's
/// metadata_props (onnxruntime: `get_modelmeta().custom_metadata_map`),
/// with `input` naming the graph's input: a client that reads the
/// preprocessing from the metadata must not apply it to "pixels" again.
pub fn write_onnx(
    topo: &Topology,
    tensors: &[Tensor],
    pixels: Option<&PixelInput>,
    metadata: &BTreeMap<String, String>,
    path: &Path,
) -> Result<()> {
    let bytes = encode_model(topo, tensors, pixels, metadata).map_err(|msg| {
        Error::Config(format!("{}: cannot export to ONNX: {msg}", path.display()))
    })?;
    write_atomic(path, &bytes)
}

/// Build the ModelProto bytes; errors say which tensor or layer does not fit.
fn encode_model(
    topo: &Topology,
    tensors: &[Tensor],
    pixels: Option<&PixelInput>,
    metadata: &BTreeMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    // The weights alone, before they are copied into messages: a model
    // over the limit is refused before it takes several times its size.
    within_protobuf(tensors.iter().map(|t| 4 * t.data.len()).sum())?;
    let shapes = topo.shapes().map_err(|e| e.to_string())?;
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();

    let mut graph = GraphProto {
        name: Some(topo.name.to_string()),
        ..GraphProto::default()
    };
    let mut initializers = Vec::new();
    let (input, side, first) = match pixels {
        Some(px) => {
            let (nodes, consts) = pixel_nodes(topo, px)?;
            graph.initializer.extend(consts);
            ("pixels", px.crop, nodes)
        }
        None => ("input", topo.crop, Vec::new()),
    };
    // The value flowing between nodes and whether it is still [N, C, H, W].
    let mut value = input.to_string();
    let mut spatial = true;
    let last = topo.layers.len() - 1;
    let mut chain = |nodes: Vec<Node>, logits: bool, value: &mut String| {
        // Chain the nodes; the very last output is the graph's "logits".
        let count = nodes.len();
        for (j, mut n) in nodes.into_iter().enumerate() {
            if n.inputs[0].is_empty() {
                n.inputs[0] = value.clone();
            }
            if logits && j + 1 == count {
                n.output = "logits".into();
            }
            *value = n.output.clone();
            graph.node.push(n.proto());
        }
    };
    chain(first, false, &mut value);
    for (i, (l, s)) in topo.layers.iter().zip(&shapes).enumerate() {
        initializers.extend(layer_params(topo, l, s, &by_name)?);
        let nodes = layer_nodes(topo, l, &mut value, &mut spatial)?;
        chain(nodes, i == last, &mut value);
    }

    graph
        .initializer
        .extend(initializers.into_iter().map(tensor_proto));
    let (c, side) = (topo.channels as i64, side as i64);
    graph.input.push(value_info(
        input,
        &[
            Dim::Param("N"),
            Dim::Value(c),
            Dim::Value(side),
            Dim::Value(side),
        ],
    ));
    graph.output.push(value_info(
        "logits",
        &[Dim::Param("N"), Dim::Value(topo.classes as i64)],
    ));

    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some(env!("CARGO_PKG_NAME").into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        // No domain: the default one, ai.onnx.
        opset_import: vec![OperatorSetIdProto {
            domain: None,
            version: Some(OPSET),
        }],
        metadata_props: metadata
            .iter()
            .filter(|(k, _)| k.as_str() != "input")
            .chain([(&"input".to_string(), &input.to_string())])
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
    };
    within_protobuf(model.encoded_len())?;
    Ok(model.encode_to_vec())
}

/// A model of `len` bytes as one protobuf message, or why not.
fn within_protobuf(len: usize) -> std::result::Result<(), String> {
    if len > PROTOBUF_MAX {
        return Err(format!(
            "the model takes at least {len} bytes, over the 2 GiB (2^31 - 1 bytes) a protobuf message may hold, which ONNX readers refuse; export --format safetensors instead, or train fewer classes"
        ));
    }
    Ok(())
}

/// The preprocessing nodes from "pixels" (the first reads it), and their
/// constants: Sub the mean, Div by the std, Pad with zeros.
fn pixel_nodes(
    topo: &Topology,
    px: &PixelInput,
) -> std::result::Result<(Vec<Node>, Vec<TensorProto>), String> {
    let (before, after) = px.pad;
    if topo.channels != 3 || px.crop + before + after != topo.crop {
        return Err(format!(
            "the run's {c}x{c} RGB crops padded by {} do not make the {}x{i}x{i} input of config {}",
            before + after,
            topo.channels,
            topo.name,
            c = px.crop,
            i = topo.crop
        ));
    }
    let mut nodes = vec![Node::new(
        "Sub",
        "pixels.centred",
        vec!["pixels".into(), "pixels.mean".into()],
    )];
    let mut consts = vec![tensor_proto(&px.mean)];
    if let Some(std) = px.std {
        let t = Tensor {
            name: "pixels.std".into(),
            shape: vec![1, 3, 1, 1],
            data: std.to_vec(),
        };
        let inputs = vec![String::new(), t.name.clone()];
        nodes.push(Node::new("Div", "pixels.scaled", inputs));
        consts.push(tensor_proto(&t));
    }
    if before + after > 0 {
        // ONNX pads: every axis's begin, then every axis's end (N, C, H, W).
        let (b, a) = (before as i64, after as i64);
        let pads = [0, 0, b, b, 0, 0, a, a];
        nodes.push(Node::new(
            "Pad",
            "pixels.padded",
            vec![String::new(), "pixels.pads".into()],
        ));
        consts.push(TensorProto {
            dims: vec![pads.len() as i64],
            data_type: Some(DATA_TYPE_INT64),
            name: Some("pixels.pads".into()),
            raw_data: Some(pads.iter().flat_map(|v| v.to_le_bytes()).collect()),
        });
    }
    Ok((nodes, consts))
}

/// Layer `l`'s weight and bias, checked against the shapes the config
/// gives them.
fn layer_params<'t>(
    topo: &Topology,
    l: &Layer,
    s: &LayerShape,
    by_name: &HashMap<&str, &'t Tensor>,
) -> std::result::Result<[&'t Tensor; 2], String> {
    let (w_shape, b_len) = match l.op {
        Op::Conv { out, k, groups, .. } => (vec![out, s.input.c / groups, k, k], out),
        Op::Fc { out } => (vec![out, s.input.len()], out),
    };
    let param = |name: String, shape: Vec<usize>| {
        let t = by_name
            .get(name.as_str())
            .ok_or_else(|| format!("no tensor named {name} for layer {}", l.name))?;
        if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
            return Err(format!(
                "{name} has shape {:?} ({} values), the config {} needs {shape:?}",
                t.shape,
                t.data.len(),
                topo.name
            ));
        }
        Ok(*t)
    };
    Ok([
        param(format!("{}.weight", l.name), w_shape)?,
        param(format!("{}.bias", l.name), vec![b_len])?,
    ])
}

/// Layer `l`'s nodes: its conv or fc (a Flatten before the first fc),
/// then ReLU, LRN and pooling as the table says. Each node's output is
/// named after the layer and the step, so a viewer shows conv1,
/// conv1.relu, conv1.lrn, conv1.pool, ...; an empty first input is the
/// previous node's output.
fn layer_nodes(
    topo: &Topology,
    l: &Layer,
    value: &mut String,
    spatial: &mut bool,
) -> std::result::Result<Vec<Node>, String> {
    let mut nodes: Vec<Node> = Vec::new();
    let params = |value: &str| {
        vec![
            value.to_string(),
            format!("{}.weight", l.name),
            format!("{}.bias", l.name),
        ]
    };
    match l.op {
        Op::Conv {
            k,
            stride,
            pad,
            groups,
            ..
        } => {
            let (k, stride, pad) = (k as i64, stride as i64, pad as i64);
            nodes.push(
                Node::new("Conv", l.name, params(value.as_str()))
                    .ints("kernel_shape", &[k, k])
                    .ints("strides", &[stride, stride])
                    // ONNX pads: [x1_begin, x2_begin, x1_end, x2_end].
                    .ints("pads", &[pad, pad, pad, pad])
                    .int("group", groups as i64),
            );
        }
        Op::Fc { .. } => {
            if *spatial {
                // Flatten(axis=1) keeps N and flattens C, H, W in C order,
                // the order our fc weights (and PyTorch's) expect.
                let flat = format!("{}.flatten", l.name);
                nodes.push(Node::new("Flatten", &flat, vec![value.clone()]).int("axis", 1));
                *value = flat;
                *spatial = false;
            }
            // Gemm: Y = A B' + C with transB = 1, B being [out, in].
            nodes.push(Node::new("Gemm", l.name, params(value.as_str())).int("transB", 1));
        }
    }
    if l.relu {
        let name = format!("{}.relu", l.name);
        nodes.push(Node::new("Relu", &name, vec![String::new()]));
    }
    if l.lrn {
        if !*spatial {
            return Err(format!("{}: LRN after a fully connected layer", l.name));
        }
        nodes.extend(lrn_nodes(topo, &format!("{}.lrn", l.name))?);
    }
    if let Some(pool) = l.pool {
        if !*spatial {
            return Err(format!("{}: pooling after a fully connected layer", l.name));
        }
        // No pads and the default ceil_mode 0: floor((h - size) / stride) + 1,
        // the backend's PoolGeom::h_out.
        let (k, st) = (pool.size as i64, pool.stride as i64);
        let name = format!("{}.pool", l.name);
        nodes.push(
            Node::new("MaxPool", &name, vec![String::new()])
                .ints("kernel_shape", &[k, k])
                .ints("strides", &[st, st]),
        );
    }
    Ok(nodes)
}

/// Local response normalisation (section 3.3) with output `name`, on the
/// previous node's output.
fn lrn_nodes(topo: &Topology, name: &str) -> std::result::Result<Vec<Node>, String> {
    // ONNX LRN (like PyTorch) divides alpha by size; the paper and
    // LrnParams do not, so ONNX's alpha is ours times size. bias is k.
    let p = topo.lrn;
    // ONNX sums c - (size-1)/2 ..= c + ceil((size-1)/2): `size` channels,
    // which is our c - size/2 ..= c + size/2 only for an odd size.
    if p.size.is_multiple_of(2) {
        return Err(format!(
            "LRN window size {} is even: ONNX's LRN sums {} channels, one side longer, where this network sums {} centred on each; ONNX cannot express it",
            p.size,
            p.size,
            p.size + 1
        ));
    }
    let lrn = |input: String, output: &str| {
        Node::new("LRN", output, vec![input])
            .int("size", p.size as i64)
            .float("alpha", p.alpha * p.size as f32)
            .float("beta", p.beta)
            .float("bias", p.k)
    };
    if topo.towers == 1 {
        return Ok(vec![lrn(String::new(), name)]);
    }
    // Each tower normalises its own channels (topology.rs): split the
    // channels into equal halves (Split with no `split` input), normalise
    // each, concatenate.
    let halves: Vec<String> = (0..topo.towers)
        .map(|t| format!("{name}.split{t}"))
        .collect();
    let mut split = Node::new("Split", &halves[0], vec![String::new()]).int("axis", 1);
    split.more_outputs = halves[1..].to_vec();
    let mut nodes = vec![split];
    let mut normed = Vec::new();
    for (t, h) in halves.iter().enumerate() {
        let out = format!("{name}.tower{t}");
        nodes.push(lrn(h.clone(), &out));
        normed.push(out);
    }
    nodes.push(Node::new("Concat", name, normed).int("axis", 1));
    Ok(nodes)
}

/// A float32 initializer, its values as little-endian raw_data.
fn tensor_proto(t: &Tensor) -> TensorProto {
    TensorProto {
        dims: t.shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(DATA_TYPE_FLOAT),
        name: Some(t.name.clone()),
        raw_data: Some(t.data.iter().flat_map(|v| v.to_le_bytes()).collect()),
    }
}

enum Dim<'a> {
    Value(i64),
    Param(&'a str),
}

/// A float32 tensor value of shape `dims` named `name`.
fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Value(v) => dimension::Value::DimValue(*v),
                Dim::Param(s) => dimension::Value::DimParam(s.to_string()),
            }),
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: Some(DATA_TYPE_FLOAT),
        shape: Some(TensorShapeProto { dim }),
    };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
        }),
    }
}

/// One node with its attributes, its first input possibly still to fill.
struct Node {
    op_type: &'static str,
    inputs: Vec<String>,
    output: String,
    /// Outputs after the first (Split's).
    more_outputs: Vec<String>,
    attrs: Vec<AttributeProto>,
}

impl Node {
    /// An empty first input is filled with the previous node's output.
    fn new(op_type: &'static str, output: &str, inputs: Vec<String>) -> Node {
        Node {
            op_type,
            inputs,
            output: output.to_string(),
            more_outputs: Vec::new(),
            attrs: Vec::new(),
        }
    }

    fn attr(mut self, name: &str, ty: AttributeType, a: AttributeProto) -> Node {
        self.attrs.push(AttributeProto {
            name: Some(name.into()),
            r#type: Some(ty as i32),
            ..a
        });
        self
    }
    fn int(self, name: &str, v: i64) -> Node {
        let a = AttributeProto {
            i: Some(v),
            ..AttributeProto::default()
        };
        self.attr(name, AttributeType::Int, a)
    }
    fn ints(self, name: &str, vs: &[i64]) -> Node {
        let a = AttributeProto {
            ints: vs.to_vec(),
            ..AttributeProto::default()
        };
        self.attr(name, AttributeType::Ints, a)
    }
    fn float(self, name: &str, v: f32) -> Node {
        let a = AttributeProto {
            f: Some(v),
            ..AttributeProto::default()
        };
        self.attr(name, AttributeType::Float, a)
    }

    /// The NodeProto, named after its (first) output.
    fn proto(self) -> NodeProto {
        let mut output = vec![self.output.clone()];
        output.extend(self.more_outputs);
        NodeProto {
            input: self.inputs,
            output,
            name: Some(self.output),
            op_type: Some(self.op_type.into()),
            attribute: self.attrs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_onnx_proto_lays_it_out() {
        // A Relu node: input (1) "x", output (2) "y", name (3) "y",
        // op_type (4) "Relu", then an INT attribute (5) { name (1) "axis",
        // i (3) 1, type (20, a two-byte key a0 01) INT = 2 }.
        let node = Node::new("Relu", "y", vec!["x".into()])
            .int("axis", 1)
            .proto();
        let mut want = b"\x0a\x01x\x12\x01y\x1a\x01y\x22\x04Relu".to_vec();
        want.extend_from_slice(b"\x2a\x0b\x0a\x04axis\x18\x01\xa0\x01\x02");
        assert_eq!(node.encode_to_vec(), want);
        // proto2 repeated int64 is unpacked: one key (8 << 3 = 0x40) each.
        let ints = Node::new("MaxPool", "p", vec![])
            .ints("strides", &[2, 2])
            .attrs;
        let bytes = ints[0].encode_to_vec();
        assert!(
            bytes.windows(4).any(|w| w == [0x40, 0x02, 0x40, 0x02]),
            "{bytes:x?}"
        );
    }

    /// Protobuf's limit is a signed 32-bit size: 2^31 - 1 bytes fit, 2^31
    /// do not (an alexnet with about 117,000 classes passes it).
    #[test]
    fn a_model_over_protobufs_2_gib_is_refused() {
        assert!(within_protobuf((1 << 31) - 1).is_ok());
        let e = within_protobuf(1 << 31).unwrap_err();
        assert!(
            e.contains("2147483648 bytes") && e.contains("--format safetensors"),
            "{e}"
        );
    }
}

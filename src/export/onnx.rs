//! The inference graph as an ONNX model (onnx.ai), built from the topology
//! table and the parameters, written with a minimal protocol buffers encoder
//! of our own (the ONNX protobuf crates need protoc at build time).
//!
//! Protocol buffers wire format (protobuf.dev/programming-guides/encoding):
//! each field is a key varint, (field_number << 3) | wire_type, then the
//! value: wire type 0 is a varint (int32, int64, enum), 2 is a varint length
//! and that many bytes (string, bytes, sub-message), 5 is 4 little-endian
//! bytes (float). onnx.proto is proto2, so repeated int64 fields are written
//! unpacked, one key per element, as proto2 encoders do.
//!
//! Field numbers below are onnx.proto's (onnx 1.x, checked against its text).
//! Inference only: dropout is the identity at test time and is left out.
use std::collections::HashMap;
use std::path::Path;

use super::Tensor;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::model::topology::{Op, Topology};

/// IR version 8 (ONNX 1.10) and the default-domain opset 13: every op used
/// here (Conv, Relu, LRN, Split, Concat, MaxPool, Flatten, Gemm) is defined there, and
/// onnxruntime and current onnx releases accept both.
const IR_VERSION: u64 = 8;
const OPSET: u64 = 13;
/// TensorProto.DataType.FLOAT.
const FLOAT: u64 = 1;
/// AttributeProto.AttributeType values.
const ATTR_FLOAT: u64 = 1;
const ATTR_INT: u64 = 2;
const ATTR_INTS: u64 = 7;

/// Write `topo`'s inference graph with `tensors` (named and shaped as
/// `export::network_tensors` gives them) as initializers, atomically.
/// Input "input" is [N, channels, crop, crop] float32 with a symbolic batch
/// N; output "logits" is [N, classes].
pub fn write_onnx(topo: &Topology, tensors: &[Tensor], path: &Path) -> Result<()> {
    let bytes = encode_model(topo, tensors).map_err(|msg| {
        Error::Config(format!("{}: cannot export to ONNX: {msg}", path.display()))
    })?;
    write_atomic(path, &bytes)
}

/// Build the ModelProto bytes; errors say which tensor or layer does not fit.
fn encode_model(topo: &Topology, tensors: &[Tensor]) -> std::result::Result<Vec<u8>, String> {
    let shapes = topo.shapes().map_err(|e| e.to_string())?;
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();

    let mut graph = Pb::default();
    let mut initializers = Vec::new();
    // The value flowing between nodes and whether it is still [N, C, H, W].
    let mut value = "input".to_string();
    let mut spatial = true;
    let last = topo.layers.len() - 1;
    for (i, (l, s)) in topo.layers.iter().zip(&shapes).enumerate() {
        let (w_shape, b_len) = match l.op {
            Op::Conv { out, k, groups, .. } => (vec![out, s.input.c / groups, k, k], out),
            Op::Fc { out } => (vec![out, s.input.len()], out),
        };
        let w_name = format!("{}.weight", l.name);
        let b_name = format!("{}.bias", l.name);
        for (name, shape) in [(&w_name, w_shape), (&b_name, vec![b_len])] {
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
            initializers.push(*t);
        }

        // Each node's output is named after the layer and the step, so a
        // viewer shows conv1, conv1.relu, conv1.lrn, conv1.pool, ...
        let mut nodes: Vec<Node> = Vec::new();
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
                    Node::new("Conv", l.name, vec![value.clone(), w_name, b_name])
                        .ints("kernel_shape", &[k, k])
                        .ints("strides", &[stride, stride])
                        // ONNX pads: [x1_begin, x2_begin, x1_end, x2_end].
                        .ints("pads", &[pad, pad, pad, pad])
                        .int("group", groups as i64),
                );
            }
            Op::Fc { .. } => {
                if spatial {
                    // Flatten(axis=1) keeps N and flattens C, H, W in C order,
                    // the order our fc weights (and PyTorch's) expect.
                    let flat = format!("{}.flatten", l.name);
                    nodes.push(Node::new("Flatten", &flat, vec![value.clone()]).int("axis", 1));
                    value = flat;
                    spatial = false;
                }
                // Gemm: Y = A B' + C with transB = 1, B being [out, in].
                nodes.push(
                    Node::new("Gemm", l.name, vec![value.clone(), w_name, b_name]).int("transB", 1),
                );
            }
        }
        if l.relu {
            let name = format!("{}.relu", l.name);
            nodes.push(Node::new("Relu", &name, vec![String::new()]));
        }
        if l.lrn {
            if !spatial {
                return Err(format!("{}: LRN after a fully connected layer", l.name));
            }
            // ONNX LRN (like PyTorch) divides alpha by size; the paper and
            // LrnParams do not, so ONNX's alpha is ours times size. bias is k.
            let p = topo.lrn;
            let name = format!("{}.lrn", l.name);
            let lrn = |input: String, output: &str| {
                Node::new("LRN", output, vec![input])
                    .int("size", p.size as i64)
                    .float("alpha", p.alpha * p.size as f32)
                    .float("beta", p.beta)
                    .float("bias", p.k)
            };
            if topo.towers == 1 {
                nodes.push(lrn(String::new(), &name));
            } else {
                // Each tower normalises its own channels (topology.rs): split
                // the channels into equal halves (Split with no `split` input),
                // normalise each, concatenate.
                let halves: Vec<String> = (0..topo.towers)
                    .map(|t| format!("{name}.split{t}"))
                    .collect();
                let mut split = Node::new("Split", &halves[0], vec![String::new()]).int("axis", 1);
                split.more_outputs = halves[1..].to_vec();
                nodes.push(split);
                let mut normed = Vec::new();
                for (t, h) in halves.iter().enumerate() {
                    let out = format!("{name}.tower{t}");
                    nodes.push(lrn(h.clone(), &out));
                    normed.push(out);
                }
                nodes.push(Node::new("Concat", &name, normed).int("axis", 1));
            }
        }
        if let Some(pool) = l.pool {
            if !spatial {
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
        // Chain the nodes; the very last output is the graph's "logits".
        let count = nodes.len();
        for (j, mut n) in nodes.into_iter().enumerate() {
            if n.inputs[0].is_empty() {
                n.inputs[0] = value.clone();
            }
            if i == last && j + 1 == count {
                n.output = "logits".into();
            }
            value = n.output.clone();
            graph.message(1, &n.encode()); // GraphProto.node = 1
        }
    }

    graph.string(2, &topo.name); // GraphProto.name = 2
    for t in initializers {
        graph.message(5, &tensor_proto(t)); // GraphProto.initializer = 5
    }
    let (c, crop) = (topo.channels as i64, topo.crop as i64);
    let input = value_info(
        "input",
        &[
            Dim::Param("N"),
            Dim::Value(c),
            Dim::Value(crop),
            Dim::Value(crop),
        ],
    );
    graph.message(11, &input); // GraphProto.input = 11
    let output = value_info(
        "logits",
        &[Dim::Param("N"), Dim::Value(topo.classes as i64)],
    );
    graph.message(12, &output); // GraphProto.output = 12

    let mut opset = Pb::default();
    opset.uint(2, OPSET); // OperatorSetIdProto.version = 2 (domain 1 left empty: ai.onnx)

    let mut model = Pb::default();
    model.uint(1, IR_VERSION); // ModelProto.ir_version = 1
    model.string(2, env!("CARGO_PKG_NAME")); // producer_name = 2
    model.string(3, env!("CARGO_PKG_VERSION")); // producer_version = 3
    model.message(7, &graph.buf); // graph = 7
    model.message(8, &opset.buf); // opset_import = 8
    Ok(model.buf)
}

/// TensorProto: dims = 1, data_type = 2, name = 8, raw_data = 9 (little-endian).
fn tensor_proto(t: &Tensor) -> Vec<u8> {
    let mut p = Pb::default();
    for &d in &t.shape {
        p.uint(1, d as u64);
    }
    p.uint(2, FLOAT);
    p.string(8, &t.name);
    let raw: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    p.bytes(9, &raw);
    p.buf
}

enum Dim<'a> {
    Value(i64),
    Param(&'a str),
}

/// ValueInfoProto { name = 1, type = 2: TypeProto { tensor_type = 1:
/// Tensor { elem_type = 1, shape = 2: TensorShapeProto { dim = 1:
/// Dimension { dim_value = 1 | dim_param = 2 } } } } }.
fn value_info(name: &str, dims: &[Dim]) -> Vec<u8> {
    let mut shape = Pb::default();
    for d in dims {
        let mut dim = Pb::default();
        match d {
            Dim::Value(v) => dim.uint(1, *v as u64),
            Dim::Param(s) => dim.string(2, s),
        }
        shape.message(1, &dim.buf);
    }
    let mut tensor = Pb::default();
    tensor.uint(1, FLOAT);
    tensor.message(2, &shape.buf);
    let mut ty = Pb::default();
    ty.message(1, &tensor.buf);
    let mut vi = Pb::default();
    vi.string(1, name);
    vi.message(2, &ty.buf);
    vi.buf
}

/// One NodeProto with its attributes.
struct Node {
    op_type: &'static str,
    inputs: Vec<String>,
    output: String,
    /// Outputs after the first (Split's).
    more_outputs: Vec<String>,
    attrs: Vec<Vec<u8>>,
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

    /// AttributeProto: name = 1, f = 2, i = 3, ints = 8, type = 20.
    fn attr(mut self, name: &str, ty: u64, fill: impl FnOnce(&mut Pb)) -> Node {
        let mut a = Pb::default();
        a.string(1, name);
        fill(&mut a);
        a.uint(20, ty);
        self.attrs.push(a.buf);
        self
    }
    fn int(self, name: &str, v: i64) -> Node {
        self.attr(name, ATTR_INT, |a| a.uint(3, v as u64))
    }
    fn ints(self, name: &str, vs: &[i64]) -> Node {
        self.attr(name, ATTR_INTS, |a| {
            for &v in vs {
                a.uint(8, v as u64);
            }
        })
    }
    fn float(self, name: &str, v: f32) -> Node {
        self.attr(name, ATTR_FLOAT, |a| a.float(2, v))
    }

    /// NodeProto: input = 1, output = 2, name = 3, op_type = 4, attribute = 5.
    fn encode(&self) -> Vec<u8> {
        let mut p = Pb::default();
        for i in &self.inputs {
            p.string(1, i);
        }
        p.string(2, &self.output);
        for o in &self.more_outputs {
            p.string(2, o);
        }
        p.string(3, &self.output);
        p.string(4, self.op_type);
        for a in &self.attrs {
            p.message(5, a);
        }
        p.buf
    }
}

/// A protocol buffers message being written.
#[derive(Default)]
struct Pb {
    buf: Vec<u8>,
}

impl Pb {
    /// Base-128 varint, least significant group first, high bit = more follows.
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }
    /// Wire type 0. Negative int64 values would be their two's complement
    /// as u64 (ten bytes); the model never has any.
    fn uint(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.varint(v);
    }
    /// Wire type 5.
    fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Wire type 2: length, then the bytes.
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    fn message(&mut self, field: u32, m: &[u8]) {
        self.bytes(field, m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_matches_the_protobuf_guide() {
        // protobuf.dev "Encoding": 150 in field 1 is 08 96 01; the string
        // "testing" in field 2 is 12 07 74 65 73 74 69 6e 67.
        let mut p = Pb::default();
        p.uint(1, 150);
        p.string(2, "testing");
        assert_eq!(p.buf, b"\x08\x96\x01\x12\x07testing");
        // Field 20 needs a two-byte key: (20 << 3) | 0 = 160 = a0 01.
        let mut p = Pb::default();
        p.uint(20, 300);
        assert_eq!(p.buf, [0xa0, 0x01, 0xac, 0x02]);
        // A float: field 2, wire type 5, then IEEE 754 little-endian.
        let mut p = Pb::default();
        p.float(2, 1.0);
        assert_eq!(p.buf, [0x15, 0x00, 0x00, 0x80, 0x3f]);
    }
}

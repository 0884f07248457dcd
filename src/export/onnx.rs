//! The inference graph as an ONNX model (onnx.ai), built from the topology
//! table and the parameters. The messages are `onnx_pb`'s prost structs;
//! prost does the protocol buffers encoding.
//!
//! Inference only: dropout is the identity at test time and is left out.
use std::collections::HashMap;
use std::path::Path;

use prost::Message;

use super::onnx_pb::tensor_shape_proto::{dimension, Dimension};
use super::onnx_pb::{
    type_proto, AttributeProto, AttributeType, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, DATA_TYPE_FLOAT,
};
use super::Tensor;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::model::topology::{Layer, LayerShape, Op, Topology};

/// IR version 8 (ONNX 1.10) and the default-domain opset 13: every op used
/// here (Conv, Relu, LRN, Split, Concat, MaxPool, Flatten, Gemm) is defined there, and
/// onnxruntime and current onnx releases accept both.
const IR_VERSION: i64 = 8;
const OPSET: i64 = 13;

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

    let mut graph = GraphProto {
        name: Some(topo.name.to_string()),
        ..GraphProto::default()
    };
    let mut initializers = Vec::new();
    // The value flowing between nodes and whether it is still [N, C, H, W].
    let mut value = "input".to_string();
    let mut spatial = true;
    let last = topo.layers.len() - 1;
    for (i, (l, s)) in topo.layers.iter().zip(&shapes).enumerate() {
        initializers.extend(layer_params(topo, l, s, &by_name)?);
        let nodes = layer_nodes(topo, l, &mut value, &mut spatial)?;
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
            graph.node.push(n.proto());
        }
    }

    graph.initializer = initializers.into_iter().map(tensor_proto).collect();
    let (c, crop) = (topo.channels as i64, topo.crop as i64);
    graph.input.push(value_info(
        "input",
        &[
            Dim::Param("N"),
            Dim::Value(c),
            Dim::Value(crop),
            Dim::Value(crop),
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
    };
    Ok(model.encode_to_vec())
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
        nodes.extend(lrn_nodes(topo, &format!("{}.lrn", l.name)));
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
fn lrn_nodes(topo: &Topology, name: &str) -> Vec<Node> {
    // ONNX LRN (like PyTorch) divides alpha by size; the paper and
    // LrnParams do not, so ONNX's alpha is ours times size. bias is k.
    let p = topo.lrn;
    let lrn = |input: String, output: &str| {
        Node::new("LRN", output, vec![input])
            .int("size", p.size as i64)
            .float("alpha", p.alpha * p.size as f32)
            .float("beta", p.beta)
            .float("bias", p.k)
    };
    if topo.towers == 1 {
        return vec![lrn(String::new(), name)];
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
    nodes
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
}

//! tests/export.rs: owns the checks of the exports. Safetensors files are
//! read back with the safetensors crate's own API (not our reader); ONNX
//! files are decoded by a small protobuf reader written here from the wire
//! format description, and the graph is compared with the paper's network
//! spelled out by hand (section 3.5), not with the topology table; .npy
//! files are compared with header bytes written from the format spec.
//! The numerical check against PyTorch and onnxruntime is
//! scripts/check-export (it needs Python).
use std::collections::BTreeMap;
use std::path::Path;

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::export::onnx::{write_onnx, PixelInput};
use alexnet_cuda::export::{network_tensors, read_safetensors, write_safetensors, Tensor};
use alexnet_cuda::model::net::Network;
use alexnet_cuda::model::topology::{Op, Topology};
use alexnet_cuda::npy::{read_npy_f32, write_npy_f32, NpyWriter};
use alexnet_cuda::run_state::Preprocess;
use safetensors::{Dtype, SafeTensors};

const WIDTHS: [usize; 7] = [6, 16, 24, 24, 16, 32, 32];
const CLASSES: usize = 10;

fn narrow() -> Topology {
    Topology::alexnet_widths(WIDTHS, CLASSES)
}

fn tensors_of(topo: &Topology) -> Vec<Tensor> {
    let be = CpuBackend::new();
    let net = Network::new(&be, topo, 1, 7).unwrap();
    network_tensors(&net).unwrap()
}

/// PyTorch's names and shapes for the narrow net, by hand: conv weights
/// [out, in / groups, k, k], linear [out, in] with fc6's input 16 x 6 x 6.
fn pytorch_shapes() -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("conv1.weight", vec![6, 3, 11, 11]),
        ("conv1.bias", vec![6]),
        ("conv2.weight", vec![16, 3, 5, 5]),
        ("conv2.bias", vec![16]),
        ("conv3.weight", vec![24, 16, 3, 3]),
        ("conv3.bias", vec![24]),
        ("conv4.weight", vec![24, 12, 3, 3]),
        ("conv4.bias", vec![24]),
        ("conv5.weight", vec![16, 12, 3, 3]),
        ("conv5.bias", vec![16]),
        ("fc6.weight", vec![32, 576]),
        ("fc6.bias", vec![32]),
        ("fc7.weight", vec![32, 32]),
        ("fc7.bias", vec![32]),
        ("fc8.weight", vec![10, 32]),
        ("fc8.bias", vec![10]),
    ]
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn network_tensors_have_pytorch_names_and_shapes() {
    let tensors = tensors_of(&narrow());
    let got: Vec<(&str, Vec<usize>)> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.clone()))
        .collect();
    assert_eq!(got, pytorch_shapes());
    for t in &tensors {
        assert_eq!(
            t.data.len(),
            t.shape.iter().product::<usize>(),
            "{}",
            t.name
        );
    }
    // Weights are drawn, not zero; conv2's biases are the paper's 1.
    assert!(tensors[0].data.iter().any(|&v| v != 0.0));
    assert!(tensors[3].data.iter().all(|&v| v == 1.0));
}

#[test]
fn safetensors_round_trip_through_the_crate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let tensors = tensors_of(&narrow());
    let mut meta = BTreeMap::new();
    meta.insert("config".to_string(), "narrow".to_string());
    write_safetensors(&path, &tensors, &meta).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let md = header.metadata().as_ref().unwrap();
    assert_eq!(md.get("config").map(String::as_str), Some("narrow"));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), tensors.len());
    for t in &tensors {
        let v = st.tensor(&t.name).unwrap();
        assert_eq!(v.dtype(), Dtype::F32, "{}", t.name);
        assert_eq!(v.shape(), t.shape.as_slice(), "{}", t.name);
        assert_eq!(f32s(v.data()), t.data, "{}", t.name);
    }

    // Our reader gives the same tensors back, sorted by name.
    let mut want = tensors.clone();
    want.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(read_safetensors(&path).unwrap(), want);
}

#[test]
fn read_safetensors_explains_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = |bytes: &[u8]| {
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, bytes).unwrap();
        read_safetensors(&p).unwrap_err().to_string()
    };

    // Files of other formats, named by their signatures: PNG's, JPEG's
    // SOI marker, a zip's local header (torch.save since PyTorch 1.6) and
    // pickle's PROTO opcode (older torch.save).
    let e = err(b"\x89PNG\r\n\x1a\n not weights at all");
    assert!(
        e.contains("bad.safetensors: not a safetensors file but a PNG image"),
        "{e}"
    );
    let e = err(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00");
    assert!(e.contains("not a safetensors file but a JPEG image"), "{e}");
    for (bytes, what) in [
        (
            &b"PK\x03\x04\x14\x00\x00\x00\x08\x00"[..],
            "a zip archive, as torch.save writes",
        ),
        (&b"\x80\x02}q\x00X\x01\x00\x00\x00a"[..], "a Python pickle"),
    ] {
        let e = err(bytes);
        assert!(
            e.contains(what) && e.contains("safetensors.torch.save_file"),
            "{e}"
        );
    }
    // Nothing recognised: the reader's own reason.
    let e = err(b"\x0c\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}    ");
    assert!(
        e.contains("bad.safetensors: not a valid safetensors file"),
        "{e}"
    );

    // A good file cut short.
    let p = dir.path().join("good.safetensors");
    write_safetensors(&p, &tensors_of(&narrow()), &BTreeMap::new()).unwrap();
    let good = std::fs::read(&p).unwrap();
    let e = err(&good[..good.len() - 100]);
    assert!(e.contains("truncated"), "{e}");

    // A float64 tensor, written by the crate itself.
    let data: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(Dtype::F64, vec![2], &data).unwrap();
    let bytes = safetensors::serialize([("x", view)], None).unwrap();
    let e = err(&bytes);
    assert!(
        e.contains("tensor x is F64") && e.contains("float32"),
        "{e}"
    );
}

#[test]
fn write_safetensors_refuses_inconsistent_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let t = |name: &str, shape: Vec<usize>, n: usize| Tensor {
        name: name.into(),
        shape,
        data: vec![0.5; n],
    };
    let meta = BTreeMap::new();
    assert!(write_safetensors(&path, &[t("a", vec![2, 3], 5)], &meta).is_err());
    assert!(write_safetensors(&path, &[t("a", vec![2], 2), t("a", vec![1], 1)], &meta).is_err());
    assert!(!path.exists());
}

/// The same tensors and metadata give the same bytes, write after write
/// (the metadata has enough keys that two random orders would almost never
/// agree: 8! orders), and the crate still reads the file back whole.
#[test]
fn the_same_weights_write_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = tensors_of(&narrow());
    let meta: BTreeMap<String, String> = (0..8)
        .map(|i| (format!("key{i}"), format!("value \"{i}\"")))
        .collect();
    let write = |name: &str| {
        let p = dir.path().join(name);
        write_safetensors(&p, &tensors, &meta).unwrap();
        std::fs::read(p).unwrap()
    };
    let (a, b) = (write("a.safetensors"), write("b.safetensors"));
    assert!(a == b, "two writes differ");
    let st = SafeTensors::deserialize(&a).unwrap();
    assert_eq!(st.len(), tensors.len());
    for t in &tensors {
        let view = st.tensor(&t.name).unwrap();
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!((view.shape(), &data), (&t.shape[..], &t.data), "{}", t.name);
    }
    let (_, header) = SafeTensors::read_metadata(&a).unwrap();
    let got = header.metadata().clone().unwrap();
    assert_eq!(got.len(), meta.len());
    for (k, v) in &meta {
        assert_eq!(got.get(k), Some(v));
    }
}

/// A temporary file that a killed writer left (SIGKILL: no cleanup ran) is
/// removed by the next write of the same file, whole or streamed; one of a
/// process still running, and those of other files, are kept.
#[test]
#[cfg(target_os = "linux")]
fn a_write_removes_the_temporary_files_killed_writers_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    // Above Linux's largest pid (2^22): no process has it.
    let gone = 4_194_303_999u32;
    let temp = |file: &str, pid: u32| dir.path().join(format!("{file}.tmp-{pid}"));
    let names = ["w.safetensors", "f.npy", "other.npy"];
    for name in names {
        for pid in [gone, running.id()] {
            std::fs::write(temp(name, pid), "half a file").unwrap();
        }
    }
    write_safetensors(
        &dir.path().join("w.safetensors"),
        &tensors_of(&narrow()),
        &BTreeMap::new(),
    )
    .unwrap();
    let mut w = NpyWriter::create(&dir.path().join("f.npy"), 1, 2).unwrap();
    w.append(&[1.0, 2.0]).unwrap();
    w.finish().unwrap();
    let _ = running.kill();
    let _ = running.wait();
    for name in names {
        let written = name != "other.npy";
        assert_eq!(
            temp(name, gone).exists(),
            !written,
            "{name}, killed writer's"
        );
        assert!(
            temp(name, running.id()).exists(),
            "{name}, running writer's"
        );
    }
}

/// Where a file cannot go: a missing folder is named (not the temporary
/// file the OS would name), a folder given as the file is called one, a
/// file's name with a trailing / is told to drop it, and
/// nothing is left behind; a folder given to the reader is called one too.
#[test]
fn writes_and_reads_name_a_missing_folder_or_a_folder_given_as_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = tensors_of(&narrow());
    let meta = BTreeMap::new();
    let missing = dir.path().join("no/such");
    let e = write_safetensors(&missing.join("x.safetensors"), &tensors, &meta)
        .unwrap_err()
        .to_string();
    let folder = missing.display().to_string();
    assert!(e.contains(&folder) && e.contains("does not exist"), "{e}");
    assert!(!e.contains(".tmp-"), "{e}");
    let e = write_npy_f32(&missing.join("x.npy"), &[1, 1], &[0.0])
        .unwrap_err()
        .to_string();
    assert!(e.contains(&folder) && e.contains("does not exist"), "{e}");

    let e = write_safetensors(dir.path(), &tensors, &meta)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a folder, not a file name"), "{e}");
    // A file's name written as a folder's: the OS said only "Not a directory".
    let slash = format!("{}/m.onnx/", dir.path().display());
    let e = write_safetensors(Path::new(&slash), &tensors, &meta)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&slash) && e.contains("drop the trailing /"),
        "{e}"
    );
    let e = read_safetensors(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("a folder") && e.contains("best.safetensors"),
        "{e}"
    );
    // A name of 250 bytes fits the file system's 255, its temporary
    // name (".tmp-" and the pid added) does not: said before any write.
    let long = dir.path().join(format!("{}.safetensors", "m".repeat(238)));
    let e = write_safetensors(&long, &tensors, &meta)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("its name is 250 bytes") && e.contains("past the 255 a file name may have"),
        "{e}"
    );
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(left, 0, "files left in {}", dir.path().display());
}

// ---------------------------------------------------------------------------
// A protobuf reader for the tests, from the wire format description
// (protobuf.dev/programming-guides/encoding): key varint = field << 3 | type;
// type 0 varint, 1 fixed 8 bytes, 2 length-delimited, 5 fixed 4 bytes.

#[derive(Clone, Debug)]
enum Val<'a> {
    Varint(u64),
    /// Wire type 1; ONNX models here never use it.
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

fn read_varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

fn fields(b: &[u8]) -> Vec<(u64, Val<'_>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = read_varint(b, &mut i);
        let val = match key & 7 {
            0 => Val::Varint(read_varint(b, &mut i)),
            1 => {
                i += 8;
                Val::Fixed64
            }
            2 => {
                let n = read_varint(b, &mut i) as usize;
                i += n;
                Val::Bytes(&b[i - n..i])
            }
            5 => {
                i += 4;
                Val::Fixed32(u32::from_le_bytes(b[i - 4..i].try_into().unwrap()))
            }
            t => panic!("wire type {t} at byte {i}"),
        };
        out.push((key >> 3, val));
    }
    assert_eq!(i, b.len(), "message overruns its bytes");
    out
}

/// All values of one field.
fn all<'a>(msg: &[(u64, Val<'a>)], field: u64) -> Vec<Val<'a>> {
    msg.iter()
        .filter(|(f, _)| *f == field)
        .map(|(_, v)| v.clone())
        .collect()
}

fn bytes<'a>(msg: &[(u64, Val<'a>)], field: u64) -> &'a [u8] {
    match all(msg, field).as_slice() {
        [Val::Bytes(b)] => b,
        other => panic!("field {field}: {other:?}"),
    }
}

fn text(msg: &[(u64, Val<'_>)], field: u64) -> String {
    String::from_utf8(bytes(msg, field).to_vec()).unwrap()
}

fn texts(msg: &[(u64, Val<'_>)], field: u64) -> Vec<String> {
    all(msg, field)
        .into_iter()
        .map(|v| match v {
            Val::Bytes(b) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("field {field}: {other:?}"),
        })
        .collect()
}

/// Repeated int64, packed or not.
fn ints(msg: &[(u64, Val<'_>)], field: u64) -> Vec<i64> {
    let mut out = Vec::new();
    for v in all(msg, field) {
        match v {
            Val::Varint(x) => out.push(x as i64),
            Val::Bytes(b) => {
                let mut i = 0;
                while i < b.len() {
                    out.push(read_varint(b, &mut i) as i64);
                }
            }
            other => panic!("field {field}: {other:?}"),
        }
    }
    out
}

/// AttributeProto: (f 2, i 3, ints 8), keyed by name 1.
type Attr = (Option<f32>, Option<i64>, Vec<i64>);

/// One decoded NodeProto (input 1, output 2, op_type 4, attribute 5).
#[derive(Debug)]
struct Node {
    op: String,
    inputs: Vec<String>,
    output: String,
    /// Every output (Split has several); `output` is the first.
    outputs: Vec<String>,
    attrs: BTreeMap<String, Attr>,
}

impl Node {
    fn int(&self, name: &str) -> i64 {
        self.attrs[name]
            .1
            .unwrap_or_else(|| panic!("{name} of {self:?}"))
    }
    fn ints(&self, name: &str) -> Vec<i64> {
        self.attrs[name].2.clone()
    }
    fn float(&self, name: &str) -> f32 {
        self.attrs[name]
            .0
            .unwrap_or_else(|| panic!("{name} of {self:?}"))
    }
}

/// TensorProto: (dims 1, data_type 2, raw_data 9), keyed by name 8.
pub(crate) type Init = (Vec<i64>, i64, Vec<f32>);

pub(crate) struct Model {
    ir_version: u64,
    opset: u64,
    nodes: Vec<Node>,
    pub(crate) inits: BTreeMap<String, Init>,
    /// Each initializer's raw_data, for those not FLOAT.
    raw: BTreeMap<String, Vec<u8>>,
    /// ValueInfoProto name and its dims (dim_value as text, or dim_param).
    inputs: Vec<(String, Vec<String>)>,
    outputs: Vec<(String, Vec<String>)>,
    /// metadata_props (14): StringStringEntryProto key 1, value 2.
    pub(crate) meta: BTreeMap<String, String>,
}

/// Metadata as `export` writes it, with a name holding a comma and quotes
/// (and an `input` that the graph's own replaces).
fn meta() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("config".into(), "alexnet".into()),
        ("input".into(), "given".into()),
        ("names".into(), r#"["tench, Tinca tinca","\"x\" é"]"#.into()),
    ])
}

fn value_infos(graph: &[(u64, Val<'_>)], field: u64) -> Vec<(String, Vec<String>)> {
    all(graph, field)
        .into_iter()
        .map(|v| {
            let Val::Bytes(b) = v else { panic!() };
            let vi = fields(b);
            let ty = fields(bytes(&vi, 2));
            let tensor = fields(bytes(&ty, 1));
            assert_eq!(ints(&tensor, 1), [1], "elem_type FLOAT");
            let shape = fields(bytes(&tensor, 2));
            let dims = all(&shape, 1)
                .into_iter()
                .map(|d| {
                    let Val::Bytes(d) = d else { panic!() };
                    let d = fields(d);
                    match d.as_slice() {
                        [(1, Val::Varint(v))] => v.to_string(),
                        [(2, Val::Bytes(p))] => String::from_utf8(p.to_vec()).unwrap(),
                        other => panic!("dimension {other:?}"),
                    }
                })
                .collect();
            (text(&vi, 1), dims)
        })
        .collect()
}

pub(crate) fn decode(path: &Path) -> Model {
    let file = std::fs::read(path).unwrap();
    let model = fields(&file);
    let opset = fields(bytes(&model, 8));
    assert!(all(&opset, 1).is_empty() || text(&opset, 1).is_empty());
    let graph = fields(bytes(&model, 7));
    let nodes = all(&graph, 1)
        .into_iter()
        .map(|v| {
            let Val::Bytes(b) = v else { panic!() };
            let n = fields(b);
            let attrs = all(&n, 5)
                .into_iter()
                .map(|a| {
                    let Val::Bytes(a) = a else { panic!() };
                    let a = fields(a);
                    let f = match all(&a, 2).as_slice() {
                        [Val::Fixed32(x)] => Some(f32::from_bits(*x)),
                        _ => None,
                    };
                    let i = ints(&a, 3).first().copied();
                    (text(&a, 1), (f, i, ints(&a, 8)))
                })
                .collect();
            Node {
                op: text(&n, 4),
                inputs: texts(&n, 1),
                output: texts(&n, 2)[0].clone(),
                outputs: texts(&n, 2),
                attrs,
            }
        })
        .collect();
    let inits = all(&graph, 5)
        .into_iter()
        .map(|v| {
            let Val::Bytes(b) = v else { panic!() };
            let t = fields(b);
            (
                text(&t, 8),
                (ints(&t, 1), ints(&t, 2)[0], f32s(bytes(&t, 9))),
            )
        })
        .collect();
    let raw = all(&graph, 5)
        .into_iter()
        .map(|v| {
            let Val::Bytes(b) = v else { panic!() };
            let t = fields(b);
            (text(&t, 8), bytes(&t, 9).to_vec())
        })
        .collect();
    let meta = all(&model, 14)
        .into_iter()
        .map(|v| {
            let Val::Bytes(b) = v else { panic!() };
            let e = fields(b);
            (text(&e, 1), text(&e, 2))
        })
        .collect();
    Model {
        raw,
        meta,
        ir_version: ints(&model, 1)[0] as u64,
        opset: ints(&opset, 2)[0] as u64,
        nodes,
        inits,
        inputs: value_infos(&graph, 11),
        outputs: value_infos(&graph, 12),
    }
}

/// ONNX's LRN window for an even size is `size` channels, one side longer;
/// ours is size + 1 centred (section 3.3's i - n/2 ..= i + n/2). Such a
/// net is refused, not written to compute something else.
#[test]
fn onnx_refuses_an_even_lrn_window() {
    let mut topo = narrow();
    topo.lrn.size = 4;
    let tensors = tensors_of(&topo);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let e = write_onnx(&topo, &tensors, None, &BTreeMap::new(), &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("LRN window size 4 is even"), "{e}");
    assert!(!path.exists());
}

fn write_and_decode(topo: &Topology) -> (Vec<Tensor>, Model) {
    let tensors = tensors_of(topo);
    let m = written(topo, &tensors, None);
    (tensors, m)
}

/// `topo`'s graph with `tensors` (and `pixels`), written and decoded.
fn written(topo: &Topology, tensors: &[Tensor], pixels: Option<&PixelInput>) -> Model {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    write_onnx(topo, tensors, pixels, &meta(), &path).unwrap();
    decode(&path)
}

#[test]
fn onnx_graph_is_the_papers_network() {
    let (tensors, m) = write_and_decode(&narrow());
    assert!(m.ir_version >= 7, "opset 13 needs IR version 7 or later");
    assert_eq!(m.opset, 13);
    // `input` names the graph's input (a given one is replaced): a
    // client reading `preprocess` from the metadata knows to apply it.
    let mut want = meta();
    want.insert("input".into(), "input".into());
    assert_eq!(m.meta, want);

    let ops: Vec<&str> = m.nodes.iter().map(|n| n.op.as_str()).collect();
    #[rustfmt::skip]
    let want = [
        // LRN within each tower's channels: split, normalise each, concatenate.
        "Conv", "Relu", "Split", "LRN", "LRN", "Concat", "MaxPool", // conv1 (section 3.5)
        "Conv", "Relu", "Split", "LRN", "LRN", "Concat", "MaxPool", // conv2
        "Conv", "Relu",                     // conv3
        "Conv", "Relu",                     // conv4
        "Conv", "Relu", "MaxPool",          // conv5
        "Flatten", "Gemm", "Relu",          // fc6
        "Gemm", "Relu",                     // fc7
        "Gemm",                             // fc8: logits, no ReLU
    ];
    assert_eq!(ops, want);

    // Each node reads the previous node's output; the chain starts at the
    // graph input and ends at the graph output. Around LRN the chain forks:
    // Split gives two halves, each LRN reads one, Concat reads both.
    // Tower t's LRN reads the Split's output t: its own channels.
    let mut prev = vec!["input".to_string()];
    let mut tower = 0;
    for n in &m.nodes {
        match n.op.as_str() {
            "LRN" => {
                let split = m.nodes.iter().find(|s| s.outputs.contains(&n.inputs[0]));
                assert_eq!(split.map(|s| s.op.as_str()), Some("Split"), "{n:?}");
                let split = split.unwrap();
                assert_eq!(n.inputs, [split.outputs[tower].clone()], "{n:?}");
                tower = 1 - tower;
            }
            "Concat" => {
                assert_eq!(n.int("axis"), 1);
                assert_eq!(n.inputs, prev, "{n:?}");
            }
            _ => assert_eq!(n.inputs[0], prev[prev.len() - 1], "{n:?}"),
        }
        if n.op == "Split" {
            assert_eq!(n.int("axis"), 1);
            assert_eq!(n.outputs.len(), 2, "one half per tower");
            assert_eq!(n.inputs.len(), 1, "equal halves: no split sizes");
        }
        prev = match (n.op.as_str(), prev.last()) {
            // The two LRN outputs feed the Concat.
            ("LRN", Some(p)) if p.contains(".tower") => vec![p.clone(), n.output.clone()],
            _ => vec![n.output.clone()],
        };
    }
    assert_eq!(prev, ["logits"]);
    assert_eq!(
        m.inputs,
        [(
            "input".into(),
            vec!["N".into(), "3".into(), "227".into(), "227".into()]
        )]
    );
    assert_eq!(
        m.outputs,
        [("logits".into(), vec!["N".into(), "10".into()])]
    );

    // Convolutions: (kernel, stride, pad, groups) as section 3.5 gives them.
    let convs: Vec<&Node> = m.nodes.iter().filter(|n| n.op == "Conv").collect();
    let want = [
        (11, 4, 0, 1),
        (5, 1, 2, 2),
        (3, 1, 1, 1),
        (3, 1, 1, 2),
        (3, 1, 1, 2),
    ];
    for (i, (n, &(k, s, p, g))) in convs.iter().zip(&want).enumerate() {
        let layer = format!("conv{}", i + 1);
        assert_eq!(
            n.inputs,
            [
                n.inputs[0].clone(),
                format!("{layer}.weight"),
                format!("{layer}.bias")
            ]
        );
        assert_eq!(n.ints("kernel_shape"), [k, k], "{layer}");
        assert_eq!(n.ints("strides"), [s, s], "{layer}");
        assert_eq!(n.ints("pads"), [p, p, p, p], "{layer}");
        assert_eq!(n.int("group"), g, "{layer}");
    }

    // LRN: the paper's k = 2, n = 5, alpha = 1e-4, beta = 0.75, with ONNX's
    // alpha being the paper's times size (ONNX divides it by size).
    for n in m.nodes.iter().filter(|n| n.op == "LRN") {
        assert_eq!(n.int("size"), 5);
        assert!((n.float("alpha") - 5e-4).abs() < 1e-10, "{n:?}");
        assert_eq!(n.float("beta"), 0.75);
        assert_eq!(n.float("bias"), 2.0);
    }
    // Overlapping pooling (section 3.4), no padding, floor (ceil_mode unset).
    for n in m.nodes.iter().filter(|n| n.op == "MaxPool") {
        assert_eq!(n.ints("kernel_shape"), [3, 3]);
        assert_eq!(n.ints("strides"), [2, 2]);
        assert!(!n.attrs.contains_key("pads") && !n.attrs.contains_key("ceil_mode"));
    }
    let flatten = m.nodes.iter().find(|n| n.op == "Flatten").unwrap();
    assert_eq!(flatten.int("axis"), 1);
    for (i, n) in m.nodes.iter().filter(|n| n.op == "Gemm").enumerate() {
        assert_eq!(n.int("transB"), 1, "weights are [out, in]");
        let layer = format!("fc{}", i + 6);
        assert_eq!(
            n.inputs[1..],
            [format!("{layer}.weight"), format!("{layer}.bias")],
            "{n:?}"
        );
    }

    // Initializers: every parameter, FLOAT, PyTorch shape, our values.
    assert_eq!(m.inits.len(), tensors.len());
    for t in &tensors {
        let (dims, ty, data) = &m.inits[&t.name];
        let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        assert_eq!(dims, t.shape, "{}", t.name);
        assert_eq!(*ty, 1, "{} is FLOAT", t.name);
        assert_eq!(data, &t.data, "{}", t.name);
    }
}

#[test]
fn onnx_follows_the_config() {
    // No LRN ablation: no LRN nodes, everything else unchanged.
    let (_, m) = write_and_decode(&narrow().without_lrn());
    assert_eq!(m.nodes.iter().filter(|n| n.op == "LRN").count(), 0);
    assert_eq!(m.nodes.len(), 19);
    // One tower: one LRN over all channels, no Split or Concat.
    let (_, m) = write_and_decode(&Topology::alexnet_half());
    let ops: Vec<&str> = m.nodes.iter().map(|n| n.op.as_str()).collect();
    assert_eq!(&ops[..4], ["Conv", "Relu", "LRN", "MaxPool"]);
    assert!(!ops.contains(&"Split") && !ops.contains(&"Concat"));

    // cifar: 28x28 input, conv1 and conv2 5x5 stride 1 pad 2, fc6 over 128 x 2 x 2.
    let (_, m) = write_and_decode(&Topology::cifar());
    assert_eq!(m.inputs[0].1, ["N", "3", "28", "28"]);
    let conv1 = &m.nodes[0];
    assert_eq!(conv1.ints("kernel_shape"), [5, 5]);
    assert_eq!(conv1.ints("strides"), [1, 1]);
    assert_eq!(conv1.ints("pads"), [2, 2, 2, 2]);
    assert_eq!(m.inits["fc6.weight"].0, [512, 512]);
    assert_eq!(m.outputs[0].1, ["N", "10"]);

    // One tower (as alexnet-half): every conv has group 1.
    let mut one = narrow();
    one.towers = 1;
    for l in &mut one.layers {
        l.exchange = false;
        if let Op::Conv { groups, .. } = &mut l.op {
            *groups = 1;
        }
    }
    let (_, m) = write_and_decode(&one);
    let groups: Vec<i64> = m
        .nodes
        .iter()
        .filter(|n| n.op == "Conv")
        .map(|n| n.int("group"))
        .collect();
    assert_eq!(groups, [1, 1, 1, 1, 1]);
    assert_eq!(m.inits["conv2.weight"].0, [16, 6, 5, 5]);
}

/// `topo`'s graph taking the pixels that `p` preprocesses.
fn write_pixels(topo: &Topology, p: &Preprocess, mean: Option<&[f32]>) -> Model {
    let px = PixelInput::new(p, mean).unwrap();
    written(topo, &tensors_of(topo), Some(&px))
}

/// The nodes' ops, and whether each reads the one before (the first
/// reads `first`).
fn chained<'m>(m: &'m Model, first: &str, n: usize) -> Vec<&'m str> {
    let mut prev = first.to_string();
    for node in &m.nodes[..n] {
        assert_eq!(node.inputs[0], prev, "{node:?}");
        prev = node.output.clone();
    }
    m.nodes[..n].iter().map(|n| n.op.as_str()).collect()
}

/// With --pixels the graph does what the loader does to a test image's
/// centre crop (docs/data.md): subtract the mean image at the crop's
/// pixels, or the channel means and divide by the stds, and pad the 224
/// crop with zeros to 227, pad / 2 = 1 before and 2 after.
#[test]
fn onnx_with_pixels_preprocesses_the_centre_crop_as_the_run_did() {
    // A mean image with a different value at every pixel and channel.
    let value = |y: usize, x: usize, c: usize| ((y * 7 + x * 3 + c * 101) % 251) as f32 + 0.5;
    let mean: Vec<f32> = (0..256 * 256 * 3)
        .map(|i| value(i / 3 / 256, i / 3 % 256, i % 3))
        .collect();
    let p = Preprocess {
        image_size: 256,
        crop: 224,
        pad: 3,
        mean: [1.0, 2.0, 3.0],
        std: None,
        mean_image: true,
        stored: None,
    };
    let m = write_pixels(&narrow(), &p, Some(&mean));
    assert_eq!(chained(&m, "pixels", 3), ["Sub", "Pad", "Conv"]);
    assert_eq!(m.nodes[0].inputs, ["pixels", "pixels.mean"]);
    assert_eq!(m.inputs[0].0, "pixels");
    assert_eq!(m.inputs[0].1, ["N", "3", "224", "224"]);
    // The metadata says the graph preprocesses: `preprocess` is not to be
    // applied to its input again.
    assert_eq!(m.meta["input"], "pixels");
    // The centre crop starts at (256 - 224) / 2 = 16 on each axis.
    let (dims, ty, data) = &m.inits["pixels.mean"];
    assert_eq!((dims.as_slice(), *ty), ([1, 3, 224, 224].as_slice(), 1));
    for (c, y, x) in [(0, 0, 0), (1, 5, 200), (2, 223, 223), (0, 100, 17)] {
        let got = data[(c * 224 + y) * 224 + x];
        assert_eq!(
            got,
            value(16 + y, 16 + x, c),
            "channel {c}, row {y}, column {x}"
        );
    }
    let pads: Vec<i64> = m.raw["pixels.pads"]
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(m.inits["pixels.pads"].1, 7, "INT64");
    assert_eq!(pads, [0, 0, 1, 1, 0, 0, 2, 2]);

    // cifar: channel means, divided by the stds, no padding.
    let p = Preprocess {
        image_size: 32,
        crop: 28,
        pad: 0,
        mean: [125.3, 123.0, 113.9],
        std: Some([63.0, 62.1, 66.7]),
        mean_image: false,
        stored: None,
    };
    let m = write_pixels(&Topology::cifar(), &p, None);
    assert_eq!(chained(&m, "pixels", 3), ["Sub", "Div", "Conv"]);
    assert_eq!(m.nodes[1].inputs[1], "pixels.std");
    assert_eq!(m.inits["pixels.mean"].0, [1, 3, 1, 1]);
    assert_eq!(m.inits["pixels.mean"].2, [125.3, 123.0, 113.9]);
    assert_eq!(m.inits["pixels.std"].2, [63.0, 62.1, 66.7]);
    assert_eq!(m.inputs[0].1, ["N", "3", "28", "28"]);

    // A run that subtracted a mean image its checkpoint lacks, and crops
    // that do not make the config's input, are refused.
    let p = Preprocess {
        mean_image: true,
        ..p
    };
    let e = PixelInput::new(&p, None).unwrap_err().to_string();
    assert!(
        e.contains("data.mean_image") && e.contains("without --pixels"),
        "{e}"
    );
    let px = PixelInput::new(&Preprocess { crop: 24, ..p }, Some(&vec![0.0; 32 * 32 * 3])).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let topo = Topology::cifar();
    let e = write_onnx(
        &topo,
        &tensors_of(&topo),
        Some(&px),
        &BTreeMap::new(),
        &path,
    )
    .unwrap_err();
    assert!(e.to_string().contains("24x24"), "{e}");
}

#[test]
fn onnx_refuses_tensors_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let topo = narrow();
    let mut tensors = tensors_of(&topo);
    tensors.retain(|t| t.name != "fc7.bias");
    let e = write_onnx(&topo, &tensors, None, &BTreeMap::new(), &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("m.onnx") && e.contains("fc7.bias"), "{e}");

    // Weights of another width.
    let other = tensors_of(&Topology::alexnet_widths(
        [6, 16, 24, 24, 8, 32, 32],
        CLASSES,
    ));
    let e = write_onnx(&topo, &other, None, &BTreeMap::new(), &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv5.weight"), "{e}");
    assert!(!path.exists());
}

#[test]
fn npy_files_follow_the_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    write_npy_f32(&path, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let b = std::fs::read(&path).unwrap();
    // Magic, version 1.0, header length 118 so that the data starts at 128.
    assert_eq!(&b[..10], b"\x93NUMPY\x01\x00\x76\x00");
    assert!(b[10..].starts_with(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }"));
    assert_eq!(b[127], b'\n');
    assert_eq!(f32s(&b[128..]), [1.0, 2.0, 3.0, 4.0]);

    // A hand-written float64 file is read and converted; a wrong dtype is
    // refused with the file's name and the fix.
    let mut h =
        b"\x93NUMPY\x01\x00\x76\x00{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }"
            .to_vec();
    h.resize(127, b' ');
    h.push(b'\n');
    let mut f8 = h.clone();
    f8.extend(0.5f64.to_le_bytes());
    f8.extend((-1.25f64).to_le_bytes());
    std::fs::write(&path, &f8).unwrap();
    assert_eq!(read_npy_f32(&path).unwrap(), (vec![2], vec![0.5, -1.25]));

    let at = h.windows(3).position(|w| w == b"<f8").unwrap();
    h[at + 1] = b'i';
    std::fs::write(&path, &h).unwrap();
    let e = read_npy_f32(&path).unwrap_err().to_string();
    assert!(
        e.contains("x.npy") && e.contains("astype(np.float32)"),
        "{e}"
    );
}

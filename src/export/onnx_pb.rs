//! The ONNX protocol-buffer messages `onnx` writes, as prost structs: the
//! checked-in equivalent of protoc's output for the fields we use, so the
//! build needs no protoc.
//!
//! Messages, fields and numbers are onnx.proto's (github.com/onnx/onnx,
//! onnx/onnx.proto, IR version 7 and later; the numbers never change).
//! onnx.proto is proto2: scalar fields are `optional` (written when set,
//! even to zero) and repeated int64 is unpacked, one key per element.
//! Fields we never set are left out; readers skip what a message lacks.

/// ModelProto.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// ir_version = 1.
    #[prost(int64, optional, tag = "1")]
    pub ir_version: Option<i64>,
    /// producer_name = 2.
    #[prost(string, optional, tag = "2")]
    pub producer_name: Option<String>,
    /// producer_version = 3.
    #[prost(string, optional, tag = "3")]
    pub producer_version: Option<String>,
    /// graph = 7.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// opset_import = 8.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// metadata_props = 14.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// StringStringEntryProto: one named string of the model's metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// key = 1.
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    /// value = 2.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// OperatorSetIdProto.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// domain = 1: absent or "" is the default domain, ai.onnx.
    #[prost(string, optional, tag = "1")]
    pub domain: Option<String>,
    /// version = 2.
    #[prost(int64, optional, tag = "2")]
    pub version: Option<i64>,
}

/// GraphProto.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// node = 1, in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// name = 2.
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    /// initializer = 5.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// input = 11.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// output = 12.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// NodeProto.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// input = 1.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// output = 2.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// name = 3.
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    /// op_type = 4.
    #[prost(string, optional, tag = "4")]
    pub op_type: Option<String>,
    /// attribute = 5.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// AttributeProto (the FLOAT, INT and INTS kinds).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// name = 1.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// f = 2.
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    /// i = 3.
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// ints = 8 (proto2: unpacked).
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    /// type = 20, an AttributeType.
    #[prost(enumeration = "AttributeType", optional, tag = "20")]
    pub r#type: Option<i32>,
}

/// AttributeProto.AttributeType (the values we use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AttributeType {
    Undefined = 0,
    Float = 1,
    Int = 2,
    Ints = 7,
}

/// TensorProto (dense, data in raw_data).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// dims = 1 (proto2: unpacked).
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    /// data_type = 2, a DataType.
    #[prost(int32, optional, tag = "2")]
    pub data_type: Option<i32>,
    /// name = 8.
    #[prost(string, optional, tag = "8")]
    pub name: Option<String>,
    /// raw_data = 9: fixed-width little-endian values, row-major.
    #[prost(bytes = "vec", optional, tag = "9")]
    pub raw_data: Option<Vec<u8>>,
}

/// TensorProto.DataType.FLOAT (float32).
pub const DATA_TYPE_FLOAT: i32 = 1;
/// TensorProto.DataType.INT64 (Pad's `pads` input).
pub const DATA_TYPE_INT64: i32 = 7;

/// ValueInfoProto.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// name = 1.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// type = 2.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// TypeProto (the tensor_type case of its `value` oneof).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// oneof value { Tensor tensor_type = 1; ... }.
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
}

pub mod type_proto {
    /// TypeProto's `value` oneof.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// tensor_type = 1.
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }

    /// TypeProto.Tensor.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        /// elem_type = 1, a TensorProto.DataType.
        #[prost(int32, optional, tag = "1")]
        pub elem_type: Option<i32>,
        /// shape = 2.
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }
}

/// TensorShapeProto.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// dim = 1.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

pub mod tensor_shape_proto {
    /// TensorShapeProto.Dimension.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        /// oneof value { int64 dim_value = 1; string dim_param = 2; }.
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
    }

    pub mod dimension {
        /// Dimension's `value` oneof: a size, or a symbolic name.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            /// dim_value = 1.
            #[prost(int64, tag = "1")]
            DimValue(i64),
            /// dim_param = 2.
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

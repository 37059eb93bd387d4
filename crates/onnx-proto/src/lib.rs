//! The ONNX protobuf messages of the workspace, in one place for reading (`models` takes the
//! initializers of an ONNX file) and writing (`export` writes a whole classifier as a graph).
//!
//! Declared with prost derives, no protoc and no generated code. Field numbers, types and
//! packing are those of `onnx/onnx.proto` (ONNX 1.23, `syntax = "proto2"`); checked against the
//! file shipped in the `onnx` Python package. A message holds the fields a model of ours needs
//! and the common ones around them; prost skips every other field when decoding, so any valid
//! ONNX file parses. Left out: sparse tensors, functions, training info, sequence/map/optional
//! types, quantization annotations, device configurations.
//!
//! proto2 presence: a field whose default value means something different from "absent" is an
//! `Option` (an attribute's value, its `type`), so `i: Some(0)` is written and readers see
//! `has_i()`. Repeated scalars are packed exactly where onnx.proto says `[packed = true]`
//! (`TensorProto` data) and unpacked elsewhere (`dims`, attribute `ints`/`floats`); a reader
//! accepts either encoding.

/// `TensorProto.DataType`: the element types used here (values from onnx.proto).
pub mod data_type {
    /// 32-bit IEEE float.
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const DOUBLE: i32 = 11;
}

/// `AttributeProto.AttributeType` (values from onnx.proto).
pub mod attribute_type {
    pub const FLOAT: i32 = 1;
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const TENSOR: i32 = 4;
    pub const FLOATS: i32 = 6;
    pub const INTS: i32 = 7;
    pub const STRINGS: i32 = 8;
}

/// `TensorProto.DataLocation.EXTERNAL`: the data is in another file (`external_data`).
pub const DATA_LOCATION_EXTERNAL: i32 = 1;

/// A whole model: IR version, operator sets, metadata and the graph.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// The IR version the file follows (`Version` in onnx.proto; 8 goes with opset 13 to 17).
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// The operator sets the graph uses; the default domain is `""` (`ai.onnx`).
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "4")]
    pub domain: String,
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    /// Human-readable documentation (onnxruntime: `ModelMetadata.description`).
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Free key-value pairs (onnxruntime: `ModelMetadata.custom_metadata_map`).
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// One operator set a model imports: domain (`""` = `ai.onnx`) and version.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// A key-value string pair (metadata).
#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A computation graph: nodes in topological order, initializers (constant tensors, e.g.
/// weights), inputs and outputs.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// onnxruntime: `ModelMetadata.graph_description`.
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// Types of intermediate values (optional, informative).
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "16")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// One operator application: `op_type` of `domain` on named inputs, giving named outputs.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(string, tag = "7")]
    pub domain: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "9")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// A named attribute of a node; `type` (an [`attribute_type`]) says which value field holds it.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "21")]
    pub ref_attr_name: String,
    #[prost(string, tag = "13")]
    pub doc_string: String,
    #[prost(int32, optional, tag = "20")]
    pub r#type: Option<i32>,
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// UTF-8 string value (bytes in onnx.proto).
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(message, optional, tag = "6")]
    pub g: Option<GraphProto>,
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphProto>,
}

/// A tensor value: dims, element type ([`data_type`]) and data, either in the typed field of its
/// type or as little-endian bytes in `raw_data`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub string_data: Vec<Vec<u8>>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(string, tag = "12")]
    pub doc_string: String,
    /// The elements as little-endian bytes, row-major (C order).
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// 0 (`DEFAULT`) or [`DATA_LOCATION_EXTERNAL`].
    #[prost(int32, tag = "14")]
    pub data_location: i32,
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: Vec<u64>,
}

/// A named value's type (graph inputs, outputs, intermediate values).
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

/// A value's type; only tensor types are declared (`TypeProto.tensor_type`, field 1 of its
/// `value` oneof).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<type_proto::Tensor>,
    #[prost(string, tag = "6")]
    pub denotation: String,
}

/// Nested messages of [`TypeProto`].
pub mod type_proto {
    /// A tensor type: element type ([`crate::data_type`]) and, optionally, shape.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        #[prost(int32, optional, tag = "1")]
        pub elem_type: Option<i32>,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }
}

/// A tensor shape: one entry per axis, each a fixed size or a symbolic name.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested messages of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// One axis: `dim_value` (a size) or `dim_param` (a symbolic name such as `N`).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
        #[prost(string, tag = "3")]
        pub denotation: String,
    }

    /// The `value` oneof of [`Dimension`].
    pub mod dimension {
        /// A fixed size or a symbolic name.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(int64, tag = "1")]
            DimValue(i64),
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

/// Encoding and decoding: `model.encode_to_vec()`, `ModelProto::decode(bytes)`.
pub use prost::{DecodeError, Message};

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-encoded bytes pin the field numbers and wire types that matter to a reader: a
    /// change of tag or packing shows here, not as a file onnxruntime refuses.
    #[test]
    fn wire_format_follows_onnx_proto() {
        let attr = AttributeProto {
            name: "k".into(),
            r#type: Some(attribute_type::INT),
            i: Some(0),
            ints: vec![1, 2],
            ..Default::default()
        };
        // name (1, len) "k"; i (3, varint) 0; ints (8, varint) 1, 2 unpacked; type (20) = 2
        assert_eq!(attr.encode_to_vec(), [0x0a, 1, b'k', 0x18, 0, 0x40, 1, 0x40, 2, 0xa0, 0x01, 2]);
        let tensor = TensorProto {
            dims: vec![2],
            data_type: data_type::FLOAT,
            name: "w".into(),
            raw_data: vec![0, 0, 0x80, 0x3f],
            ..Default::default()
        };
        // dims (1) unpacked; data_type (2); name (8); raw_data (9)
        assert_eq!(
            tensor.encode_to_vec(),
            [0x08, 2, 0x10, 1, 0x42, 1, b'w', 0x4a, 4, 0, 0, 0x80, 0x3f]
        );
        let dim = tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimParam("N".into())),
            denotation: String::new(),
        };
        assert_eq!(dim.encode_to_vec(), [0x12, 1, b'N']);
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
            ..Default::default()
        };
        // ir_version (1) = 8; opset_import (8, len 2) { version (2) = 17 }
        assert_eq!(model.encode_to_vec(), [0x08, 8, 0x42, 2, 0x10, 17]);
        assert_eq!(ModelProto::decode(&model.encode_to_vec()[..]).unwrap(), model);
    }

    #[test]
    fn packed_and_unpacked_both_decode() {
        // float_data (4) packed: one float 1.0; then unpacked: another 2.0
        let bytes = [0x22, 4, 0, 0, 0x80, 0x3f, 0x25, 0, 0, 0, 0x40];
        let t = TensorProto::decode(&bytes[..]).unwrap();
        assert_eq!(t.float_data, [1.0, 2.0]);
    }
}

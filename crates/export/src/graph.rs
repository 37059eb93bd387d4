//! A small builder of ONNX graphs over the `onnx_proto` messages: nodes appended in
//! topological order, float32 and int64 initializers stored as little-endian `raw_data`, and
//! the attribute and value-info spellings the classifier graph needs.

use onnx_proto::tensor_shape_proto::{Dimension, dimension};
use onnx_proto::{
    AttributeProto, GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto, attribute_type, data_type, type_proto,
};

/// Nodes and initializers of a graph under construction.
#[derive(Debug, Default)]
pub(crate) struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl GraphBuilder {
    /// Appends a node of the default domain (`ai.onnx`) named `name`, computing `output` from
    /// `inputs`; returns the output's name, for the next node's inputs.
    pub(crate) fn node(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.to_owned()],
            name: name.to_owned(),
            op_type: op_type.to_owned(),
            attribute,
            ..Default::default()
        });
        output.to_owned()
    }

    /// Adds a float32 initializer `name` of shape `dims` (row-major `values`); returns its name.
    pub(crate) fn float(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<i64>(), values.len() as i64, "{name}");
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: data_type::FLOAT,
            name: name.to_owned(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.to_owned()
    }

    /// Adds an int64 initializer `name` of shape `dims`; returns its name.
    pub(crate) fn int64(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        debug_assert_eq!(dims.iter().product::<i64>(), values.len() as i64, "{name}");
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: data_type::INT64,
            name: name.to_owned(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.to_owned()
    }

    /// Number of nodes so far.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The finished graph.
    pub(crate) fn finish(
        self,
        name: &str,
        doc_string: &str,
        input: Vec<ValueInfoProto>,
        output: Vec<ValueInfoProto>,
    ) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: name.to_owned(),
            initializer: self.initializers,
            doc_string: doc_string.to_owned(),
            input,
            output,
            ..Default::default()
        }
    }
}

/// An `INT` attribute (written even when 0: proto2 presence).
pub(crate) fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: Some(attribute_type::INT),
        i: Some(value),
        ..Default::default()
    }
}

/// An `INTS` attribute.
pub(crate) fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: Some(attribute_type::INTS),
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// One axis of a value's shape: a fixed size or a symbolic name.
#[derive(Debug, Clone)]
pub(crate) enum Dim {
    Fixed(i64),
    Named(&'static str),
}

/// A float32 tensor value named `name` of shape `dims`, with a description.
pub(crate) fn float_value(name: &str, dims: &[Dim], doc_string: &str) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(size) => dimension::Value::DimValue(*size),
                Dim::Named(name) => dimension::Value::DimParam((*name).to_owned()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            tensor_type: Some(type_proto::Tensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto { dim }),
            }),
            denotation: String::new(),
        }),
        doc_string: doc_string.to_owned(),
    }
}

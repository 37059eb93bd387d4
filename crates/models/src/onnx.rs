//! Reads the float initializers of an ONNX model (weights only; the graph is not interpreted).
//!
//! The protobuf messages are the workspace's one declaration of them, `onnx_proto` (prost
//! derives, field numbers of onnx.proto), which `export` also writes with; prost skips every
//! field they do not declare, so any valid ONNX file parses.

use std::path::Path;

use onnx_proto::{DATA_LOCATION_EXTERNAL, Message, ModelProto, data_type};

use crate::ModelError;

/// A float32 initializer: name, shape and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Initializer {
    pub name: String,
    pub shape: Vec<i64>,
    pub values: Vec<f32>,
}

/// The float32 initializers of the ONNX file at `path` (others are skipped: they are not weights
/// we can use). Externally stored data is refused with its tensor named.
pub fn read_initializers(path: &Path) -> Result<Vec<Initializer>, ModelError> {
    let err = |reason: String| ModelError::Weights { path: path.to_owned(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let model =
        ModelProto::decode(bytes.as_slice()).map_err(|e| err(format!("not an ONNX model: {e}")))?;
    let graph = model.graph.ok_or_else(|| err("the ONNX model has no graph".into()))?;
    let mut out = Vec::new();
    for t in graph.initializer {
        if t.data_type != data_type::FLOAT {
            continue;
        }
        if t.data_location == DATA_LOCATION_EXTERNAL {
            return Err(err(format!(
                "initializer {} keeps its data in an external file, which is not supported",
                t.name
            )));
        }
        let count =
            t.dims.iter().try_fold(1i64, |acc, &d| if d < 0 { None } else { acc.checked_mul(d) });
        let count = count
            .ok_or_else(|| err(format!("initializer {} has invalid dims {:?}", t.name, t.dims)))?
            as usize;
        let values: Vec<f32> = if !t.raw_data.is_empty() {
            if t.raw_data.len() != count * 4 {
                return Err(err(format!(
                    "initializer {}: {} bytes of raw data for {count} floats",
                    t.name,
                    t.raw_data.len()
                )));
            }
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            if t.float_data.len() != count {
                return Err(err(format!(
                    "initializer {}: {} floats for dims {:?}",
                    t.name,
                    t.float_data.len(),
                    t.dims
                )));
            }
            t.float_data
        };
        out.push(Initializer { name: t.name, shape: t.dims, values });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_proto::{GraphProto, TensorProto};

    fn model_bytes(tensors: Vec<TensorProto>) -> Vec<u8> {
        let graph = GraphProto { initializer: tensors, ..Default::default() };
        ModelProto { graph: Some(graph), ..Default::default() }.encode_to_vec()
    }

    fn tensor(name: &str, dims: Vec<i64>, raw: &[f32]) -> TensorProto {
        TensorProto {
            dims,
            data_type: data_type::FLOAT,
            name: name.into(),
            raw_data: raw.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    type Expected<'a> = Result<Vec<(&'a str, Vec<i64>, Vec<f32>)>, &'a str>;

    fn check(bytes: &[u8], expect: Expected<'_>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, bytes).unwrap();
        match (read_initializers(&path), expect) {
            (Ok(got), Ok(want)) => {
                let got: Vec<_> = got.into_iter().map(|i| (i.name, i.shape, i.values)).collect();
                let want: Vec<_> = want.into_iter().map(|(n, s, v)| (n.to_owned(), s, v)).collect();
                assert_eq!(got, want);
            }
            (Err(e), Err(fragment)) => assert!(e.to_string().contains(fragment), "{e}"),
            (got, want) => panic!("got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn raw_and_float_data() {
        let mut b = tensor("b", vec![2], &[]);
        b.float_data = vec![0.5, -1.0];
        b.raw_data.clear();
        check(
            &model_bytes(vec![tensor("w", vec![1, 2], &[1.0, 2.0]), b]),
            Ok(vec![("w", vec![1, 2], vec![1.0, 2.0]), ("b", vec![2], vec![0.5, -1.0])]),
        );
    }

    #[test]
    fn refusals_name_the_tensor() {
        check(
            &model_bytes(vec![tensor("short", vec![3], &[1.0])]),
            Err("short: 4 bytes of raw data for 3 floats"),
        );
        let mut ext = tensor("ext", vec![1], &[1.0]);
        ext.data_location = DATA_LOCATION_EXTERNAL;
        check(&model_bytes(vec![ext]), Err("ext keeps its data in an external file"));
        check(b"\xff\xff\xff not protobuf", Err("not an ONNX model"));
        check(&ModelProto::default().encode_to_vec(), Err("no graph"));
    }
}

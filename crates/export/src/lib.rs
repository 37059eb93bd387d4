//! Exports a trained model file (`model.safetensors` of train-head, fine-tune or pretrain) as
//! one ONNX graph that onnxruntime (or any ONNX runtime) runs without this project: the
//! preprocessing, the conv base up to the cut, the global pooling or flatten, the dense head and
//! the class probabilities, with the weights as initializers.
//!
//! **Input** `pixels`: float32 `[N, 3, H, W]` (NCHW; `N` dynamic, `H` x `W` the header's
//! `input_size`), RGB channel order, values on the 0-255 scale: the image decoded to RGB8 and
//! resized to `H` x `W` as the header's `resize` says (e.g. `nearest`, Pillow's filter), with
//! nothing else done to it. The header's **preprocessing is in the graph**:
//! - `caffe`: RGB -> BGR, then minus the BGR mean `[103.939, 116.779, 123.68]` on the 0-255
//!   scale (Keras `preprocess_input`, mode caffe);
//! - `torch`: `/255`, minus the mean `[0.485, 0.456, 0.406]`, divided by the std
//!   `[0.229, 0.224, 0.225]` (torchvision; computed as `(x - 255 mean) / (255 std)`, as
//!   `models::preprocess` does);
//! - `rescale`: `/255`.
//!
//! **Output** `probabilities`: float32 `[N, classes]`, rows summing to 1, columns in class-index
//! order (the class names are in the graph's doc string and, as a JSON list, in the model's
//! `metadata_props` under `class_names`): exactly what `Classifier::predict_proba` gives: for
//! two classes the head's single logit `z` becomes `[1 - sigmoid(z), sigmoid(z)]` (Keras' sigmoid
//! output as two columns), for more a softmax. The model header JSON is kept under
//! `transfer_kit_model` and the model file's sha256 under `source_sha256`.
//!
//! The network, as `models::Classifier` computes it (operator semantics from the ONNX operator
//! specification, opset [`OPSET`]): each conv layer is `Conv` (stride 1, `same`: `k/2` zeros on
//! each side; `valid`: none) + `Relu`; each pool is `MaxPool` 2x2 stride 2, no padding (floor,
//! Keras `valid`); pooling `none` flattens channels-last like Keras' `Flatten` (`Transpose` to
//! NHWC, then `Flatten`), `avg`/`max` are `ReduceMean`/`ReduceMax` over H and W; the head is
//! `Gemm` (`transB = 1`, weights kept in torch's `[out, in]` layout) + `Relu`, dropout left out
//! (the identity at inference), then `Gemm`; the sigmoid is spelled `1 / (1 + Exp(-z))`, which
//! keeps its relative precision near 0 (onnxruntime's `Sigmoid` kernel is an approximation good
//! to ~2e-8 absolute: 3% off on a probability of 7e-7), then `1 - p` and `Concat`; the softmax is
//! `Softmax` over axis 1. Every layer list of the project is supported (the
//! VGG16 conv base, Chollet's small convnet, a narrow VGG16, any list a weights file holds),
//! every cut, pooling and head spec.
//!
//! The file is written atomically (`run_folder::write_atomic`: a temp file in the same folder,
//! then a rename), so a kill never leaves a partial file under the output name. The same model
//! file always gives the same bytes. No Python is involved.

mod graph;

use std::path::{Path, PathBuf};

use models::classifier::HEADER_KEY;
use models::{
    CAFFE_MEAN_BGR, Classifier, LayerKind, ModelError, ModelHeader, Padding, Pooling,
    Preprocessing, TORCH_MEAN_RGB, TORCH_STD_RGB,
};
use onnx_proto::{Message, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use tch::{Device, Kind, Tensor};

use graph::{Dim, GraphBuilder, float_value, int, ints};

/// Name of the graph input: float32 `[N, 3, H, W]`, RGB on 0-255.
pub const INPUT: &str = "pixels";
/// Name of the graph output: float32 `[N, classes]` class probabilities.
pub const OUTPUT: &str = "probabilities";
/// The `ai.onnx` operator set the graph uses.
pub const OPSET: i64 = 17;
/// The ONNX IR version written (8: the IR of opsets 13 to 17).
pub const IR_VERSION: i64 = 8;
/// `metadata_props` key of the class names, a JSON list in class-index order.
pub const CLASS_NAMES_KEY: &str = "class_names";
/// `metadata_props` key of the exported model file's sha256 (hex).
pub const SOURCE_SHA256_KEY: &str = "source_sha256";

/// Why an export failed; every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The model file could not be read as a classifier (not a model file, another format
    /// version, a missing tensor, ...).
    #[error("{}", model_message(.path, .source))]
    Model { path: PathBuf, source: Box<ModelError> },
    /// The model file holds something the ONNX graph cannot express.
    #[error("{path}: cannot export to ONNX: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    /// Reading the model file's digest or writing the ONNX file failed (the error names it).
    #[error("{what}: {source}")]
    File { what: &'static str, source: run_folder::RunError },
    /// The output would replace the model file itself.
    #[error("{out}: is the model file itself; choose another --out")]
    SameFile { out: PathBuf },
}

impl ExportError {
    /// Wraps a model error about the file `path`.
    fn model(path: &Path) -> impl FnOnce(ModelError) -> ExportError + '_ {
        move |source| ExportError::Model { path: path.to_owned(), source: Box::new(source) }
    }
}

/// A model error's message, prefixed with the model file unless it already starts with it.
fn model_message(path: &Path, source: &ModelError) -> String {
    let message = source.to_string();
    let shown = path.display().to_string();
    if message.starts_with(&shown) { message } else { format!("{shown}: {message}") }
}

/// What [`export_onnx`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The ONNX file.
    pub out: PathBuf,
    /// Its length in bytes.
    pub bytes: u64,
    /// Its sha256 (lower-case hex).
    pub sha256: String,
    /// Operators (nodes) in the graph.
    pub nodes: usize,
    /// Initializers (weights and constants) in the graph.
    pub initializers: usize,
    /// Class names in output-column order.
    pub class_names: Vec<String>,
}

/// Reads the model file `model` (on the CPU, nothing trainable) and writes its ONNX graph to
/// `out` atomically. Errors name the file: a model file that does not load (not a model file,
/// another format version, a missing tensor), the output being the model file, a failed write.
pub fn export_onnx(model: &Path, out: &Path) -> Result<Exported, ExportError> {
    let classifier =
        Classifier::load(model, Device::Cpu, None::<&str>).map_err(ExportError::model(model))?;
    let digest = run_folder::file_sha256(model)
        .map_err(|source| ExportError::File { what: "reading the model file", source })?;
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(model), std::fs::canonicalize(out))
        && a == b
    {
        return Err(ExportError::SameFile { out: out.to_owned() });
    }
    let proto = onnx_model(&classifier, model, &digest.sha256)?;
    let graph = proto.graph.as_ref().expect("onnx_model writes a graph");
    let (nodes, initializers) = (graph.node.len(), graph.initializer.len());
    let bytes = proto.encode_to_vec();
    run_folder::write_atomic(out, &bytes)
        .map_err(|source| ExportError::File { what: "writing the ONNX file", source })?;
    Ok(Exported {
        out: out.to_owned(),
        bytes: bytes.len() as u64,
        sha256: run_folder::sha256_hex(&bytes),
        nodes,
        initializers,
        class_names: classifier.header().class_names.clone(),
    })
}

/// The ONNX model of `classifier` (see the crate docs for the graph): `model` is the file it
/// was read from (named in errors and, by file name, in the doc string) and `model_sha256` that
/// file's digest (`metadata_props` `source_sha256`). Errors: a variable missing from the
/// classifier or of a shape its layer list does not give.
pub fn onnx_model(
    classifier: &Classifier,
    model: &Path,
    model_sha256: &str,
) -> Result<ModelProto, ExportError> {
    let header = classifier.header();
    let torch = |source: tch::TchError| ExportError::model(model)(ModelError::Torch(source));
    let unsupported = |reason: String| ExportError::Unsupported { path: model.to_owned(), reason };
    let arch = header.arch().map_err(ExportError::model(model))?;
    let cut = header.cut_layer().map_err(ExportError::model(model))?;
    let variables = classifier.variables();
    // A variable as float32 values, checked against the shape its layer should have.
    let values = |name: &str, shape: &[i64]| -> Result<Vec<f32>, ExportError> {
        let (_, t) = variables
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| unsupported(format!("the classifier has no variable {name}")))?;
        if t.size() != shape {
            return Err(unsupported(format!(
                "variable {name} has shape {:?}, expected {shape:?}",
                t.size()
            )));
        }
        let t = t
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_to_kind(Kind::Float))
            .and_then(|t| t.f_contiguous())
            .and_then(|t| t.f_view([-1]))
            .map_err(torch)?;
        Vec::<f32>::try_from(&t as &Tensor).map_err(torch)
    };

    let mut g = GraphBuilder::default();
    let [height, width] = header.input_size;

    // Preprocessing: float RGB 0-255 NCHW -> network input, as models::preprocess computes it.
    let mut x = match header.preprocessing {
        Preprocessing::Caffe => {
            let order = g.int64("preprocess/bgr_order", &[3], &[2, 1, 0]);
            let bgr = g.node(
                "Gather",
                "preprocess/rgb_to_bgr",
                &[INPUT, &order],
                "preprocess/bgr",
                vec![int("axis", 1)],
            );
            let mean = g.float("preprocess/caffe_mean_bgr", &[1, 3, 1, 1], &CAFFE_MEAN_BGR);
            g.node("Sub", "preprocess/minus_mean", &[&bgr, &mean], "preprocessed", vec![])
        }
        Preprocessing::Torch => {
            let mean =
                g.float("preprocess/mean_255", &[1, 3, 1, 1], &TORCH_MEAN_RGB.map(|m| m * 255.0));
            let std =
                g.float("preprocess/std_255", &[1, 3, 1, 1], &TORCH_STD_RGB.map(|s| s * 255.0));
            let centred = g.node(
                "Sub",
                "preprocess/minus_mean",
                &[INPUT, &mean],
                "preprocess/centred",
                vec![],
            );
            g.node("Div", "preprocess/over_std", &[&centred, &std], "preprocessed", vec![])
        }
        Preprocessing::Rescale => {
            let scale = g.float("preprocess/255", &[], &[255.0]);
            g.node("Div", "preprocess/rescale", &[INPUT, &scale], "preprocessed", vec![])
        }
    };

    // The conv base up to the cut: variables features.N.weight (OIHW) and .bias.
    for layer in arch.layers().take_while(|l| *l <= cut) {
        let spec = arch.spec(layer);
        x = match spec.kind {
            LayerKind::Conv { in_channels, out_channels, kernel, padding } => {
                let weight = format!("features.{}.weight", spec.torch_index);
                let bias = format!("features.{}.bias", spec.torch_index);
                g.float(
                    &weight,
                    &[out_channels, in_channels, kernel, kernel],
                    &values(&weight, &[out_channels, in_channels, kernel, kernel])?,
                );
                g.float(&bias, &[out_channels], &values(&bias, &[out_channels])?);
                let pad = match padding {
                    Padding::Same => kernel / 2,
                    Padding::Valid => 0,
                };
                let conv = g.node(
                    "Conv",
                    &spec.name,
                    &[&x, &weight, &bias],
                    &format!("{}/conv", spec.name),
                    vec![
                        ints("kernel_shape", &[kernel, kernel]),
                        ints("pads", &[pad, pad, pad, pad]),
                        ints("strides", &[1, 1]),
                        ints("dilations", &[1, 1]),
                        int("group", 1),
                    ],
                );
                g.node("Relu", &format!("{}/relu", spec.name), &[&conv], &spec.name, vec![])
            }
            LayerKind::Pool => g.node(
                "MaxPool",
                &spec.name,
                &[&x],
                &spec.name,
                vec![
                    ints("kernel_shape", &[2, 2]),
                    ints("strides", &[2, 2]),
                    ints("pads", &[0, 0, 0, 0]),
                    int("ceil_mode", 0),
                ],
            ),
        };
    }

    // Global pooling, or Keras' channels-last flatten.
    let features = match header.pooling {
        Pooling::None => {
            let nhwc = g.node(
                "Transpose",
                "flatten/to_nhwc",
                &[&x],
                "flatten/nhwc",
                vec![ints("perm", &[0, 2, 3, 1])],
            );
            g.node("Flatten", "flatten", &[&nhwc], "features", vec![int("axis", 1)])
        }
        Pooling::Avg => g.node(
            "ReduceMean",
            "global_avg_pool",
            &[&x],
            "features",
            vec![ints("axes", &[2, 3]), int("keepdims", 0)],
        ),
        Pooling::Max => g.node(
            "ReduceMax",
            "global_max_pool",
            &[&x],
            "features",
            vec![ints("axes", &[2, 3]), int("keepdims", 0)],
        ),
    };

    // The dense head (dropout is the identity at inference), then the probabilities.
    let spec = &header.head;
    let (inputs, hidden, outputs) = (spec.input_width, spec.hidden, spec.outputs());
    let dense = |g: &mut GraphBuilder, name: &str, x: &str, shape: [i64; 2], out: &str| {
        let weight = format!("head.{name}.weight");
        let bias = format!("head.{name}.bias");
        g.float(&weight, &shape, &values(&weight, &shape)?);
        g.float(&bias, &[shape[0]], &values(&bias, &[shape[0]])?);
        Ok::<String, ExportError>(g.node(
            "Gemm",
            &format!("head/{name}"),
            &[x, &weight, &bias],
            out,
            vec![int("transB", 1)],
        ))
    };
    let fc1 = dense(&mut g, "fc1", &features, [hidden, inputs], "head/fc1")?;
    let hidden_out = g.node("Relu", "head/relu", &[&fc1], "head/hidden", vec![]);
    let logits = dense(&mut g, "fc2", &hidden_out, [outputs, hidden], "logits")?;
    if outputs == 1 {
        // sigmoid(z) spelled 1 / (1 + exp(-z)), precise relative to the value: onnxruntime's
        // Sigmoid kernel approximates to ~2e-8 absolute, a 3% error on a probability of 7e-7.
        let one = g.float("probabilities/one", &[], &[1.0]);
        let neg = g.node("Neg", "probabilities/neg", &[&logits], "probabilities/minus_z", vec![]);
        let exp = g.node("Exp", "probabilities/exp", &[&neg], "probabilities/exp_minus_z", vec![]);
        let denom =
            g.node("Add", "probabilities/one_plus", &[&one, &exp], "probabilities/denom", vec![]);
        let p1 =
            g.node("Div", "probabilities/sigmoid", &[&one, &denom], "probabilities/p1", vec![]);
        let p0 = g.node("Sub", "probabilities/one_minus", &[&one, &p1], "probabilities/p0", vec![]);
        g.node("Concat", "probabilities", &[&p0, &p1], OUTPUT, vec![int("axis", 1)]);
    } else {
        g.node("Softmax", "probabilities", &[&logits], OUTPUT, vec![int("axis", 1)]);
    }
    tracing::debug!(nodes = g.node_count(), "graph built");

    let classes = header.class_names.len() as i64;
    let source = model
        .file_name()
        .map_or_else(|| model.display().to_string(), |name| name.to_string_lossy().into_owned());
    let doc = doc_string(header, &source, model_sha256);
    let input = float_value(
        INPUT,
        &[Dim::Named("N"), Dim::Fixed(3), Dim::Fixed(height), Dim::Fixed(width)],
        &format!(
            "RGB images, NCHW, float32 on the 0-255 scale, {height}x{width} (resized with {}); \
             {} preprocessing is in the graph",
            header.resize, header.preprocessing
        ),
    );
    let output = float_value(
        OUTPUT,
        &[Dim::Named("N"), Dim::Fixed(classes)],
        &format!("class probabilities, rows sum to 1, columns {:?}", header.class_names),
    );
    let graph =
        g.finish(&format!("{}_classifier", header.architecture), &doc, vec![input], vec![output]);
    let header_json = serde_json::to_string(header).expect("headers serialise");
    let class_names = serde_json::to_string(&header.class_names).expect("strings serialise");
    let entry = |key: &str, value: String| StringStringEntryProto { key: key.to_owned(), value };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "transfer-kit export".to_owned(),
        producer_version: env!("CARGO_PKG_VERSION").to_owned(),
        model_version: 1,
        doc_string: doc,
        graph: Some(graph),
        metadata_props: vec![
            entry(CLASS_NAMES_KEY, class_names),
            entry(SOURCE_SHA256_KEY, model_sha256.to_owned()),
            entry(HEADER_KEY, header_json),
        ],
        ..Default::default()
    })
}

/// The graph's and model's doc string: input, preprocessing, output with the class names in
/// index order, the network, and the source file.
pub fn doc_string(header: &ModelHeader, source: &str, source_sha256: &str) -> String {
    let [h, w] = header.input_size;
    let preprocessing = match header.preprocessing {
        Preprocessing::Caffe => format!(
            "caffe: RGB -> BGR, then minus the BGR mean {CAFFE_MEAN_BGR:?} on the 0-255 scale"
        ),
        Preprocessing::Torch => format!(
            "torch: /255, minus the mean {TORCH_MEAN_RGB:?}, divided by the std {TORCH_STD_RGB:?}"
        ),
        Preprocessing::Rescale => "rescale: /255".to_owned(),
    };
    let classes: Vec<String> =
        header.class_names.iter().enumerate().map(|(i, c)| format!("{i} = {c}")).collect();
    let head = &header.head;
    let output = if head.outputs() == 1 {
        "[1 - sigmoid(z), sigmoid(z)] of the head's single logit z".to_owned()
    } else {
        "softmax of the head's logits".to_owned()
    };
    let pooling = match header.pooling {
        Pooling::None => "flattened channels-last (Keras order)",
        Pooling::Avg => "global average pooling",
        Pooling::Max => "global max pooling",
    };
    format!(
        "Image classifier exported by transfer-kit from {source} (sha256 {source_sha256}).\n\
         Input {INPUT}: float32 [N, 3, {h}, {w}] (NCHW, N dynamic), RGB channel order, values \
         0-255: the image decoded to RGB8 and resized to {h}x{w} with '{resize}', nothing else \
         done to it.\n\
         Preprocessing (in the graph): {preprocessing}.\n\
         Output {OUTPUT}: float32 [N, {n}], rows sum to 1, {output}; classes in index order: \
         {classes}.\n\
         Network: {arch} up to {cut}, {pooling}, dense head {inputs} -> {hidden} relu -> \
         (dropout {dropout}: the identity at inference) -> {outputs}.",
        resize = header.resize,
        n = header.class_names.len(),
        classes = classes.join(", "),
        arch = header.architecture,
        cut = header.cut,
        inputs = head.input_width,
        hidden = head.hidden,
        dropout = head.dropout,
        outputs = head.outputs(),
    )
}

"""Runs an exported ONNX classifier with onnxruntime on a batch of pixels and reports.

Usage: run_onnxruntime.py MODEL.onnx PIXELS.f32 N H W OUT.f32

PIXELS.f32 holds float32 little-endian [N, 3, H, W] (RGB, 0-255); the probabilities the graph
gives are written to OUT.f32 as float32 little-endian [N, classes]. Standard output is one JSON
object: the input/output names, shapes and types onnxruntime sees, the model metadata
(description, graph description, custom metadata) and, when the onnx package is importable, the
result of onnx.checker with full_check (shape inference).
"""

import json
import sys

import numpy as np
import onnxruntime as ort


def main():
    model, pixels_path, n, h, w, out_path = sys.argv[1:7]
    n, h, w = int(n), int(h), int(w)
    pixels = np.fromfile(pixels_path, dtype="<f4").reshape(n, 3, h, w)

    checker = "skipped: the onnx package is not installed"
    try:
        import onnx

        onnx.checker.check_model(onnx.load(model), full_check=True)
        checker = "ok"
    except ImportError:
        pass
    except Exception as e:  # the report says what the checker objected to
        checker = f"failed: {e}"

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    (probs,) = session.run([out.name], {inp.name: pixels})
    probs.astype("<f4").tofile(out_path)
    meta = session.get_modelmeta()
    print(
        json.dumps(
            {
                "onnxruntime": ort.__version__,
                "checker": checker,
                "input": {"name": inp.name, "shape": inp.shape, "type": inp.type},
                "output": {"name": out.name, "shape": out.shape, "type": out.type},
                "result_shape": list(probs.shape),
                "result_dtype": str(probs.dtype),
                "description": meta.description,
                "graph_description": meta.graph_description,
                "producer": meta.producer_name,
                "custom_metadata": meta.custom_metadata_map,
            }
        )
    )


if __name__ == "__main__":
    main()

"""Reference VGG16 features in Python PyTorch for the models crate's parity tests.

Independent of the Rust code: its own layer table, preprocessing and cut. Two modes:

  reference.py torch <dir>        random VGG16 (torch.manual_seed(0), torchvision init) saved as
                                  vgg16_ordered.pth (state_dict, OrderedDict), vgg16_dict.pth
                                  (plain dict) and vgg16_legacy.pth (pre-1.6 format), then the
                                  features of <dir>/images.u8 for every case in <dir>/cases.json
  reference.py onnx <dir> <onnx>  the same features computed straight from the ONNX initializers
                                  of a Keras VGG16 (tf2onnx names), with torch.nn.functional.conv2d

cases.json: {"n": N, "h": H, "w": W, "cases": [{"layer": "block4_pool", "pooling": "avg",
"preprocessing": "torch"}, ...]}. Writes <dir>/ref_<i>.f32 (little-endian float32, C order) and
<dir>/refs.json with the shapes.
"""

import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Keras layer name -> (kind, torchvision index, out channels); VGG16 configuration D.
CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def layer_table():
    table, index, block, conv = [], 0, 1, 1
    for v in CFG:
        if v == "M":
            table.append((f"block{block}_pool", "pool", index, None))
            index, block, conv = index + 1, block + 1, 1
        else:
            table.append((f"block{block}_conv{conv}", "conv", index, v))
            index, conv = index + 2, conv + 1
    return table


def preprocess(images_u8, mode):
    x = torch.from_numpy(images_u8).to(torch.float32)  # N, H, W, 3 RGB
    if mode == "caffe":
        x = x[..., [2, 1, 0]] - torch.tensor([103.939, 116.779, 123.68])
    elif mode == "torch":
        x = (x / 255.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    elif mode == "rescale":
        x = x / 255.0
    else:
        raise ValueError(mode)
    return x.permute(0, 3, 1, 2).contiguous()


def features(x, convs, layer, pooling):
    """convs: {torchvision index: (weight OIHW, bias)}; cut after `layer` (Keras or features.N)."""
    for name, kind, index, _ in layer_table():
        if kind == "conv":
            w, b = convs[index]
            x = F.relu(F.conv2d(x, w, b, padding=1))
        else:
            x = F.max_pool2d(x, 2, 2)
        if layer in (name, f"features.{index}"):
            break
    else:
        raise ValueError(layer)
    if pooling == "avg":
        x = x.mean(dim=(2, 3))
    elif pooling == "max":
        x = x.amax(dim=(2, 3))
    return x


def run_cases(folder, convs):
    spec = json.loads((folder / "cases.json").read_text())
    n, h, w = spec["n"], spec["h"], spec["w"]
    images = np.fromfile(folder / "images.u8", dtype=np.uint8).reshape(n, h, w, 3)
    shapes = []
    with torch.no_grad():
        for i, case in enumerate(spec["cases"]):
            x = preprocess(images, case["preprocessing"])
            y = features(x, convs, case["layer"], case["pooling"]).contiguous().numpy().astype("<f4")
            y.tofile(folder / f"ref_{i}.f32")
            shapes.append(list(y.shape))
    (folder / "refs.json").write_text(json.dumps({"shapes": shapes}))


def random_vgg16(folder):
    torch.manual_seed(0)
    state = OrderedDict()
    for _, kind, index, out_ch in layer_table():
        if kind != "conv":
            continue
        in_ch = 3 if index == 0 else prev
        w = torch.empty(out_ch, in_ch, 3, 3)
        torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")  # torchvision's VGG init
        state[f"features.{index}.weight"] = w
        state[f"features.{index}.bias"] = torch.randn(out_ch) * 0.1  # non-zero, so biases are tested
        prev = out_ch
    state["classifier.0.weight"] = torch.randn(4, 8)  # a head the import must ignore
    torch.save(state, folder / "vgg16_ordered.pth")
    torch.save(dict(state), folder / "vgg16_dict.pth")
    torch.save(state, folder / "vgg16_legacy.pth", _use_new_zipfile_serialization=False)
    return {int(k.split(".")[1]): (state[k], state[k.replace("weight", "bias")]) for k in state if k.startswith("features") and k.endswith("weight")}


def onnx_vgg16(path):
    import onnx
    from onnx import numpy_helper

    init = {t.name: t for t in onnx.load(str(path)).graph.initializer}
    convs = {}
    for name, kind, index, _ in layer_table():
        if kind == "conv":
            w = numpy_helper.to_array(init[f"functional_1/{name}_1/convolution/ReadVariableOp:0"])
            b = numpy_helper.to_array(init[f"functional_1/{name}_1/Squeeze:0"])
            convs[index] = (torch.from_numpy(w.copy()), torch.from_numpy(b.copy()))
    return convs


def main():
    mode, folder = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(2)
    convs = random_vgg16(folder) if mode == "torch" else onnx_vgg16(Path(sys.argv[3]))
    run_cases(folder, convs)


if __name__ == "__main__":
    main()

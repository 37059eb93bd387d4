"""Reference for `cargo xtask bench extract`: the same job as `extract-features`, written the way
PyTorch users write it (PIL decode + resize, caffe preprocessing, VGG16 conv base, a DataLoader
with 2 workers, numpy save), timed over the same images.

Usage: python pytorch_reference.py --weights W.safetensors --size 150 --out feats.npy --list FILE
Prints one JSON line: {"images": N, "seconds": S, "images_per_second": R}.
"""

import argparse
import json
import struct
import sys
import time

import numpy as np
import torch
from PIL import Image

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
# (out_channels or "M" for a 2x2 max pool), VGG16 configuration D.
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def read_safetensors(path):
    """Our weights file: 8-byte header length, JSON header, little-endian float32 data."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        tensors[name] = torch.from_numpy(np.frombuffer(body[start:end], dtype="<f4").reshape(info["shape"]).copy())
    return tensors


def conv_base(weights):
    layers, index, in_ch = [], 0, 3
    for v in VGG16:
        if v == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
            index += 1
        else:
            conv = torch.nn.Conv2d(in_ch, v, 3, padding=1)
            conv.weight.data.copy_(weights[f"features.{index}.weight"])
            conv.bias.data.copy_(weights[f"features.{index}.bias"])
            layers += [conv, torch.nn.ReLU(inplace=True)]
            index += 2
            in_ch = v
    return torch.nn.Sequential(*layers).eval()


class Images(torch.utils.data.Dataset):
    def __init__(self, paths, size):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = Image.open(self.paths[i]).convert("RGB").resize((self.size, self.size), Image.NEAREST)
        x = np.asarray(img, dtype=np.float32)[:, :, ::-1] - CAFFE_MEAN_BGR  # RGB -> BGR, caffe
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--size", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--list", required=True, help="file with one image path per line")
    a = p.parse_args()
    a.images = [line.strip() for line in open(a.list) if line.strip()]
    torch.set_num_threads(torch.get_num_threads())
    model = conv_base(read_safetensors(a.weights))
    loader = torch.utils.data.DataLoader(Images(a.images, a.size), batch_size=a.batch_size, num_workers=a.workers)
    start = time.perf_counter()
    chunks = []
    with torch.no_grad():
        for xs in loader:
            chunks.append(model(xs).permute(0, 2, 3, 1).numpy())
    np.save(a.out, np.concatenate(chunks))
    seconds = time.perf_counter() - start
    print(json.dumps({"images": len(a.images), "seconds": seconds, "images_per_second": len(a.images) / seconds}))


if __name__ == "__main__":
    sys.exit(main())

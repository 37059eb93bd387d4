"""Reference for `cargo xtask bench fine-tune`: one fine-tuning epoch of the seed's model written
the way PyTorch users write it, timed beside our `fine-tune` stage.

- model: torchvision's VGG16 `features` with our weights file loaded into it, everything below
  block5_conv1 (`features.24`) frozen (requires_grad off), then Flatten, Linear(256), ReLU,
  Linear(1); BCEWithLogitsLoss (sigmoid + binary cross-entropy in one op, as users are told to);
- optimizer: torch.optim.RMSprop(lr=1e-5, alpha=0.9, eps=1e-7), Keras' rho and epsilon values.
  torch adds eps outside the square root (`g / (sqrt(v) + eps)`) where Keras adds it inside
  (`g / sqrt(v + eps)`); the arithmetic cost is the same;
- data: ImageFolder over the PNGs, decoded every epoch, Resize((S, S), nearest),
  RandomAffine(degrees=40, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=0.2, nearest) and
  RandomHorizontalFlip on the PIL image, then caffe preprocessing (BGR, mean subtracted) to an
  NCHW float32 tensor, in a DataLoader with 2 workers and shuffling. torchvision fills the
  outside with black where Keras (and ours) repeats the nearest edge pixel: same cost class;
- one epoch: `steps` steps of `batch` images (100 x 20 = the 2,000 training images once), then
  validation of the whole model on the validation split (eval mode, no_grad), as a Keras epoch.

Usage: python pytorch_reference.py --weights W.safetensors --data DIR [--size 64] [--epochs 1]
Prints one JSON line per epoch with the training time, its breakdown (waiting for the loader,
forward, backward, optimizer step) and the validation time.
"""

import argparse
import json
import struct
import sys
import time

import numpy as np
import torch
import torchvision
from torchvision import transforms

# Keras' caffe preprocessing: BGR order, ImageNet means subtracted, 0-255 scale.
CAFFE_MEAN_BGR = torch.tensor([103.939, 116.779, 123.68]).view(3, 1, 1)


def load_safetensors(path):
    """Our weights file: u64 header length, JSON header, little-endian float32 tensors."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    body = memoryview(blob)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: tensor {name} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(body[start:end], dtype="<f4").copy()).reshape(info["shape"])
    return out


def caffe(img):
    """PIL RGB uint8 -> [3, H, W] float32, BGR, mean subtracted."""
    x = transforms.functional.pil_to_tensor(img).float()
    return x.flip(0) - CAFFE_MEAN_BGR


def build_model(weights, size):
    features = torchvision.models.vgg16(weights=None).features
    state = {name.removeprefix("features."): t for name, t in weights.items() if name.startswith("features.")}
    features.load_state_dict(state)
    for i, layer in enumerate(features):
        for p in layer.parameters():
            p.requires_grad = i >= 24  # block5_conv1 and up train
    side = size // 32
    return torch.nn.Sequential(
        features,
        torch.nn.Flatten(),
        torch.nn.Linear(512 * side * side, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 1),
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-5)
    a = p.parse_args()
    torch.manual_seed(0)

    resize = transforms.Resize((a.size, a.size), interpolation=transforms.InterpolationMode.NEAREST)
    train_tf = transforms.Compose([
        resize,
        transforms.RandomAffine(degrees=40, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=0.2,
                                interpolation=transforms.InterpolationMode.NEAREST),
        transforms.RandomHorizontalFlip(),
        transforms.Lambda(caffe),
    ])
    eval_tf = transforms.Compose([resize, transforms.Lambda(caffe)])
    rgb = lambda path: torchvision.datasets.folder.pil_loader(path)  # noqa: E731 (converts to RGB)
    train = torchvision.datasets.ImageFolder(f"{a.data}/train", transform=train_tf, loader=rgb)
    val = torchvision.datasets.ImageFolder(f"{a.data}/validation", transform=eval_tf, loader=rgb)
    train_loader = torch.utils.data.DataLoader(train, batch_size=a.batch, shuffle=True, num_workers=a.workers, drop_last=True)
    val_loader = torch.utils.data.DataLoader(val, batch_size=a.batch, num_workers=a.workers)

    model = build_model(load_safetensors(a.weights), a.size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.RMSprop(trainable, lr=a.lr, alpha=0.9, eps=1e-7)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    for epoch in range(a.epochs):
        model.train()
        t = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        steps, loss_sum, correct, seen = 0, 0.0, 0, 0
        start = mark = time.perf_counter()
        while steps < a.steps:  # an epoch longer than the split goes round it again
            for xs, ys in train_loader:
                now = time.perf_counter(); t["data"] += now - mark; mark = now
                opt.zero_grad()
                out = model(xs).squeeze(1)
                loss = loss_fn(out, ys.float())
                now = time.perf_counter(); t["forward"] += now - mark; mark = now
                loss.backward()
                now = time.perf_counter(); t["backward"] += now - mark; mark = now
                opt.step()
                now = time.perf_counter(); t["optimizer"] += now - mark; mark = now
                loss_sum += loss.item() * len(ys)
                correct += ((out > 0).long() == ys).sum().item()
                seen += len(ys)
                steps += 1
                if steps == a.steps:
                    break
        train_seconds = time.perf_counter() - start

        model.eval()
        val_start = time.perf_counter()
        val_loss, val_correct = 0.0, 0
        with torch.no_grad():
            for xs, ys in val_loader:
                out = model(xs).squeeze(1)
                val_loss += loss_fn(out, ys.float()).item() * len(ys)
                val_correct += ((out > 0).long() == ys).sum().item()
        val_seconds = time.perf_counter() - val_start
        print(json.dumps({
            "epoch": epoch + 1,
            "train_seconds": train_seconds,
            "validation_seconds": val_seconds,
            "epoch_seconds": train_seconds + val_seconds,
            "breakdown": t,
            "loss": loss_sum / seen,
            "acc": correct / seen,
            "val_loss": val_loss / len(val),
            "val_acc": val_correct / len(val),
        }), flush=True)


if __name__ == "__main__":
    sys.exit(main())

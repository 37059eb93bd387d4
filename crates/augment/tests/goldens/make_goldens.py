"""Regenerates the parity goldens for crates/augment (tests/parity.rs reads them; no Python needed).

Reference: keras-preprocessing 1.1.2 `apply_affine_transform` / `ImageDataGenerator.apply_transform`
on top of scipy.ndimage (checked with scipy 1.17.1). Run with the project's torch venv after
`<venv>/bin/python -m pip install keras-preprocessing`:

    ~/.cache/transfer-kit/torch-2.11.0/bin/python crates/augment/tests/goldens/make_goldens.py

Writes `input.npy` (24x20x3 uint8, fixed seed), one float32 `<case>.npy` per case, and `cases.json`
with each case's parameters plus the exact 2x2 matrix and offset Keras handed to scipy.
"""

import json
import os
import warnings

import numpy as np
import scipy
import keras_preprocessing
from keras_preprocessing.image import ImageDataGenerator, affine_transformations as at

warnings.simplefilter("ignore", DeprecationWarning)
HERE = os.path.dirname(os.path.abspath(__file__))

# Capture the matrix and offset Keras passes to scipy (one call per channel; all identical).
captured = []
_affine = at.ndimage.interpolation.affine_transform


def _spy(x, matrix, offset, **kw):
    captured.append((np.array(matrix, dtype=np.float64), np.array(offset, dtype=np.float64)))
    return _affine(x, matrix, offset, **kw)


at.ndimage.interpolation.affine_transform = _spy

rng = np.random.default_rng(20240404)
image = rng.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)
np.save(os.path.join(HERE, "input.npy"), image)
x = image.astype(np.float32)

COMBINED = dict(theta=-31.4, tx=-2.2, ty=3.9, shear=-9.5, zx=1.15, zy=0.88)
LARGE = dict(theta=61.0, tx=5.5, ty=-7.25, shear=25.0, zx=2.7, zy=2.3)
cases = [
    ("rotate", dict(theta=23.7), "nearest", 1),
    ("shift", dict(tx=3.3, ty=-4.6), "nearest", 1),
    ("shear", dict(shear=17.2), "nearest", 1),
    ("zoom", dict(zx=0.83, zy=1.27), "nearest", 1),
    ("combined", COMBINED, "nearest", 1),
]
for mode in ["constant", "nearest", "reflect", "wrap"]:
    for order in [0, 1]:
        cases.append((f"combined_{mode}_o{order}", COMBINED, mode, order))
for mode in ["constant", "reflect", "wrap"]:
    for order in [0, 1]:
        cases.append((f"large_{mode}_o{order}", LARGE, mode, order))

CVAL = 17.5
manifest = {
    "reference": f"keras-preprocessing {keras_preprocessing.__version__}, scipy {scipy.__version__}",
    "input": "input.npy",
    "cases": [],
}


def record(name, params, mode, order, out, extra=None):
    np.save(os.path.join(HERE, f"{name}.npy"), out.astype(np.float32))
    matrix, offset = captured[0] if captured else (np.eye(2), np.zeros(2))
    entry = dict(
        name=name,
        file=f"{name}.npy",
        theta=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0,
        fill_mode=mode,
        cval=CVAL,
        order=order,
        flip_horizontal=False,
        flip_vertical=False,
        channel_shift=None,
        rescale=None,
        matrix=matrix.tolist(),
        offset=offset.tolist(),
    )
    entry.update({k: float(v) for k, v in params.items()})
    entry.update(extra or {})
    manifest["cases"].append(entry)


for name, params, mode, order in cases:
    captured.clear()
    out = at.apply_affine_transform(
        x.copy(), row_axis=0, col_axis=1, channel_axis=2,
        fill_mode=mode, cval=CVAL, order=order, **params,
    )
    record(name, params, mode, order, out)

# The book's generator (Keras 2.0.8): shear_range in radians, nearest-neighbour interpolation.
# 2.0.8 built the same matrix with np.sin(shear) on the raw value, so it equals today's
# apply_affine_transform with shear given in degrees and order 0.
BOOK_SHEAR_RAD = 0.17
book = dict(theta=12.5, tx=-1.75, ty=2.4, shear=float(np.rad2deg(BOOK_SHEAR_RAD)), zx=0.91, zy=1.12)
captured.clear()
out = at.apply_affine_transform(
    x.copy(), row_axis=0, col_axis=1, channel_axis=2, fill_mode="nearest", cval=CVAL, order=0, **book,
)
record("book", book, "nearest", 0, out, dict(shear_rad=BOOK_SHEAR_RAD))

# The whole generator: warp, channel shift, both flips, then standardize's rescale.
gen = ImageDataGenerator(fill_mode="constant", cval=CVAL, interpolation_order=1, rescale=1.0 / 255)
params = dict(COMBINED, flip_horizontal=True, flip_vertical=True, channel_shift_intensity=-20.5)
captured.clear()
out = gen.standardize(gen.apply_transform(x.copy(), params))
record(
    "generator", COMBINED, "constant", 1, out,
    dict(flip_horizontal=True, flip_vertical=True, channel_shift=-20.5, rescale=1.0 / 255),
)

with open(os.path.join(HERE, "cases.json"), "w") as f:
    json.dump(manifest, f, indent=1)
    f.write("\n")
print(f"wrote {len(manifest['cases'])} cases to {HERE}")

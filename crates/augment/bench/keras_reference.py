"""keras-preprocessing reference for `cargo xtask bench augment`: the seed notebook's generator
(rotation 40, shifts 0.2, shear 0.2, zoom 0.2, horizontal flip, nearest fill, bilinear) applied with
`ImageDataGenerator.random_transform` to float32 HxWx3 images, one core (scipy.ndimage is
single-threaded). Prints one JSON line like `augment-bench`.

    <venv python> crates/augment/bench/keras_reference.py --images 1000 --runs 5 --size 150
"""

import argparse
import json
import time
import warnings

import numpy as np
from keras_preprocessing.image import ImageDataGenerator

warnings.simplefilter("ignore", DeprecationWarning)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=150)
    args = ap.parse_args()

    gen = ImageDataGenerator(
        rotation_range=40,
        width_shift_range=0.2,
        height_shift_range=0.2,
        shear_range=0.2,
        zoom_range=0.2,
        horizontal_flip=True,
        fill_mode="nearest",
    )
    rng = np.random.default_rng(1)
    # What flow_from_directory hands the generator: img_to_array of a u8 image, float32.
    sources = [
        rng.integers(0, 256, size=(args.size, args.size, 3)).astype(np.float32) for _ in range(16)
    ]
    np.random.seed(1)
    rates = []
    for run in range(args.runs + 1):
        start = time.perf_counter()
        for i in range(args.images):
            gen.random_transform(sources[i % len(sources)])
        rate = args.images / (time.perf_counter() - start)
        if run > 0:  # the first run warms up
            rates.append(rate)
    print(json.dumps({
        "impl": "keras-preprocessing",
        "threads": 1,
        "images": args.images,
        "size": args.size,
        "output": "f32",
        "img_per_s": rates,
        "median_img_per_s": float(np.median(rates)),
    }))


if __name__ == "__main__":
    main()

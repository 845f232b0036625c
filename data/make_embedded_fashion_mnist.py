#!/usr/bin/env python3
"""Regenerates data/embedded/fashion-mnist/ from Debian's dataset-fashion-mnist package.

    sudo apt-get install dataset-fashion-mnist
    python3 data/make_embedded_fashion_mnist.py [--seed 20261128]

A seeded, class-balanced subset: 200 train + 50 validation images per class from the official
training file (disjoint), and 100 test images per class from the official test file. Images
are stored as gzipped IDX (the format Fashion-MNIST ships in), samples as JSONL, and the
provenance (package version, sha256 of every source file) in dataset.json.
"""
import argparse
import gzip
import hashlib
import json
import os
import random
import struct
import subprocess
import sys

SRC = "/usr/share/datasets/fashion-mnist"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded", "fashion-mnist")
LABELS = ["t-shirt/top", "trouser", "pullover", "dress", "coat",
          "sandal", "shirt", "sneaker", "bag", "ankle boot"]
PER_CLASS = {"train": 200, "val": 50, "test": 100}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    (m,) = struct.unpack(">I", data[:4])
    if m != magic:
        sys.exit(f"{path}: magic {m:#x}, expected {magic:#x}")
    ndim = m & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def package_version(name):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pick(labels, per_class, rng, exclude=()):
    chosen = []
    excluded = set(exclude)
    for c in range(10):
        pool = [i for i, y in enumerate(labels) if y == c and i not in excluded]
        chosen += rng.sample(pool, per_class)
    return sorted(chosen)


def write_idx_gz(path, images, rows, cols):
    payload = struct.pack(">IIII", 0x00000803, len(images), rows, cols) + b"".join(images)
    # mtime=0 keeps the file byte-identical across regenerations.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as f:
        f.write(payload)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=20261128)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    files = {k: os.path.join(SRC, f"{k}-ubyte.gz") for k in
             ["train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"]}
    for path in files.values():
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: sudo apt-get install dataset-fashion-mnist")
    (n_tr, rows, cols), train_px = read_idx(files["train-images-idx3"], 0x803)
    _, train_y = read_idx(files["train-labels-idx1"], 0x801)
    (n_te, _, _), test_px = read_idx(files["t10k-images-idx3"], 0x803)
    _, test_y = read_idx(files["t10k-labels-idx1"], 0x801)
    size = rows * cols

    train_idx = pick(train_y, PER_CLASS["train"], rng)
    val_idx = pick(train_y, PER_CLASS["val"], rng, exclude=train_idx)
    test_idx = pick(test_y, PER_CLASS["test"], rng)
    os.makedirs(OUT, exist_ok=True)
    splits = {}
    for split, idx, px, ys in [("train", train_idx, train_px, train_y), ("val", val_idx, train_px, train_y),
                               ("test", test_idx, test_px, test_y)]:
        image_file = f"{split}-images.idx.gz"
        write_idx_gz(os.path.join(OUT, image_file), [px[i * size:(i + 1) * size] for i in idx], rows, cols)
        source = "train" if split != "test" else "t10k"
        with open(os.path.join(OUT, f"{split}.jsonl"), "w") as f:
            for k, i in enumerate(idx):
                f.write(json.dumps({"image": f"{image_file}#{k}", "label": LABELS[ys[i]],
                                    "source": f"{source}#{i}"}) + "\n")
        splits[split] = {"samples": f"{split}.jsonl", "count": len(idx)}

    version = package_version("dataset-fashion-mnist")
    doc = {
        "name": "fashion-mnist-embedded",
        "description": "Seeded class-balanced subset of Fashion-MNIST (Xiao et al. 2017): 28x28 grey "
                       "images of 10 clothing classes. Real images, nothing synthetic.",
        "version": "1",
        "fields": {
            "image": {"type": "image", "format": "idx", "description": "28x28 uint8 grey image"},
            "label": {"type": "label", "labels": LABELS, "description": "clothing class"},
            "source": {"type": "string", "description": "file#index in the official release"},
        },
        "splits": splits,
        "provenance": {
            "recipe": "python3 data/make_embedded_fashion_mnist.py --seed %d" % args.seed,
            "seed": args.seed,
            "license": "MIT (Zalando Research); see data/embedded/LICENSES.md",
            "synthetic": "nothing",
            "sources": [{"package": "dataset-fashion-mnist", "version": version,
                         "file": p, "sha256": sha256(p)} for p in files.values()],
        },
    }
    with open(os.path.join(OUT, "dataset.json"), "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"wrote {OUT}: " + ", ".join(f"{k} {v['count']}" for k, v in splits.items()))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden outputs: a few deterministic trainings whose results must not change by accident.

Each case in cases.json trains one pipeline (train.deterministic is on by default) with a short
budget; its fingerprint is the sha256 of model.pt and of results.json without the figures that
measure time. `check` compares every case with golden.json and exits 1 naming those that differ;
`record` rewrites golden.json, for a change that means to alter training (say so in the commit).

    tests/golden/golden.py check  [--build build] [--case NAME ...]
    tests/golden/golden.py record [--build build] [--case NAME ...]

The fingerprints hold for one machine kind and LibTorch/OpenBLAS build: they pin the code, not
the floating point of every CPU.
"""
import argparse
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# results.json keys whose values are measured time, not computed results.
TIMING_KEYS = {"seconds", "train_seconds", "eval_seconds", "samples_per_second", "elapsed", "wall_seconds", "duration"}


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items()
                if k not in TIMING_KEYS and not k.endswith("_seconds") and not k.endswith("_per_second")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def fingerprint(binary, plugins, case, scratch):
    out = scratch / case["name"]
    cmd = [str(binary), "--plugin-path", str(plugins), "train", str(ROOT / case["pipeline"]), "--out", str(out)]
    for s in case.get("set", []):
        cmd += ["--set", s]
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        sys.exit(f"golden: case {case['name']} failed to train (exit {done.returncode}):\n{done.stdout[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    # The run's own paths differ between runs; what they name is pinned by the data set's sha256.
    results.pop("artifacts", None)
    canonical = json.dumps(without_timings(results), sort_keys=True, separators=(",", ":"))
    # Multitask results name their data sets by absolute path: the checkout's place is not a result.
    canonical = canonical.replace(json.dumps(str(ROOT))[1:-1], "<root>")
    return {"model.pt": sha256((out / "model.pt").read_bytes()), "results.json": sha256(canonical.encode())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["check", "record"])
    parser.add_argument("--build", default=str(ROOT / "build"), help="the build directory (default: build/)")
    parser.add_argument("--case", action="append", help="only these cases (default: all)")
    args = parser.parse_args()
    build = pathlib.Path(args.build).resolve()
    binary, plugins = build / "host" / "modalkit", build / "plugins"
    cases = json.loads((HERE / "cases.json").read_text())["cases"]
    if args.case:
        unknown = set(args.case) - {c["name"] for c in cases}
        if unknown:
            sys.exit(f"golden: unknown case(s) {', '.join(sorted(unknown))}")
        cases = [c for c in cases if c["name"] in args.case]
    golden_file = HERE / "golden.json"
    golden = json.loads(golden_file.read_text()) if golden_file.exists() else {}
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="modalkit-golden-"))
    failed = []
    try:
        for case in cases:
            got = fingerprint(binary, plugins, case, scratch)
            if args.mode == "record":
                golden[case["name"]] = got
                print(f"golden: recorded {case['name']}: {got}")
            elif golden.get(case["name"]) != got:
                failed.append(case["name"])
                print(f"golden: {case['name']} differs: expected {golden.get(case['name'])}, got {got}")
            else:
                print(f"golden: {case['name']} unchanged")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.mode == "record":
        golden_file.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")
    if failed:
        print("golden: training changed for " + ", ".join(failed) +
              ". If the change is meant, rerun with `record` and say why in the commit.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

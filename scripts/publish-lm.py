#!/usr/bin/env python3
"""Copies the language model of a pretrain-lm run into a folder that can be committed, with the
tokenizer it was trained with, so that Frozen / pseudo-self-attention / MAG experiments need not
pretrain again (issue 6: a model of at most 25 MB may be committed with its sha256 and recipe).

    scripts/publish-lm.py RUN DEST "RECIPE"

RUN is a finished `modalkit train examples/pipelines/pretrain-lm.json` run (language_model.pt,
perplexity.json, pipeline.json, run.json); DEST gets language_model.pt and tokenizer.model, each
with its typed `.artifact.json` sidecar (the model's names RECIPE; the tokenizer's is the one its
recipe wrote), plus the run's
perplexity.json and samples.json. The tokenizer is the one the run's pipeline names, and must be
the one the model records (perplexity.json config.provenance.tokenizer_sha256): a model is only
usable with its own tokenizer.
"""
import hashlib
import json
import os
import shutil
import sys

LIMIT = 25 * 1000 * 1000


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fail(message):
    sys.exit("publish-lm: " + message)


def main():
    if len(sys.argv) != 4:
        fail("usage: scripts/publish-lm.py RUN DEST RECIPE")
    run, dest, recipe = sys.argv[1:]
    for name in ("language_model.pt", "perplexity.json", "pipeline.json", "run.json"):
        if not os.path.isfile(os.path.join(run, name)):
            fail(f"{run}: no {name} (is it a finished pretrain-lm run?)")
    model = os.path.join(run, "language_model.pt")
    if os.path.getsize(model) > LIMIT:
        fail(f"{model}: {os.path.getsize(model)} bytes, over the 25 MB that may be committed")
    with open(os.path.join(run, "run.json")) as f:
        pipeline_dir = json.load(f)["pipeline_dir"]
    with open(os.path.join(run, "pipeline.json")) as f:
        tokenizer = os.path.normpath(os.path.join(pipeline_dir, json.load(f)["artifacts"]["tokenizer"]))
    with open(os.path.join(run, "perplexity.json")) as f:
        trained_with = json.load(f)["config"]["provenance"]["tokenizer_sha256"]
    if sha256(tokenizer) != trained_with:
        fail(f"{tokenizer}: sha256 {sha256(tokenizer)[:12]}, but the model was trained with {trained_with[:12]}")

    os.makedirs(dest, exist_ok=True)
    # The tokenizer keeps the sidecar its recipe wrote (data prepare text-corpus); the model gets one
    # naming RECIPE.
    with open(tokenizer + ".artifact.json") as f:
        tokenizer_sidecar = json.load(f)
    if tokenizer_sidecar.get("sha256") != trained_with:
        fail(f"{tokenizer}.artifact.json: its sha256 is not the tokenizer's")
    copies = ((model, "language_model.pt", {"produced_by": recipe, "type": "language_model"}),
              (tokenizer, "tokenizer.model", tokenizer_sidecar))
    for source, name, sidecar in copies:
        target = os.path.join(dest, name)
        shutil.copyfile(source, target)
        sidecar = {**sidecar, "file": name, "sha256": sha256(target)}
        with open(target + ".artifact.json", "w") as f:
            json.dump(sidecar, f, indent=2, sort_keys=True)
            f.write("\n")
    for name in ("perplexity.json", "samples.json"):
        if os.path.isfile(os.path.join(run, name)):
            shutil.copyfile(os.path.join(run, name), os.path.join(dest, name))
    print(f"{dest}: language_model.pt {os.path.getsize(model) / 1e6:.1f} MB, tokenizer.model; sha256 in the sidecars")


if __name__ == "__main__":
    main()

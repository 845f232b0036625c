#!/bin/sh
# Rebuilds data/artifacts/tiny-lm/: the tiny language model that `experiments run frozen-lm
# --quick` and the tests condition on. It is the pretrain-lm pipeline cut down (width 32, 2
# blocks, 3 epochs on the embedded corpus: a few minutes on 2 cores), so the quick experiment
# runs without first pretraining the full model. It only shows the machinery working: its
# captions and answers are not results.
#   scripts/make-tiny-lm.sh [MODALKIT]     (default ./build/host/modalkit)
set -eu
cd "$(dirname "$0")/.."
modalkit=${1:-./build/host/modalkit}
run=$(mktemp -d)
trap 'rm -rf "$run"' EXIT
"$modalkit" train examples/pipelines/pretrain-lm.json --out "$run/tiny-lm" \
  --set transfer.config.width=32 --set transfer.config.layers=2 --set transfer.config.heads=2 \
  --set 'transfer.config.probe_prompts=[]' --set train.epochs=3 --set train.schedule.warmup_steps=20
mkdir -p data/artifacts/tiny-lm
cp "$run/tiny-lm/language_model.pt" data/artifacts/tiny-lm/language_model.pt
cp "$run/tiny-lm/perplexity.json" data/artifacts/tiny-lm/perplexity.json
cat > data/artifacts/tiny-lm/language_model.pt.artifact.json <<JSON
{
  "file": "language_model.pt",
  "produced_by": "scripts/make-tiny-lm.sh: modalkit train examples/pipelines/pretrain-lm.json --set transfer.config.width=32 --set transfer.config.layers=2 --set transfer.config.heads=2 --set train.epochs=3 (embedded text-corpus, seed 13)",
  "sha256": "$(sha256sum data/artifacts/tiny-lm/language_model.pt | cut -d' ' -f1)",
  "type": "language_model"
}
JSON
echo "data/artifacts/tiny-lm/language_model.pt: $(du -k data/artifacts/tiny-lm/language_model.pt | cut -f1) KiB"

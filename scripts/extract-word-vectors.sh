#!/bin/sh
# Writes the vectors of WORD... from a word2vec text file (the word_vectors artifact) into a
# smaller word_vectors artifact with its sidecar (type, sha256, what it was cut from), so that a
# pipeline needing a few words (zero-shot class vectors) need not ship or retrain the whole set.
#   scripts/extract-word-vectors.sh IN.txt OUT.txt WORD...
# Words keep IN's order; a word not in IN is an error.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 IN.txt OUT.txt WORD..." >&2; exit 2; }
in=$1 out=$2
shift 2
words=$(printf '%s\n' "$@" | sort -u)
body=$(printf '%s\n' "$words" | awk 'NR == FNR { want[$1] = 1; next } FNR > 1 && ($1 in want) { print; seen[$1] = 1 }
  END { for (w in want) if (!(w in seen)) { print "not in the word vectors: " w > "/dev/stderr"; bad = 1 } exit bad }' - "$in")
dim=$(head -n 1 "$in" | awk '{ print $2 }')
count=$(printf '%s\n' "$body" | wc -l)
{ echo "$count $dim"; printf '%s\n' "$body"; } > "$out"
in_sha=$(sha256sum "$in" | cut -d' ' -f1)
cat > "$out.artifact.json" <<JSON
{
  "file": "$(basename "$out")",
  "produced_by": "scripts/extract-word-vectors.sh: $count words of $(basename "$in") (sha256 $in_sha)",
  "sha256": "$(sha256sum "$out" | cut -d' ' -f1)",
  "type": "word_vectors"
}
JSON
echo "$out: $count words of dimension $dim"

#!/usr/bin/env bash
# Installs this build into a scratch DESTDIR, builds examples/third-party-plugin out of tree
# against the *installed* SDK (pkg-config only), and trains one epoch with it through the
# installed host, which must find its own plugins with no environment variable.
set -euo pipefail
build_root=$(realpath "$1")
source_root=$(realpath "$2")
work="$build_root/tests/install-work"
rm -rf "$work"
mkdir -p "$work"
chmod 755 "$work"

DESTDIR="$work/stage" meson install -C "$build_root" --no-rebuild --quiet
option() {
  meson introspect "$build_root" --buildoptions |
    python3 -c "import json,sys; print(next(o['value'] for o in json.load(sys.stdin) if o['name']=='$1'))"
}
prefix=$(option prefix)
libdir=$(option libdir)
root="$work/stage$prefix"
host="$root/bin/modalkit"
[ -x "$host" ] || { echo "FAIL: no installed host at $host"; exit 1; }

unset MODALKIT_PLUGIN_PATH
echo "== the installed host lists the installed plugins with no environment variable"
"$host" plugins list --json > "$work/list.json"
python3 - "$work/list.json" <<'PY'
import json, sys
names = {p["name"]: p for p in json.load(open(sys.argv[1]))}
for n, kind in [("image", "modality"), ("concat", "fusion"), ("supervised", "transfer")]:
    assert n in names, f"{n} not listed: {sorted(names)}"
    assert names[n]["kind"] == kind and names[n]["abi"]["major"] == 1, names[n]
print("ok:", ", ".join(sorted(names)))
PY

echo "== the template builds out of tree via pkg-config"
export PKG_CONFIG_PATH="$root/$libdir/pkgconfig"
pkg-config --modversion modalkit-sdk
meson setup "$work/template-build" "$source_root/examples/third-party-plugin" >/dev/null
meson compile -C "$work/template-build" >/dev/null

echo "== and trains an epoch through the installed host"
mkdir -p "$work/myplugins"
chmod 755 "$work/myplugins"
cp "$work/template-build/libmodalkit_mean.so" "$work/template-build/mean.plugin.json" "$work/myplugins/"
"$host" --plugin-path "$work/myplugins" plugins describe mean | head -1
"$host" --plugin-path "$work/myplugins" train "$source_root/examples/third-party-plugin/pipeline.json" \
  --out "$work/run" | tee "$work/train.log"
grep -q "held-out label: accuracy = " "$work/train.log"
python3 -c "
import json; r = json.load(open('$work/run/results.json'))
acc = r['tasks']['label']['accuracy']
assert acc > 0.3, f'one epoch with the mean fusion reached only {acc}'
assert json.load(open('$work/run/run.json'))['plugins']['mean']['version'] == '0.1.0'
print('ok: accuracy', acc)"
rm -rf "$work"
echo "PASS"

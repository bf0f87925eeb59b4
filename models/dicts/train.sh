#!/usr/bin/env bash
# train.sh - builds the zstd dictionaries idcfs embeds for small text-like files
# (models/dicts/{text,source,json}.zdict) from real files in pinned Debian and PyPI packages.
# None of these packages is in the dev corpus (../shared/corpus/make-dev-corpus.sh), so the
# corpus measures the dictionaries on data they were not trained on.
#
# A dictionary's id (--dictID) is written into every frame compressed with it and recorded in
# the block params: a shipped dictionary is never changed or removed. A retrained dictionary
# gets a new id and a new file; the codec keeps every id it ever wrote (src/codec/zstd_dict.rs).
#
# Usage: models/dicts/train.sh [OUTDIR]   needs apt-get, python3 -m pip, unzip, zstd.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
debs="python3.11-doc=3.11.2-6+deb12u9 doc-debian libpython3.11-stdlib=3.11.2-6+deb12u9
  libssl-dev libsqlite3-dev libglib2.0-dev librust-syn-dev librust-serde-dev librust-regex-syntax-dev
  libjs-jquery-ui node-babel7 npm webpack"
# Pinned versions where the package is big enough to matter; the others are small and stable.
if ! apt-get download $debs >/dev/null 2>&1; then
  apt-get update -qq && apt-get download $(echo "$debs" | sed 's/=[^ ]*//g') >/dev/null
fi
for d in *.deb; do dpkg-deb -x "$d" root/; done
python3 -m pip download -q --no-deps -d whl jupyterlab==4.4.5 nbformat==5.10.4 \
  jsonschema-specifications==2025.4.1 notebook==7.4.4 vega_datasets==0.9.0 >/dev/null
for w in whl/*.whl; do unzip -q -o "$w" -d wroot/; done

# Samples: whole small files (the dictionaries serve files of one 128 KiB block), sorted so
# the training input, and with it the dictionary, is the same on every run.
sample() { # sample CLASS DIR find-args...
  local cls=$1 dir=$2; shift 2
  mkdir -p "samples/$cls"
  find "$dir" -type f -size -128k "$@" -print0 | sort -z | while IFS= read -r -d '' f; do
    cp "$f" "samples/$cls/$(printf '%s' "${f#"$dir"/}" | tr '/' '_')"; done
}
sample text root/usr/share/doc \( -name '*.txt' -o -name '*.rst.txt' \)
sample text root/usr/share/doc-debian -type f 2>/dev/null || true
sample source root/usr/lib/python3.11 -name '*.py'
sample source root/usr/include -name '*.h'
sample source root/usr/share/cargo -name '*.rs'
sample source root/usr/share/javascript -name '*.js' ! -name '*.min.js'
sample json wroot -name '*.json'
sample json root/usr/share -name '*.json'

ids="text=1 source=2 json=3"
for kv in $ids; do
  cls=${kv%=*} id=${kv#*=}
  n=$(find "samples/$cls" -type f | wc -l)
  zstd -q -T1 --train -r "samples/$cls" --maxdict=112640 --dictID="$id" -o "$out/$cls.zdict"
  echo "$cls: dictID $id, $n samples, $(du -sb "samples/$cls" | cut -f1) bytes -> $(stat -c %s "$out/$cls.zdict") bytes ($(zstd --version))"
done

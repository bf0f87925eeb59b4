#!/usr/bin/env bash
# corpus.sh - the dev corpus through a real idcfs mount, per content class: what idcfs stores
# after recompression and compaction (idcfs compact), against zstd -3 per
# 128 KiB block (what btrfs compress-force=zstd:3 stores, from examples/codec_ratio) and against
# the dedicated tools (cjxl --lossless_jpeg=1 for JPEG, flac -8 for WAV, xz -9 for text,
# source and JSON), with throughput. Verifies every file against the corpus manifest.
# LEVEL (default max) is the mount's policy level; deflate rebuilding only runs at max/archive.
#
# ARCHIVE=yes (default) adds the archive tier's section: the text, source and JSON dirs at
# level=archive against level=max, xz -9e and zstd -19 --long, with recoding and cold-read
# speeds and the daemon's peak memory; ARCHIVE=only runs just that section.
#
# Usage (root): benches/corpus.sh     env: IDCFS, CORPUS (default /var/tmp/corpus; built with
# ../shared/corpus/make-dev-corpus.sh when missing), WORK (default /var/tmp/idcfs-corpus-bench)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IDCFS=${IDCFS:-target/release/idcfs}
[[ $IDCFS == /* ]] || IDCFS=$PWD/$IDCFS
CORPUS=${CORPUS:-/var/tmp/corpus}
WORK=${WORK:-/var/tmp/idcfs-corpus-bench}
[ -f "$CORPUS/MANIFEST.sha256" ] || bash ../shared/corpus/make-dev-corpus.sh "$CORPUS" >/dev/null
MNT=$WORK/mnt
cleanup() { mountpoint -q "$MNT" && "$IDCFS" umount "$MNT" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup; rm -rf "$WORK"; mkdir -p "$MNT" "$WORK/tools"
printf '[policy]\nlevel = "%s"\n[background]\nidle_secs = 3600\n' "${LEVEL:-max}" > "$WORK/config.toml"
now() { date +%s.%N; }
mb() { echo "scale=1; $1 / 1000000 / ($2)" | bc -l; }
total=$(du -sb --exclude=MANIFEST.sha256 "$CORPUS" | cut -f1)


# The archive tier: text-like classes at level=archive vs level=max, through the mount.
archive_section() {
  local dirs="text source json" lv d a b
  echo "### Archive tier: text, source and JSON at level=archive ($(date -u +%F))"
  echo
  echo "Per level: cp -a of the three dirs, \`idcfs recompress\` (recoding, one file at a time), remount, drop caches, cold read of every file with verification (sha256 against the corpus manifest). Peak RSS is the daemon's VmHWM over the whole run."
  echo
  echo "| level | class dir | files | on context-mix | logical MB | stored MB | vs xz -9e | recode KB/s | cold read KB/s |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
  for lv in archive max; do
    cleanup; rm -rf "$WORK/store-$lv"; mkdir -p "$MNT"
    printf '[policy]\nlevel = "%s"\n[background]\nidle_secs = 3600\n' "$lv" > "$WORK/config-$lv.toml"
    "$IDCFS" mount "$MNT" --store "$WORK/store-$lv" --config "$WORK/config-$lv.toml" >/dev/null
    for d in $dirs; do cp -a "$CORPUS/$d" "$MNT/"; done
    sync; sleep 2
    for d in $dirs; do
      a=$(now); "$IDCFS" recompress "$MNT/$d" >/dev/null; b=$(now)
      eval "rec_$d=\$(echo \"\$b - \$a\" | bc -l)"
    done
    "$IDCFS" umount "$MNT"
    "$IDCFS" mount "$MNT" --store "$WORK/store-$lv" --config "$WORK/config-$lv.toml" >/dev/null
    local pid; pid=$(pgrep -n -f -- "$WORK/store-$lv" || true)
    sync; echo 3 > /proc/sys/vm/drop_caches
    for d in $dirs; do
      a=$(now)
      (cd "$MNT" && grep " ./$d/" "$CORPUS/MANIFEST.sha256" | sha256sum --quiet -c)
      b=$(now)
      eval "read_$d=\$(echo \"\$b - \$a\" | bc -l)"
    done
    for d in $dirs; do
      local files logical stored cmf xz rec rd
      files=$(find "$CORPUS/$d" -type f | wc -l)
      logical=$(find "$CORPUS/$d" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
      read -r stored cmf < <(cd "$MNT/$d" && for f in *; do getfattr --only-values -n user.idcfs.fileinfo "$f"; echo; done \
        | python3 -c 'import json,sys; v=[json.loads(l) for l in sys.stdin if l.strip()]; print(sum(i["stored"] for i in v), sum("context-mix" in i["encodings"] for i in v))')
      xz=$(for f in "$CORPUS/$d"/*; do xz -9e -T1 -c "$f" | wc -c; done | awk '{s+=$1} END {print s}')
      eval "rec=\$rec_$d; rd=\$read_$d"
      printf '| %s | %s | %d | %d | %.2f | %.3f | %+.1f%% | %.0f | %.0f |\n' "$lv" "$d" "$files" "$cmf" \
        "$(echo "$logical/1000000" | bc -l)" "$(echo "$stored/1000000" | bc -l)" \
        "$(echo "100*($stored-$xz)/$xz" | bc -l)" "$(echo "$logical/1000/$rec" | bc -l)" \
        "$(echo "$logical/1000/$rd" | bc -l)"
    done
    [ -n "$pid" ] && echo "|  | daemon peak RSS ($lv) | | | $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$pid/status") | | | | |"
    "$IDCFS" umount "$MNT"
  done
  echo
  echo "Per file with the tools and the codec alone (one core, thread CPU time; examples/cm_ratio):"
  echo
  cargo run -q --release --example cm_ratio -- "text=$CORPUS/text" "source=$CORPUS/source" "json=$CORPUS/json" 2>&1 | sed 's/^/    /'
  echo
}
if [ "${ARCHIVE:-yes}" = only ]; then archive_section; exit 0; fi

"$IDCFS" mount "$MNT" --store "$WORK/store" --config "$WORK/config.toml" >/dev/null
t0=$(now); cp -a "$CORPUS/." "$MNT/"; sync; t1=$(now)
t2=$(now); "$IDCFS" compact "$MNT" >/dev/null 2>&1; t3=$(now)
"$IDCFS" stats "$MNT" --json > "$WORK/stats.json"
"$IDCFS" umount "$MNT"
"$IDCFS" mount "$MNT" --store "$WORK/store" --config "$WORK/config.toml" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
t4=$(now); (cd "$MNT" && sha256sum --quiet -c MANIFEST.sha256); t5=$(now)
# JPEG reads after recompression (cold: remounted, caches dropped).
"$IDCFS" umount "$MNT"; "$IDCFS" mount "$MNT" --store "$WORK/store" --config "$WORK/config.toml" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
jpeg_bytes=$(du -sb "$MNT/jpeg" | cut -f1)
t6=$(now); cat "$MNT"/jpeg/* > /dev/null; t7=$(now)
# Both cores: two readers, one file each at a time (again cold).
"$IDCFS" umount "$MNT"; "$IDCFS" mount "$MNT" --store "$WORK/store" --config "$WORK/config.toml" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
t8=$(now); ls "$MNT"/jpeg/* | xargs -P2 -n1 cat > /dev/null; t9=$(now)
"$IDCFS" umount "$MNT"

echo "## idcfs over the dev corpus ($(date -u +%F))"
echo
echo "Corpus: $(find "$CORPUS" -type f ! -name MANIFEST.sha256 | wc -l) files, $((total / 1048576)) MiB ($CORPUS). Every file verified after a remount (sha256)."
echo "Level: ${LEVEL:-max}. Write (cp -a + sync): $(mb "$total" "$t1 - $t0") MB/s; recompression and compaction (idcfs compact, both cores): $(mb "$total" "$t3 - $t2") MB/s; cold read of everything with verification: $(mb "$total" "$t5 - $t4") MB/s; cold read of the recompressed JPEGs: $(mb "$jpeg_bytes" "$t7 - $t6") MB/s with one reader, $(mb "$jpeg_bytes" "$t9 - $t8") MB/s with two."
echo
python3 - "$WORK/stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"idcfs store: logical {s['logical_bytes']/2**20:.1f} MiB, stored {s['stored_bytes']/2**20:.1f} MiB (packs {s['pack_bytes']/2**20:.1f}, index {s['index_bytes']/2**20:.1f}; {s['unreferenced_bytes']/2**20:.1f} awaiting compaction), format-aware fallbacks {s.get('format_fallbacks', 0)}")
print()
print("| class (idcfs classifier) | files | logical MiB | idcfs stored MiB | saved |")
print("|---|---:|---:|---:|---:|")
for r in s["classes"]:
    l, st = r["logical_bytes"], r["stored_bytes"]
    print(f"| {r['name']} | {r['files']} | {l/2**20:.2f} | {st/2**20:.2f} | {100*(1-st/l) if l else 0:.1f}% |")
print()
print("| codec | blocks | logical MiB | stored MiB |")
print("|---|---:|---:|---:|")
for c in s["codecs"]:
    print(f"| {c['codec']} | {c['blocks']} | {c['logical_bytes']/2**20:.2f} | {c['stored_bytes']/2**20:.2f} |")
PY
echo
echo "### Dedicated tools on the same files (one thread each)"
echo
echo "| corpus dir | tool | original MiB | tool output MiB | encode MB/s | decode MB/s |"
echo "|---|---|---:|---:|---:|---:|"
tool() { # dir name encode-cmd decode-cmd ext
  local dir=$1 name=$2 enc=$3 dec=$4 ext=$5 orig=0 out=0 te=0 td=0
  rm -rf "$WORK/tools"; mkdir -p "$WORK/tools"
  orig=$(du -sb "$CORPUS/$dir" | cut -f1)
  local a b
  a=$(now)
  for f in "$CORPUS/$dir"/*; do eval "$enc" >/dev/null 2>&1 || true; done
  b=$(now); te=$(echo "$b - $a" | bc -l)
  out=$(du -sb "$WORK/tools" | cut -f1)
  a=$(now)
  for g in "$WORK/tools"/*."$ext"; do eval "$dec" >/dev/null 2>&1 || true; done
  b=$(now); td=$(echo "$b - $a" | bc -l)
  printf '| %s | %s | %.2f | %.2f | %s | %s |\n' "$dir" "$name" "$(echo "$orig/1048576" | bc -l)" "$(echo "$out/1048576" | bc -l)" "$(mb "$orig" "$te")" "$(mb "$orig" "$td")"
}
tool jpeg "cjxl --lossless_jpeg=1" 'cjxl --quiet --lossless_jpeg=1 "$f" "$WORK/tools/$(basename "$f").jxl"' 'djxl --quiet "$g" /dev/null' jxl
tool wav "flac -8" 'flac -s -8 -o "$WORK/tools/$(basename "$f").flac" "$f"' 'flac -s -d -c "$g" > /dev/null' flac
for d in text source json; do
  tool "$d" "xz -9" 'xz -9 -c "$f" > "$WORK/tools/$(basename "$f").xz"' 'xz -d -c "$g" > /dev/null' xz
done
echo
echo "### zstd -3 per 128 KiB block (what btrfs stores) and the best single codec per file (examples/codec_ratio)"
echo
cargo run -q --release --example codec_ratio -- "$CORPUS" 2>&1 | sed 's/^/    /'
[ "${ARCHIVE:-yes}" = yes ] && archive_section

#!/usr/bin/env bash
# default_level.sh - what a new user gets: the dev corpus copied into a fresh mount at a level
# (default: balanced, the default), background recompression left to settle by itself (no
# `idcfs compact`), then: the whole-store footprint (packs + index) against zstd -3 per 128 KiB
# block of the same files (what btrfs compress-force=zstd:3 stores; examples/zstd_blocks), per
# corpus directory (stored from `idcfs stats DIR`, per-path) against the same baseline, the
# index bytes per file, garbage left in the packs, a cold read of each directory through the
# mount with one reader (remounted, page cache dropped), and every file verified (sha256).
# With DEDUP=1 the mount is dedup=on and a second copy of the corpus is added and left to
# settle: the growth of the packs is reported against the first copy's stored size.
#
# Usage (root): benches/default_level.sh     env: IDCFS (target/release/idcfs), CORPUS
#   (/var/tmp/corpus), WORK (/var/tmp/idcfs-default-bench), LEVEL (balanced), DEDUP (0),
#   SETTLE_MAX (seconds to wait for recompression and reclaim, default 1800)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IDCFS=${IDCFS:-target/release/idcfs}
[[ $IDCFS == /* ]] || IDCFS=$PWD/$IDCFS
CORPUS=${CORPUS:-/var/tmp/corpus}
WORK=${WORK:-/var/tmp/idcfs-default-bench}
LEVEL=${LEVEL:-balanced}
DEDUP=${DEDUP:-0}
SETTLE_MAX=${SETTLE_MAX:-1800}
[ -f "$CORPUS/MANIFEST.sha256" ] || bash ../shared/corpus/make-dev-corpus.sh "$CORPUS" >/dev/null
MNT=$WORK/mnt
cleanup() { mountpoint -q "$MNT" && "$IDCFS" umount "$MNT" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup; rm -rf "$WORK"; mkdir -p "$MNT"
dd=off; [ "$DEDUP" = 1 ] && dd=on
printf '[policy]\nlevel = "%s"\ndedup = %s\n[background]\nidle_secs = 5\n' "$LEVEL" "$([ $dd = on ] && echo true || echo false)" > "$WORK/config.toml"
now() { date +%s.%N; }
mount_it() { "$IDCFS" mount "$MNT" --store "$WORK/store" --config "$WORK/config.toml" >/dev/null; }
js() { "$IDCFS" stats "${1:-$MNT}" --json; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
# Waits until the recompression queue is empty and the packs' garbage has not changed for
# 30 s: the mount has reached the state it keeps once idle (idle reclaim runs every 10 s and
# does not count the newest checkpoint, which stats do).
settle() {
  local t0 last=-1 same=0; t0=$(now)
  while :; do
    q=$(getfattr --only-values -n user.idcfs.status "$MNT" 2>/dev/null | field recompress_queue)
    s=$(js); packs=$(echo "$s" | field pack_bytes); garb=$(echo "$s" | field unreferenced_bytes)
    if [ "$q" = 0 ] && [ "$garb" = "$last" ]; then same=$((same + 1)); else same=0; fi
    last=$garb
    if [ "$q" = 0 ] && [ $same -ge 6 ]; then break; fi
    if [ "$(echo "$(now) - $t0 > $SETTLE_MAX" | bc)" = 1 ]; then echo "did not settle in ${SETTLE_MAX}s (queue $q, garbage $garb of $packs)" >&2; break; fi
    sleep 5
  done
  echo "$(now) - $t0" | bc -l
}
cargo build -q --release --example zstd_blocks
base=$(target/release/examples/zstd_blocks "$CORPUS")

mount_it
sub=$MNT; [ "$DEDUP" = 1 ] && { mkdir "$MNT/a"; sub=$MNT/a; }
t0=$(now); cp -a "$CORPUS/." "$sub/"; sync; t1=$(now)
settle_s=$(settle)
js > "$WORK/stats.json"
for d in "$sub"/*/; do n=$(basename "$d"); js "$d" > "$WORK/dir-$n.json"; done
if [ "$DEDUP" = 1 ]; then
  s1=$(js | field pack_bytes); g1=$(js | field unreferenced_bytes)
  cp -a "$CORPUS/." "$MNT/b/" 2>/dev/null || { mkdir -p "$MNT/b"; cp -a "$CORPUS/." "$MNT/b/"; }
  sync
  settle2_s=$(settle)
  s2=$(js | field pack_bytes); g2=$(js | field unreferenced_bytes)
fi
"$IDCFS" umount "$MNT"
mount_it
sync; echo 3 > /proc/sys/vm/drop_caches
t4=$(now); (cd "$sub" && sha256sum --quiet -c MANIFEST.sha256); t5=$(now)
echo "| corpus dir | MiB | cold read MB/s (one reader) |" > "$WORK/reads.md"
echo "|---|---:|---:|" >> "$WORK/reads.md"
for d in "$sub"/*/; do
  "$IDCFS" umount "$MNT"; mount_it; sync; echo 3 > /proc/sys/vm/drop_caches
  b=$(du -sb "$d" | cut -f1); a=$(now); find "$d" -type f -exec cat {} + > /dev/null; e=$(now)
  printf '| %s | %.1f | %.1f |\n' "$(basename "$d")" "$(echo "$b/1048576" | bc -l)" "$(echo "$b / ($e - $a) / 1000000" | bc -l)" >> "$WORK/reads.md"
done
"$IDCFS" umount "$MNT"
total=$(du -sb --exclude=MANIFEST.sha256 "$CORPUS" | cut -f1)
files=$(find "$CORPUS" -type f ! -name MANIFEST.sha256 | wc -l)

echo "## The dev corpus at level $LEVEL, settled by itself ($(date -u +%F))"
echo
echo "Command: \`LEVEL=$LEVEL DEDUP=$DEDUP benches/default_level.sh\`. Corpus: $files files, $((total / 1048576)) MiB. cp -a + sync: $(echo "$total / ($t1 - $t0) / 1000000" | bc -l | xargs printf '%.1f') MB/s; background recompression and reclaim settled in $(printf '%.0f' "$settle_s") s (idle_secs 5); every file verified after a remount: $(echo "$total / ($t5 - $t4) / 1000000" | bc -l | xargs printf '%.1f') MB/s cold."
echo
python3 - "$WORK" "$files" <<PY
import json, sys, glob, os
work, files = sys.argv[1], int(sys.argv[2])
base = {}
for line in """$base""".splitlines():
    p = [x.strip() for x in line.strip('|').split('|')]
    if len(p) == 4 and p[2].isdigit():
        base[p[0]] = (int(p[1]), int(p[2]), int(p[3]))
s = json.load(open(f"{work}/stats.json"))
ball = base["all"][2]
foot = s["pack_bytes"] + s["index_bytes"]
print(f"Whole store: packs {s['pack_bytes']/2**20:.2f} MiB + index {s['index_bytes']/2**20:.2f} MiB = {foot/2**20:.2f} MiB "
      f"(garbage {s['unreferenced_bytes']/2**20:.2f} MiB = {100*s['unreferenced_bytes']/max(s['pack_bytes'],1):.1f}% of the packs); "
      f"zstd -3 per 128 KiB block: {ball/2**20:.2f} MiB; **{100*(1-foot/ball):.1f}% smaller**. "
      f"Index: {s['index_bytes']/files:.0f} bytes per file. logical {s['logical_bytes']/2**20:.2f} MiB.")
print()
print("| corpus dir | files | MiB | zstd -3/block MiB | idcfs stored MiB (idcfs stats DIR) | saved vs file | smaller than zstd -3/block | codecs |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for f in sorted(glob.glob(f"{work}/dir-*.json")):
    d = json.load(open(f)); name = os.path.basename(f)[4:-5]
    b = base.get(name, (0, 0, 0))
    st, lg = d["stored_bytes"], d["logical_bytes"]
    cod = ", ".join(f"{c['codec']} {c['logical_bytes']/2**20:.1f}" for c in sorted(d["codecs"], key=lambda c: -c["logical_bytes"]))
    print(f"| {name} | {d['files']} | {lg/2**20:.2f} | {b[2]/2**20:.2f} | {st/2**20:.2f} | {100*(1-st/lg) if lg else 0:.1f}% | {100*(1-st/b[2]) if b[2] else 0:.1f}% | {cod} |")
PY
echo
cat "$WORK/reads.md"
if [ "$DEDUP" = 1 ]; then
  echo
  echo "dedup=on: a second copy of the corpus grew the packs from $s1 to $s2 bytes: $(echo "100 * ($s2 - $s1) / $s1" | bc -l | xargs printf '%.2f')% of the first copy's packs; their live part (packs minus unreferenced bytes) from $((s1 - g1)) to $((s2 - g2)) bytes: $(echo "100 * ($s2 - $g2 - $s1 + $g1) / ($s1 - $g1)" | bc -l | xargs printf '%.2f')% (settled in $(printf '%.0f' "$settle2_s") s)."
fi

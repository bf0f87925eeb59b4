#!/usr/bin/env bash
# levels.sh - the same mixed data written under level=fast, balanced and max: write throughput
# and stored size, then the stored size after recompression (`idcfs compact`, which runs what
# background recompression does, at once).
#
# Mixed data (real files, prepared once by mount_throughput.sh in $BENCH_DIR/inputs):
#   the 20,000-file kernel tree (tree.tar), the first 256 MiB of text.bin as 4 files, and
#   64 MiB of random bytes (incompressible).
# Usage (root): benches/levels.sh     env: IDCFS, BENCH_DIR (default /var/tmp/idcfs-bench), RUNS (1),
#   LEVELS (default "fast balanced max")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IDCFS=${IDCFS:-target/release/idcfs}
[[ $IDCFS == /* ]] || IDCFS=$PWD/$IDCFS
BENCH_DIR=${BENCH_DIR:-/var/tmp/idcfs-bench}
RUNS=${RUNS:-1}
IN=$BENCH_DIR/inputs
[ -f "$IN/tree.tar" ] && [ -f "$IN/text.bin" ] || { echo "run benches/mount_throughput.sh once to prepare $IN" >&2; exit 1; }
W=$BENCH_DIR/levels
STAGE=$W/stage
MNT=$W/mnt
cleanup() { mountpoint -q "$MNT" && "$IDCFS" umount "$MNT" >/dev/null 2>&1 || true; }
trap cleanup EXIT
if [ ! -f "$STAGE/.done" ]; then
  rm -rf "$STAGE"; mkdir -p "$STAGE/tree" "$STAGE/text" "$STAGE/random"
  tar -xf "$IN/tree.tar" -C "$STAGE/tree"
  for i in 0 1 2 3; do dd if="$IN/text.bin" of="$STAGE/text/part$i" bs=1M skip=$((i * 64)) count=64 status=none; done
  head -c $((64 << 20)) /dev/urandom > "$STAGE/random/noise.bin"
  touch "$STAGE/.done"
fi
total=$(du -sb --exclude=.done "$STAGE" | cut -f1)
now() { date +%s.%N; }
stored() { "$IDCFS" stats "$MNT" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored_bytes"])'; }
printf '| level | write MB/s (cp -a + sync) | stored after write (MiB) | recompress time (s) | stored after recompression (MiB) |\n|---|---:|---:|---:|---:|\n' > "$W/results.md"
for level in ${LEVELS:-fast balanced max}; do
  for run in $(seq 1 "$RUNS"); do
    cleanup; rm -rf "$W/store" "$MNT"; mkdir -p "$MNT"
    printf '[policy]\nlevel = "%s"\n[background]\nidle_secs = 3600\n' "$level" > "$W/config.toml"
    "$IDCFS" mount "$MNT" --store "$W/store" --config "$W/config.toml" >/dev/null
    t0=$(now); cp -a "$STAGE/." "$MNT/"; rm -f "$MNT/.done"; sync; t1=$(now)
    s1=$(stored)
    t2=$(now); "$IDCFS" compact "$MNT" >/dev/null 2>&1; t3=$(now)
    s2=$(stored)
    "$IDCFS" umount "$MNT"
    mbps=$(echo "$total / ($t1 - $t0) / 1000000" | bc -l)
    row=$(printf '| %s | %.1f | %.1f | %.1f | %.1f |' "$level" "$mbps" "$(echo "$s1/1048576" | bc -l)" "$(echo "$t3 - $t2" | bc -l)" "$(echo "$s2/1048576" | bc -l)")
    echo "$row" | tee -a "$W/results.md" >&2
  done
done
echo "data: $(echo "$total/1048576" | bc) MiB in $(find "$STAGE" -type f | wc -l) files (kernel tree, kernel text, random)"
cat "$W/results.md"

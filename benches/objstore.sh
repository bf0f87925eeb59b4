#!/usr/bin/env bash
# objstore.sh - the object-store backend (--store s3://) against the local backend, one run.
#
# Starts moto's S3 server on 127.0.0.1 (from $IDCFS_MOTO_SERVER or the CI venv
# $HOME/.cache/idcfs-ci/venv, which .ci/run installs), then for each target:
#   local   idcfs mount MNT --store DIR
#   s3      idcfs mount MNT --store s3://bench/RUN --cache DIR (default --cache-size 1G)
#   s3-small the same with --cache-size $SMALL_CACHE (smaller than the data written)
# runs
#   write   dd if=INPUT of=MNT/big bs=1M conv=fsync, then `idcfs umount` (timed separately:
#           for s3 it waits for the uploads)
#   read    remount on the same cache (s3: the uploaded packs are not local any more and the
#           read cache starts empty, so every byte comes from the bucket),
#           drop the page cache, dd MNT/big to /dev/null; then cmp with the input (untimed)
#   rebuild (s3) `idcfs fsck s3://… --cache EMPTY --rebuild`: a new machine with only the
#           bucket (index rebuilt from the packs, then every block read and checked)
#   tree    tar -xf of the small-file tarball into MNT + sync, then umount (timed)
# and prints, per target and workload, seconds, MB/s and, for s3, the PUT/GET requests and
# bytes of `idcfs status --json` (requests and bytes uploaded per logical GiB).
#
# The target `backlog` (not in the default TARGETS) measures writers against a full upload
# backlog: --cache-size $BACKLOG_CACHE --uploads 1 (64 MiB packs), the store reached through a
# proxy that passes $BACKLOG_MBPS MB/s (default 20: uploads slower than writes),
# SIZE_MIB written in 1 MiB write() calls by one writer that records the MB written in each
# second and the longest write() call, then fsync; once with the old backpressure
# (IDCFS_BACKLOG=stall: full speed, then a wait of up to --store-timeout at each sealed pack
# while the backlog exceeds the cache size) and once with the default (each append slowed in
# proportion to how far the backlog is past half the cache size).
#
# The target `rebuild` (not in the default TARGETS) writes SIZE_MIB once, then mounts it on an
# empty cache with --cache-size $SMALL_CACHE (a new machine: the index is rebuilt from the
# packs before the mount comes up) with each binary of $REBUILD_BINS (default $IDCFS; name an
# older build too to compare), and prints the mount's seconds, GETs and MiB downloaded.
#
# The target `corpus` (not in the default TARGETS) copies the dev corpus ($CORPUS, default
# /var/tmp/corpus, built by ../shared/corpus/make-dev-corpus.sh when missing) in, unmounts,
# mounts on an empty cache (a new machine) and checks every file and every block.
#
# Inputs: $BENCH_INPUTS (default /var/tmp/idcfs-bench/inputs, made by
# benches/mount_throughput.sh): random.bin or text.bin (1 GiB) and tree.tar.
# Usage (root): benches/objstore.sh     Knobs: INPUT=random|text SIZE_MIB TARGETS SMALL_CACHE
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IDCFS=${IDCFS:-$PWD/target/release/idcfs}
IN=${BENCH_INPUTS:-/var/tmp/idcfs-bench/inputs}
INPUT=${INPUT:-random}
SIZE_MIB=${SIZE_MIB:-1024}
TARGETS=${TARGETS:-local s3 s3-small}
SMALL_CACHE=${SMALL_CACHE:-128M}
BACKLOG_CACHE=${BACKLOG_CACHE:-128M}
WORK=$(mktemp -d /var/tmp/idcfs-objbench.XXXXXX)
MOTO=${IDCFS_MOTO_SERVER:-$HOME/.cache/idcfs-ci/venv/bin/moto_server}
[ -x "$MOTO" ] || { echo "no moto_server at $MOTO (.ci/run installs it)" >&2; exit 1; }
[ -f "$IN/$INPUT.bin" ] && [ -f "$IN/tree.tar" ] || { echo "inputs missing in $IN: run benches/mount_throughput.sh once" >&2; exit 1; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$MOTO" -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
MNT=$WORK/mnt
mkdir -p "$MNT"
cleanup() {
  mountpoint -q "$MNT" && { "$IDCFS" umount "$MNT" || fusermount3 -uz "$MNT"; }
  kill "$MOTO_PID" ${PROXY_PID:-} 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT" && break; sleep 0.2; done
curl -s -X PUT -o /dev/null "http://127.0.0.1:$PORT/bench"
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true

if [ $((SIZE_MIB << 20)) -eq "$(stat -c %s "$IN/$INPUT.bin")" ]; then
  ln -s "$IN/$INPUT.bin" "$WORK/input.bin"
else
  head -c $((SIZE_MIB << 20)) "$IN/$INPUT.bin" >"$WORK/input.bin"
fi
BYTES=$((SIZE_MIB << 20))
now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$1/1e6/($3-$2):.1f}')"; }
secs() { python3 -c "print(f'{$2-$1:.2f}')"; }
status() { # PUTs, bytes up, GETs, bytes down of the mount
  "$IDCFS" status --json | python3 -c "
import json,sys
for r in json.load(sys.stdin):
  if r['mountpoint']=='$MNT' and r['status'] and r['status'].get('backend'):
    b=r['status']['backend']; print(b['puts'], b['bytes_uploaded'], b['gets'], b['bytes_downloaded'])"
}
mount_target() { # target run cache-name
  case $1 in
    local) "$IDCFS" mount "$MNT" --store "$WORK/local-$2" >/dev/null ;;
    s3) "$IDCFS" mount "$MNT" --store "s3://bench/$2" --cache "$WORK/$3" >/dev/null ;;
    s3-small) "$IDCFS" mount "$MNT" --store "s3://bench/$2" --cache "$WORK/$3" --cache-size "$SMALL_CACHE" >/dev/null ;;
  esac
}
if [[ " $TARGETS " == *" backlog "* ]]; then
  TARGETS=${TARGETS//backlog/}
  # Uploads through a proxy that passes BACKLOG_MBPS MB/s (a slow link to the store): the
  # backlog fills whatever the local disk's speed.
  PROXY_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 - "$PROXY_PORT" "$PORT" "${BACKLOG_MBPS:-20}" <<'PY' &
import asyncio, sys, time
listen, target, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) * 1e6
budget = {"t": time.monotonic(), "sent": 0.0}
async def pipe(r, w, limit):
    try:
        while data := await r.read(65536):
            if limit:  # one shared budget for every upload stream
                budget["sent"] += len(data)
                ahead = budget["sent"] / rate - (time.monotonic() - budget["t"])
                if ahead > 0:
                    await asyncio.sleep(ahead)
            w.write(data)
            await w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        w.close()
async def handle(cr, cw):
    sr, sw = await asyncio.open_connection("127.0.0.1", target)
    await asyncio.gather(pipe(cr, sw, True), pipe(sr, cw, False))
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
PY
  PROXY_PID=$!
  sleep 1
  for mode in ${BACKLOG_MODES:-stall smooth}; do
    env=(AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT); [ $mode = stall ] && env+=(IDCFS_BACKLOG=stall)
    env "${env[@]}" "$IDCFS" mount "$MNT" --store "s3://bench/backlog-$mode" --cache "$WORK/backlog-$mode" \
      --cache-size "$BACKLOG_CACHE" --uploads 1 >/dev/null
    bdi=/sys/class/bdi/$(mountpoint -d "$MNT")
    # BDI_MAX_BYTES: try another dirty-page limit for the mount (an experiment knob).
    [ -z "${BDI_MAX_BYTES:-}" ] || echo "$BDI_MAX_BYTES" >"$bdi/max_bytes"
    echo "backlog $mode: kernel dirty-page limit of the mount: $(cat "$bdi/max_bytes" 2>/dev/null || echo '?') bytes (max_ratio $(cat "$bdi/max_ratio" 2>/dev/null || echo '?')%, strict $(cat "$bdi/strict_limit" 2>/dev/null || echo '?'))"
    python3 - "$WORK/input.bin" "$MNT/big" "$BYTES" "$mode" <<'PY'
import os, sys, time
src, dst, total, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
per_sec, lat, n = {}, [], 0
with open(src, "rb") as i, open(dst, "wb", buffering=0) as o:
    t0 = time.monotonic()
    while n < total:
        b = i.read(1 << 20)
        if not b:
            break
        a = time.monotonic()
        o.write(b)
        z = time.monotonic()
        lat.append(z - a)
        n += len(b)
        per_sec[int(z - t0)] = per_sec.get(int(z - t0), 0) + len(b)
    w = time.monotonic()
    os.fsync(o.fileno())
    f = time.monotonic()
secs = [per_sec.get(s, 0) / 1e6 for s in range(int(w - t0) + 1)]
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
print(f"backlog {mode}: {n/1e6/(w-t0):.1f} MB/s over {w-t0:.1f} s of writes, fsync {f-w:.1f} s; "
      f"write() of 1 MiB: median {q(0.5):.0f} ms, p99 {q(0.99):.0f} ms, longest {lat[-1]*1000:.0f} ms, "
      f"{sum(1 for x in lat if x > 1)} over 1 s; seconds with under 1 MB written {sum(1 for x in secs[:-1] if x < 1)}")
print(f"backlog {mode} MB per second: " + " ".join(f"{x:.0f}" for x in secs))
PY
    c=$(now); "$IDCFS" umount "$MNT"; d=$(now)
    echo "backlog $mode: umount $(secs "$c" "$d") s"
  done
  kill "$PROXY_PID"
fi
if [[ " $TARGETS " == *" rebuild "* ]]; then
  TARGETS=${TARGETS//rebuild/}
  "$IDCFS" mount "$MNT" --store s3://bench/rebuild --cache "$WORK/rebuild-w" >/dev/null
  dd if="$WORK/input.bin" of="$MNT/big" bs=1M conv=fsync status=none
  "$IDCFS" umount "$MNT"
  rm -rf "$WORK/rebuild-w"
  n=0
  for bin in ${REBUILD_BINS:-$IDCFS}; do
    n=$((n + 1))
    a=$(now)
    "$bin" mount "$MNT" --store s3://bench/rebuild --cache "$WORK/rebuild-$n" --cache-size "$SMALL_CACHE" >/dev/null
    b=$(now)
    st=$(IDCFS=$bin status || true)
    read -r puts up gets down <<<"${st:-0 0 0 0}"
    "$bin" umount "$MNT"
    rm -rf "$WORK/rebuild-$n"
    echo "rebuild ($bin): mount on an empty cache, --cache-size $SMALL_CACHE, $SIZE_MIB MiB store: $(secs "$a" "$b") s, $gets GETs, $((down >> 20)) MiB down"
  done
fi
if [[ " $TARGETS " == *" corpus "* ]]; then
  TARGETS=${TARGETS//corpus/}
  # The dev corpus through the bucket: cp -a in, umount (every upload done), then a new
  # machine (an empty cache directory: the index is rebuilt from the bucket) checks every
  # file against the corpus manifest, and fsck reads every block.
  CORPUS=${CORPUS:-/var/tmp/corpus}
  [ -f "$CORPUS/MANIFEST.sha256" ] || bash ../shared/corpus/make-dev-corpus.sh "$CORPUS" >/dev/null
  "$IDCFS" mount "$MNT" --store s3://bench/corpus --cache "$WORK/corpus-1" >/dev/null
  a=$(now); cp -a "$CORPUS/." "$MNT/"; sync; b=$(now)
  "$IDCFS" umount "$MNT"; c=$(now)
  rm -rf "$WORK/corpus-1"
  "$IDCFS" mount "$MNT" --store s3://bench/corpus --cache "$WORK/corpus-2" >/dev/null; d=$(now)
  (cd "$MNT" && sha256sum --quiet -c MANIFEST.sha256) && ok=verified || ok="VERIFY FAILED"
  e=$(now)
  st=$(status || true)
  read -r puts up gets down <<<"${st:-0 0 0 0}"
  "$IDCFS" umount "$MNT"
  "$IDCFS" fsck s3://bench/corpus --cache "$WORK/corpus-2" >"$WORK/fsck.out" 2>&1 && f="fsck clean" || f="FSCK FAILED: $(tail -3 "$WORK/fsck.out")"
  n=$(find "$CORPUS" -type f ! -name MANIFEST.sha256 | wc -l)
  echo "corpus: $n files, $(du -sb --exclude=MANIFEST.sha256 "$CORPUS" | cut -f1) bytes; cp -a + sync $(secs "$a" "$b") s, umount $(secs "$b" "$c") s; mount on an empty cache (index rebuilt from the bucket) $(secs "$c" "$d") s; every file read back and checked against the manifest in $(secs "$d" "$e") s: $ok ($gets GETs, $((down >> 20)) MiB down); $f"
  rm -rf "$WORK/corpus-2"
fi
printf "target\tworkload\tseconds\tMB/s\tumount_s\tPUTs\tMiB_up\tGETs\tMiB_down\tPUTs/GiB\tGiB_up/GiB\n"
for t in $TARGETS; do
  # sequential write, then umount (s3: waits for every upload)
  mount_target "$t" "$t-seq" "$t-c1"
  a=$(now); dd if="$WORK/input.bin" of="$MNT/big" bs=1M conv=fsync status=none; b=$(now)
  st=$(status || true)
  c=$(now); "$IDCFS" umount "$MNT"; d=$(now)
  read -r puts up gets down <<<"${st:-0 0 0 0}"
  printf "%s\twrite %s MiB %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$t" "$SIZE_MIB" "$INPUT" "$(secs "$a" "$b")" "$(mbps $BYTES "$a" "$b")" "$(secs "$c" "$d")" \
    "$puts" "$((up >> 20))" "$gets" "$((down >> 20))" "$(python3 -c "print(f'{$puts*1024/$SIZE_MIB:.0f}')")" "$(python3 -c "print(f'{$up/$BYTES:.2f}')")"
  # cold read: s3 from an empty cache
  # cold read: the same cache (index kept; s3: uploaded packs are no longer local and the
  # read cache starts empty, so every byte comes from the bucket)
  m0=$(now); mount_target "$t" "$t-seq" "$t-c1"; m1=$(now)
  echo "$t: remount took $(secs "$m0" "$m1") s" >&2
  sync; echo 3 >/proc/sys/vm/drop_caches
  a=$(now); dd if="$MNT/big" of=/dev/null bs=1M status=none; b=$(now)
  st=$(status || true)
  read -r puts up gets down <<<"${st:-0 0 0 0}"
  cmp -s "$MNT/big" "$WORK/input.bin" || echo "VERIFY FAILED: $t read" >&2
  c=$(now); "$IDCFS" umount "$MNT"; d=$(now)
  printf "%s\tcold read\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\t\n" "$t" "$(secs "$a" "$b")" "$(mbps $BYTES "$a" "$b")" "$(secs "$c" "$d")" "$puts" "$((up >> 20))" "$gets" "$((down >> 20))"
  # a new machine: only the bucket; fsck --rebuild on an empty cache (rebuild + full check)
  if [ "$t" != local ]; then
    extra=(); [ "$t" = s3-small ] && extra=(--cache-size "$SMALL_CACHE")
    a=$(now); "$IDCFS" fsck "s3://bench/$t-seq" --cache "$WORK/$t-c2" --rebuild "${extra[@]}" >"$WORK/fsck.out" 2>&1 || { echo "fsck failed" >&2; cat "$WORK/fsck.out" >&2; }; b=$(now)
    printf "%s\tnew machine: fsck --rebuild (empty cache)\t%s\t%s\t\t\t\t\t\t\t\n" "$t" "$(secs "$a" "$b")" "$(mbps $BYTES "$a" "$b")"
  fi
  # small files
  mount_target "$t" "$t-tree" "$t-c3"
  a=$(now); tar -xf "$IN/tree.tar" -C "$MNT"; sync; b=$(now)
  st=$(status || true)
  c=$(now); "$IDCFS" umount "$MNT"; d=$(now)
  read -r puts up gets down <<<"${st:-0 0 0 0}"
  printf "%s\tuntar %s files + sync\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\t\n" "$t" "$(tar -tf "$IN/tree.tar" | wc -l)" "$(secs "$a" "$b")" "$(mbps "$(stat -c %s "$IN/tree.tar")" "$a" "$b")" "$(secs "$c" "$d")" "$puts" "$((up >> 20))" "$gets" "$((down >> 20))"
  rm -rf "$WORK"/local-* "$WORK/$t"-c*   # keep the disk free between targets
done

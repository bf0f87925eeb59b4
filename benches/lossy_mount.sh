#!/usr/bin/env bash
# Through a real mount: a directory of PNG photos under lossy=image:psnr=40 against the same
# files in a sibling directory with the default (lossless) policy. Prints the stored bytes of
# each directory (sum of user.idcfs.fileinfo "stored"), the saving, the minimum PSNR of the
# files read back, and whether st_size and content are stable across a remount.
#
# Usage: benches/lossy_mount.sh PHOTO_DIR   (as root; builds nothing: uses target/release, or
#        $CARGO_TARGET_DIR/release)
set -euo pipefail
SRC=$(realpath "$1")
ROOT=$(realpath "$(dirname "$0")/..")
T=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$T/release/idcfs
RD=$T/release/examples/lossy_rd
W=$(mktemp -d /var/tmp/idcfs-lossy-bench.XXXXXX)
trap 'fusermount3 -uz "$W/mnt" 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/mnt"
"$BIN" mount --store "$W/store" "$W/mnt" >/dev/null
mkdir "$W/mnt/lossy" "$W/mnt/plain"
"$BIN" policy set "$W/mnt/lossy" lossy=image:psnr=40 >/dev/null
cp "$SRC"/*.png "$W/mnt/lossy/"
cp "$SRC"/*.png "$W/mnt/plain/"
start=$(date +%s.%N)
"$BIN" recompress "$W/mnt" >/dev/null
end=$(date +%s.%N)
stored() {
  local sum=0 f
  for f in "$1"/*.png; do
    sum=$((sum + $(getfattr --absolute-names --only-values -n user.idcfs.fileinfo "$f" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored"])')))
  done
  echo "$sum"
}
src_bytes=$(cat "$SRC"/*.png | wc -c)
lossy=$(stored "$W/mnt/lossy")
plain=$(stored "$W/mnt/plain")
echo "files: $(ls "$SRC"/*.png | wc -l), PNG bytes: $src_bytes"
echo "stored lossless (default policy): $plain"
echo "stored lossy=image:psnr=40: $lossy"
python3 -c "print(f'lossy is {100*(1-$lossy/$plain):.1f}% smaller than lossless storage')"
echo "winners: $(for f in "$W/mnt/lossy"/*.png; do getfattr --absolute-names --only-values -n user.idcfs.fileinfo "$f" | python3 -c 'import json,sys; print(*json.load(sys.stdin)["encodings"])'; done | sort | uniq -c | tr -s ' \n' ' ')"
echo "recompress wall time (both directories): $(python3 -c "print(f'{$end-$start:.1f} s')")"
"$RD" psnr "$SRC" "$W/mnt/lossy"
cmp -s <(cd "$W/mnt/plain" && sha256sum *.png) <(cd "$SRC" && sha256sum *.png) && echo "plain directory: every byte unchanged"
before=$(cd "$W/mnt/lossy" && stat -c '%n %s' *.png && sha256sum *.png)
"$BIN" umount "$W/mnt"
"$BIN" mount --store "$W/store" "$W/mnt" >/dev/null
after=$(cd "$W/mnt/lossy" && stat -c '%n %s' *.png && sha256sum *.png)
[ "$before" = "$after" ] && echo "st_size and content stable across remount"
"$BIN" umount "$W/mnt"

#!/usr/bin/env bash
# Writes a small golden store with the idcfs binary BIN into OUT (OUT/store plus the lists a
# later build checks it against: SHA256SUMS of every regular file and TREE of every path's
# type, mode, size, link count, symlink target and xattrs).
#
# It exercises every journal op and every codec of the format that BIN writes: a populate
# round, recompression at level max, compaction (moves and a checkpoint), then a second round
# of creates, dedup references, truncates, renames, xattr removals, hard links and an unlink
# of an open file, so the final store holds records of each kind.
#
# Usage: tests/golden/make-golden.sh BIN OUT   (as root; needs fusermount3, python3, attr)
#        Put OUT on a roomy filesystem (a tmpfs will do): where free space is short, deletes
#        trigger compaction at once, which folds round 2's records and loses op tags.
#        KEYFILE=F tests/golden/make-golden.sh BIN OUT   (an encrypted store, format 3)
set -euo pipefail
BIN=$(realpath "$1")
HERE=$(realpath "$(dirname "$0")")
OUT=$2
DATA=$(realpath "$(dirname "$0")/../data")
[ ! -e "$OUT" ] || { echo "$OUT exists" >&2; exit 1; }
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
# KEYFILE=F: an encrypted store (format 3) unlocked with key file F, kept as OUT/key.
KEYARGS=()
if [ -n "${KEYFILE:-}" ]; then
  cp "$KEYFILE" "$OUT/key"
  KEYARGS=(--key-file "$OUT/key")
  "$BIN" init --encrypt "$OUT/store" "${KEYARGS[@]}"
fi
MNT=$(mktemp -d /tmp/idcfs-golden-mnt.XXXXXX)
trap 'fusermount3 -uz "$MNT" 2>/dev/null || true; rmdir "$MNT" 2>/dev/null || true' EXIT

"$BIN" mount --store "$OUT/store" "${KEYARGS[@]}" "$MNT"
cd "$MNT"

# Round 1: every content class the codecs know, under policies.
mkdir -p max fast off dedup deep/a/b
"$BIN" policy set max level=max
"$BIN" policy set fast level=fast
"$BIN" policy set off level=off
"$BIN" policy set dedup dedup=on
cp "$DATA"/text/*.pod max/perlsolaris.pod
cp "$DATA"/json/*paginators-1.json max/small.json
cp "$DATA"/source/*.py max/profile.py
cp "$DATA"/jpeg/*sddm-preview.jpg max/preview.jpg
cp "$DATA"/png/*logo-text-version-256.png max/logo.png
cp "$DATA"/png/*progress_dot_off.png max/dot.png
cp "$DATA"/gzip/man3_floor.3.gz max/floor.3.gz
cp "$DATA"/zip/*.whl max/wheel.whl
cp "$DATA"/wav/*Front_Center.wav max/front.wav
cp "$DATA"/wav/*cembalo-3.wav max/cembalo.wav
cp "$DATA"/elf/users max/users
# Since v2.6 (codec 15 xz-recode, at level max): a Debian package (class ar: control.tar.xz and
# data.tar.xz inside an ar archive) and a bare xz stream (class xz) of a JSON file, written by
# python3's lzma at preset 6 (what `xz -6` writes), both rebuilt exactly from their content.
cp "$DATA"/deb/bzip2_*.deb max/bzip2.deb
python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.compress(open(sys.argv[1], "rb").read(), preset=6))' \
  "$DATA"/json/*examples-1.json > max/examples.json.xz
cp "$DATA"/text/*.pod fast/perlsolaris.pod
# Revision 2 (context mixing, codec 9): text-like files at level=archive, each with its prior.
mkdir -p archive
"$BIN" policy set archive level=archive
cp "$DATA"/text/*.pod archive/perlsolaris.pod
cp "$DATA"/json/*paginators-1.json archive/small.json
cp "$DATA"/source/*.py archive/profile.py
cp "$DATA"/text/*.pod off/perlsolaris.pod
head -c 70000 /dev/urandom > max/noise.bin
# Sparse: data, a hole of several blocks, data; and an all-zero block (stored as a hole).
python3 - <<'PY'
import os
with open("max/sparse.dat", "wb") as f:
    f.write(b"head" * 1000)
    f.seek(5 << 17)
    f.write(b"tail" * 1000)
with open("max/zeros.dat", "wb") as f:
    f.write(bytes(300000))
with open("deep/a/b/big.log", "w") as f:
    for i in range(12000):
        f.write(f"2026-11-30T11:{i % 60:02d}:00Z host app[{i}]: request {i} served in {i % 97} ms\n")
PY
cp deep/a/b/big.log max/shrink.log
cp "$DATA"/json/*examples-1.json dedup/one.json
cp "$DATA"/json/*examples-1.json dedup/two.json
ln -s ../max/perlsolaris.pod deep/link-to-pod
ln max/profile.py deep/hardlink.py
mkfifo deep/fifo
setfattr -n user.color -v blue max/logo.png
setfattr -n user.gone -v soon max/logo.png
setfattr -n user.big -v "$(head -c 3000 /dev/zero | tr '\0' x)" deep
touch -d '2001-02-03 04:05:06.123456789' max/users
chmod 4755 max/users
"$BIN" recompress "$MNT" >/dev/null
for f in max/bzip2.deb max/examples.json.xz; do
  getfattr --only-values -n user.idcfs.fileinfo "$f" | grep -q '"xz-recode"' \
    || { echo "$f is not stored by xz-recode" >&2; exit 1; }
done
"$BIN" compact "$MNT" >/dev/null

# Round 2, after the checkpoint: the ops that must also appear in the live journal.
# Revision 3 (lossy storage): a photo under lossy=image:psnr=40 and a WAV under
# lossy=audio:q=40 become lossy objects (PutLossyObject, codecs image-webp and wav-opus),
# after the compaction so that the records stay as they are.
mkdir lossy
"$BIN" policy set lossy lossy=image:psnr=40,audio:q=40
cp "$DATA"/photo/*chelsea.png lossy/chelsea.png
cp "$DATA"/wav/*Front_Center.wav lossy/front.wav
# Since v2.5 (codec 14 image-avif, which now wins on the photo; image kinds PNM, BMP and TIFF;
# wav-opus payload version 2 for AIFF): crops of the photo as PPM, BMP and TIFF, and the WAV's
# samples as an AIFF, made by lossy-media.py (no image tools needed).
MEDIA=$(mktemp -d /tmp/idcfs-golden-media.XXXXXX)
python3 "$HERE/lossy-media.py" "$DATA" "$MEDIA"
cp "$MEDIA"/crop.ppm "$MEDIA"/crop.bmp "$MEDIA"/crop.tif "$MEDIA"/front.aiff lossy/
"$BIN" recompress "$MNT/lossy" >/dev/null
cp "$DATA"/jpeg/*sddm-preview.jpg dedup/preview.jpg
# Revision 1 (object dedup): an identical copy references the first one's shared object.
cp "$DATA"/jpeg/*sddm-preview.jpg dedup/preview-copy.jpg
cp "$DATA"/json/*examples-1.json dedup/three.json
cp "$DATA"/text/*.pod deep/a/doomed.pod
rm deep/a/doomed.pod
truncate -s 10000 fast/perlsolaris.pod
truncate -s 200000 max/noise.bin
truncate -s 1000 max/shrink.log
cp deep/a/b/big.log dedup/log1
cp deep/a/b/big.log dedup/log2
mv deep/a/b deep/moved
echo replaced > deep/victim && echo winner > deep/winner && mv deep/winner deep/victim
setfattr -x user.gone max/logo.png
ln deep/moved/big.log deep/big-link.log
python3 - <<'PY'
import os
f = open("deep/orphan", "wb")
f.write(b"open while unlinked " * 500)
f.flush(); os.fsync(f.fileno())
os.unlink("deep/orphan")
f.write(b"more")
f.close()
PY
printf 'appended\n' >> max/perlsolaris.pod
# A whole-file object committed after the compaction (background reclaim may have folded the
# first round's PutObject records into MoveObject ones).
cp "$DATA"/elf/users max/users-again
"$BIN" recompress "$MNT/max/users-again" >/dev/null
"$BIN" recompress "$MNT/dedup" >/dev/null
cd /
"$BIN" umount "$MNT"

# Since v2.5: the lossy image codecs that image-avif beats, each on a mount whose config
# disables the others: image-webp at 40 dB, and image-learned (needs ONNX Runtime, found as the
# tests find it) at the 22 dB its model reaches.
for only in webp learned; do
  case $only in
    webp) disabled='"image-avif", "image-learned"'; policy=lossy=image:psnr=40 ;;
    learned) disabled='"image-avif", "image-webp"'; policy=lossy=image:psnr=22 ;;
  esac
  printf '[codecs]\ndisabled = [%s]\n' "$disabled" > "$MEDIA/config-$only.toml"
  "$BIN" mount --store "$OUT/store" "${KEYARGS[@]}" --config "$MEDIA/config-$only.toml" "$MNT"
  mkdir "$MNT/lossy-$only"
  "$BIN" policy set "$MNT/lossy-$only" "$policy"
  cp "$MEDIA/crop.ppm" "$MNT/lossy-$only/crop.ppm"
  "$BIN" recompress "$MNT/lossy-$only" >/dev/null
  getfattr --only-values -n user.idcfs.fileinfo "$MNT/lossy-$only/crop.ppm" | grep -q "image-$only" \
    || { echo "lossy-$only/crop.ppm is not stored by image-$only" >&2; exit 1; }
  "$BIN" umount "$MNT"
done
rm -rf "$MEDIA"

# The lists a later build compares against (paths relative to the mount root).
"$BIN" mount --store "$OUT/store" "${KEYARGS[@]}" "$MNT"
python3 "$HERE/lists.py" "$MNT" "$OUT"
"$BIN" umount "$MNT"
# Logs and the lock are not part of the format; the index is a cache the test rebuilds too.
rm -f "$OUT/store/idcfs.log" "$OUT/store/lock" "$OUT/store/reserve"
du -sh "$OUT/store"/* || true

#!/bin/sh
# The training photos of hp-int8-v1, from two pinned Debian 12 (bookworm) packages:
# mate-backgrounds 1.26.0-1 and ukui-wallpapers 20.04.3-1.1: the 12 photographs of
# mate/nature, plus 7 rendered or painted wallpapers (ukui's, and mate's Elephants) that were
# picked as photos by name and kept once training had started (see README.md).
# Usage: fetch_data.sh OUT_DIR
set -eu
out=$1
tmp=$(mktemp -d)
cd "$tmp"
apt-get download mate-backgrounds=1.26.0-1 ukui-wallpapers=20.04.3-1.1
for d in *.deb; do dpkg-deb -x "$d" root; done
mkdir -p "$out"
b=root/usr/share/backgrounds
for f in mate/nature/Aqua.jpg mate/nature/Blinds.jpg mate/nature/Dune.jpg \
    mate/nature/FreshFlower.jpg mate/nature/Garden.jpg mate/nature/GreenMeadow.jpg \
    mate/nature/LadyBird.jpg mate/nature/RainDrops.jpg mate/nature/Storm.jpg \
    mate/nature/TwoWings.jpg mate/nature/Wood.jpg mate/nature/YellowFlower.jpg \
    mate/abstract/Elephants_3840x2160.jpg \
    2004default.jpg firstgeneration.jpg string.jpg the-mouse.jpg calla.png goldfish.png; do
    cp "$b/$f" "$out/$(echo "$f" | tr / _)"
done
rm -rf "$tmp"
ls "$out" | wc -l

#!/bin/sh
# The training photos of hp-dct-v2: the same files as hp-int8-v1 (its fetch_data.sh, pinned
# Debian 12 packages mate-backgrounds 1.26.0-1 and ukui-wallpapers 20.04.3-1.1).
# Usage: fetch_data.sh OUT_DIR
exec sh "$(dirname "$0")/../hp-int8-v1/fetch_data.sh" "$1"

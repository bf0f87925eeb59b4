#!/usr/bin/env bash
# mount_throughput.sh - compare idcfs against bindfs, btrfs (zstd:3) and the raw disk.
#
# Runs the same workloads, on the same data, against up to four targets:
#   idcfs   $IDCFS mount MNT --store STORE   (a real FUSE mount; unmounted with $IDCFS umount MNT)
#   bindfs  bindfs SRC MNT                   (passthrough FUSE, the "cost of FUSE" baseline)
#   btrfs   mkfs.btrfs on a loop device over a sparse file, mounted -o compress-force=zstd:3
#   raw     a plain directory on the host filesystem that holds BENCH_DIR
#
# Workloads (each target gets a freshly made, empty filesystem/store for every workload and run):
#   text    dd 1 GiB of real text (Linux kernel *.c/*.h) to MNT/big with conv=fsync,
#           stored size, then a cold read (idcfs/bindfs are unmounted and remounted;
#           page cache dropped for all targets) with dd to /dev/null
#   random  the same with 1 GiB of incompressible data from /dev/urandom
#   tree    tar -xf of ~20,000 real small files (first files of the kernel tree in sorted
#           order) into MNT/tree, then sync; stored size; then rm -rf MNT/tree and sync
# After each phase the resident memory of the FUSE daemon (idcfs, and bindfs for comparison)
# is sampled from /proc/PID/status (VmHWM); the report gives the maximum.
#
# Usage (as root, from anywhere):
#   benches/mount_throughput.sh
#   TARGETS="bindfs btrfs raw" RUNS=1 benches/mount_throughput.sh
#
# Environment knobs:
#   IDCFS        idcfs binary (default: target/release/idcfs, relative to the repo root)
#   TARGETS      targets to run, in this order (default: "idcfs bindfs btrfs raw"; also
#                idcfs-enc: an encrypted store unlocked with a key file)
#   WORKLOADS    workloads to run (default: "text random tree")
#   RUNS         repetitions of every workload on every target; medians are reported (default: 3)
#   BENCH_DIR    work dir: cached inputs, stores, loop image, results (default: /var/tmp/idcfs-bench)
#   SIZE_MIB     MiB written by the text/random workloads, at most 1024 (default: 1024)
#   TREE_FILES   number of files in the tree tarball; changing it rebuilds the inputs (default: 20000)
#   BTRFS_IMG    size of the sparse btrfs loop file (default: 4G)
#   KERNEL_PKG   Debian package that provides the text corpus (default: linux-source-6.1,
#                falling back to the newest linux-source-X.Y apt knows)
#   VERIFY       1 = after each timed read, compare the data with the input, untimed (default: 1)
#   OP_TIMEOUT   seconds allowed for each idcfs mount/umount/stats command (default: 300)
#
# Inputs are prepared once and cached in $BENCH_DIR/inputs (needs apt access to Debian once):
#   text.bin    exactly 1 GiB: the kernel tree's *.c and *.h files, sorted by path, concatenated,
#               cut at 1 GiB (no file is repeated; *.rst/*.txt/*.S/*.dts* follow if ever short)
#   random.bin  exactly 1 GiB from /dev/urandom
#   tree.tar    the first TREE_FILES regular files of the kernel tree in sorted path order
#   SOURCE      which package/version and how much of it each input uses
#
# Output: progress on stderr (and $BENCH_DIR/bench.log), every sample in $BENCH_DIR/results.tsv,
# and on stdout a summary plus a markdown table for BENCHMARKS.md (also $BENCH_DIR/results.md).
# Units: MB/s = 10^6 bytes per second of wall time (date +%s.%N around the command), sizes in MiB.
# Stored size: idcfs = "stored_bytes" of `idcfs stats MNT --json` (whole store); btrfs = compsize
# "Disk Usage" of the files (data extents, no metadata); bindfs/raw = du of the files on the host.
set -euo pipefail
shopt -s inherit_errexit

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)

IDCFS=${IDCFS:-target/release/idcfs}
[[ $IDCFS == /* ]] || IDCFS=$REPO_ROOT/$IDCFS
TARGETS=${TARGETS:-idcfs bindfs btrfs raw}
WORKLOADS=${WORKLOADS:-text random tree}
RUNS=${RUNS:-3}
BENCH_DIR=$(realpath -m "${BENCH_DIR:-/var/tmp/idcfs-bench}")
SIZE_MIB=${SIZE_MIB:-1024}
TREE_FILES=${TREE_FILES:-20000}
BTRFS_IMG=${BTRFS_IMG:-4G}
KERNEL_PKG=${KERNEL_PKG:-linux-source-6.1}
VERIFY=${VERIFY:-1}
OP_TIMEOUT=${OP_TIMEOUT:-300}

GIB=1073741824
IN=$BENCH_DIR/inputs
WORK=$BENCH_DIR/work
LOG=$BENCH_DIR/bench.log
TSV=$BENCH_DIR/results.tsv
MD=$BENCH_DIR/results.md

MNT=""               # mountpoint of the target being benchmarked
DAEMON_PIDS=()       # FUSE daemons seen while mounted, stopped in cleanup if still alive
VERIFY_FAILURES=0

log() { echo "[$(date +%T)] $*" | tee -a "$LOG" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
# MB/s for $1 bytes moved between timestamps $2 and $3
rate() { awk -v b="$1" -v t0="$2" -v t1="$3" 'BEGIN { printf "%.1f", b / (t1 - t0) / 1e6 }'; }
secs() { awk -v t0="$1" -v t1="$2" 'BEGIN { printf "%.3f", t1 - t0 }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
# record WORKLOAD TARGET METRIC VALUE -> one line of results.tsv
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$RUN" "$1" "$2" "$3" "$4" >>"$TSV"; log "  $2 $1 $3 = $4"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
json_field() { # json_field KEY < json  -> top-level numeric field
  if command -v jq >/dev/null; then jq -er ".$1"
  else python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; fi
}

# ---------------------------------------------------------------- input preparation

prepare_kernel_inputs() {
  local prep=$BENCH_DIR/prep pkg deb tarball srcroot list
  rm -rf "$prep"; mkdir -p "$prep/src"
  pkg=$KERNEL_PKG
  if ! apt-cache show "$pkg" >/dev/null 2>&1; then
    log "apt does not know $pkg; running apt-get update"
    apt-get update -qq >&2
  fi
  if ! apt-cache show "$pkg" >/dev/null 2>&1; then
    pkg=$(apt-cache search --names-only '^linux-source-[0-9.]+$' | awk '{print $1}' | sort -V | tail -n1)
    [[ -n $pkg ]] || die "no linux-source-X.Y package found in apt"
  fi
  log "downloading $pkg (one-time text corpus preparation)"
  (cd "$prep" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2)
  deb=$(ls "$prep"/"$pkg"_*.deb)
  dpkg-deb --fsys-tarfile "$deb" | tar -xf - -C "$prep" --wildcards './usr/src/linux-source-*.tar.*'
  tarball=$(ls "$prep"/usr/src/linux-source-*.tar.*)
  log "unpacking $(basename "$tarball")"
  tar -xf "$tarball" -C "$prep/src"
  srcroot=$(find "$prep/src" -mindepth 1 -maxdepth 1 -type d | head -n1)

  # text.bin: *.c/*.h sorted by path (other text kinds after them, only used if ever short)
  list=$prep/text.list
  (cd "$srcroot" && {
    find . -type f \( -name '*.c' -o -name '*.h' \) -print0 | LC_ALL=C sort -z
    find . -type f \( -name '*.rst' -o -name '*.txt' -o -name '*.S' -o -name '*.dts' -o -name '*.dtsi' \) \
      -print0 | LC_ALL=C sort -z
  }) >"$list"
  log "building text.bin (1 GiB of concatenated kernel sources)"
  (set +o pipefail; cd "$srcroot" && xargs -0 cat <"$list" 2>/dev/null | head -c "$GIB") >"$IN/text.bin.tmp"
  [[ $(stat -c %s "$IN/text.bin.tmp") == "$GIB" ]] || die "kernel text files add up to less than 1 GiB"
  local nfiles
  nfiles=$(cd "$srcroot" && xargs -0 stat -c %s <"$list" | awk -v l="$GIB" '!done { s += $1; n++; if (s >= l) { print n; done = 1 } }')

  # tree.tar: the first TREE_FILES regular files in sorted path order
  log "building tree.tar ($TREE_FILES files)"
  (set +o pipefail; cd "$srcroot" && find . -type f -print0 | LC_ALL=C sort -z | head -z -n "$TREE_FILES") \
    >"$prep/tree.list"
  tar -cf "$IN/tree.tar.tmp" -C "$srcroot" --null -T "$prep/tree.list"

  {
    echo "package: $(basename "$deb" .deb)"
    echo "text.bin: first $nfiles *.c/*.h files of $(basename "$tarball") sorted by path, concatenated, cut at $GIB bytes"
    echo "tree.tar: first $TREE_FILES regular files of $(basename "$tarball") sorted by path, $(stat -c %s "$IN/tree.tar.tmp") bytes"
    echo "tree_files: $TREE_FILES"
  } >"$IN/SOURCE"
  mv "$IN/text.bin.tmp" "$IN/text.bin"
  mv "$IN/tree.tar.tmp" "$IN/tree.tar"
  rm -rf "$prep"
}

prepare_inputs() {
  mkdir -p "$IN"
  if [[ ! -f $IN/text.bin || ! -f $IN/tree.tar || ! -f $IN/SOURCE ]] ||
     [[ $(stat -c %s "$IN/text.bin") != "$GIB" ]] ||
     ! grep -qx "tree_files: $TREE_FILES" "$IN/SOURCE"; then
    prepare_kernel_inputs
  fi
  if [[ ! -f $IN/random.bin || $(stat -c %s "$IN/random.bin") != "$GIB" ]]; then
    log "building random.bin (1 GiB from /dev/urandom)"
    head -c "$GIB" /dev/urandom >"$IN/random.bin.tmp"
    mv "$IN/random.bin.tmp" "$IN/random.bin"
  fi
  log "inputs ready: $(tr '\n' ';' <"$IN/SOURCE")"
}

# ---------------------------------------------------------------- targets

# PIDs of running processes whose command line mentions program $1 and mountpoint $2
daemon_pids() {
  local pid cmd
  for pid in $(pgrep -f -- "$1" || true); do
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    [[ $cmd == *"$2"* && $cmd != *mount_throughput* ]] && echo "$pid"
  done
  return 0
}

fuse_program() { case $1 in idcfs|idcfs-enc) basename "$IDCFS" ;; bindfs) echo bindfs ;; esac; }

remember_daemons() {
  local prog pid
  prog=$(fuse_program "$1")
  for pid in $(daemon_pids "$prog" "$MNT"); do DAEMON_PIDS+=("$pid"); done
}

# sample_mem TARGET WORKLOAD: record VmHWM (KiB) of the FUSE daemon(s) serving MNT
sample_mem() {
  local prog pid hwm rss found=0
  prog=$(fuse_program "$1")
  [[ -n $prog ]] || return 0
  for pid in $(daemon_pids "$prog" "$MNT"); do
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || continue
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || continue
    [[ -n $hwm ]] || continue
    found=1
    log "  $1 daemon pid $pid: VmHWM ${hwm} kB, VmRSS ${rss} kB"
    record "$2" "$1" hwm_kib "$hwm"
  done
  [[ $found == 1 ]] || log "  WARNING: no $prog daemon found for $MNT"
}

wait_daemons_gone() { # after unmounting a FUSE fs, let its daemon exit (at most 30 s)
  local prog
  prog=$(fuse_program "$1")
  for _ in $(seq 300); do
    [[ -z $(daemon_pids "$prog" "$MNT") ]] && return 0
    sleep 0.1
  done
  log "  WARNING: $prog daemon for $MNT still running after unmount"
}

mount_target() {
  local t=$1 dir=$WORK/$1
  case $t in
    idcfs) timeout "$OP_TIMEOUT" "$IDCFS" mount "$MNT" --store "$dir/store" ;;
    idcfs-enc) timeout "$OP_TIMEOUT" "$IDCFS" mount "$MNT" --store "$dir/store" --key-file "$dir/key" ;;
    bindfs) bindfs "$dir/src" "$MNT" ;;
  esac
  mountpoint -q "$MNT" || die "$t: $MNT is not mounted"
  remember_daemons "$t"
}

umount_target() {
  local t=$1
  case $t in
    idcfs|idcfs-enc) timeout "$OP_TIMEOUT" "$IDCFS" umount "$MNT" ;;
    bindfs|btrfs) umount "$MNT" ;;
  esac
  ! mountpoint -q "$MNT" || die "$t: $MNT still mounted after unmount"
  case $t in idcfs|idcfs-enc|bindfs) wait_daemons_gone "$t" ;; esac
}

setup_target() {
  local t=$1 dir=$WORK/$1 dev
  rm -rf --one-file-system "$dir"
  mkdir -p "$dir/mnt"
  MNT=$dir/mnt
  case $t in
    idcfs) mkdir -p "$dir/store"; mount_target idcfs ;;
    idcfs-enc) # an encrypted store (key file), otherwise the same as idcfs
      head -c 32 /dev/urandom >"$dir/key"
      "$IDCFS" init --encrypt "$dir/store" --key-file "$dir/key" >/dev/null
      mount_target idcfs-enc ;;
    bindfs) mkdir -p "$dir/src"; mount_target bindfs ;;
    btrfs)
      truncate -s "$BTRFS_IMG" "$dir/disk.img"
      dev=$(losetup --find --show --direct-io=on "$dir/disk.img")
      mkfs.btrfs -q -f "$dev" >/dev/null 2>&1 || die "mkfs.btrfs $dev failed"
      mount -o compress-force=zstd:3 "$dev" "$MNT"
      ;;
    raw) ;;
    *) die "unknown target $t" ;;
  esac
}

teardown_target() {
  local t=$1 dir=$WORK/$1 dev
  case $t in idcfs|idcfs-enc|bindfs|btrfs) umount_target "$t" ;; esac
  if [[ $t == btrfs ]]; then
    for dev in $(losetup -l -n -O NAME -j "$dir/disk.img"); do losetup -d "$dev"; done
  fi
  rm -rf --one-file-system "$dir"
}

# unmount + mount again so that nothing is left in the daemon's or the kernel's caches
remount_target() {
  case $1 in idcfs|idcfs-enc|bindfs) umount_target "$1"; mount_target "$1" ;; esac
}

# stored_bytes TARGET PATH: bytes the target really stores for PATH (see header)
stored_bytes() {
  local t=$1 path=$2 json
  case $t in
    idcfs|idcfs-enc)
      json=$(timeout "$OP_TIMEOUT" "$IDCFS" stats "$MNT" --json)
      log "  $t stats: logical_bytes=$(json_field logical_bytes <<<"$json")," \
        "store du=$(du -s -B1 "$WORK/$t/store" | cut -f1)"
      json_field stored_bytes <<<"$json"
      ;;
    btrfs) sync; compsize -b "$path" | awk '$1 == "TOTAL" { print $3 }' ;;
    bindfs) du -s -B1 "$WORK/bindfs/src/${path#"$MNT"/}" | cut -f1 ;;
    raw) du -s -B1 "$path" | cut -f1 ;;
  esac
}

verify_failed() { VERIFY_FAILURES=$((VERIFY_FAILURES + 1)); log "  VERIFY FAILED: $*"; }

# ---------------------------------------------------------------- workloads

bench_file() { # bench_file TARGET text|random
  local t=$1 wl=$2 src=$IN/$2.bin bytes=$((SIZE_MIB * 1048576)) t0 t1 size sb
  sync
  cat "$src" >/dev/null # input from page cache, not from disk
  t0=$(now)
  dd if="$src" of="$MNT/big" bs=1M count="$SIZE_MIB" iflag=fullblock conv=fsync status=none
  t1=$(now)
  record "$wl" "$t" write_mbps "$(rate "$bytes" "$t0" "$t1")"
  sample_mem "$t" "$wl"
  sb=$(stored_bytes "$t" "$MNT/big")
  record "$wl" "$t" stored_mib "$(mib "$sb")"

  remount_target "$t"
  drop_caches
  t0=$(now)
  dd if="$MNT/big" of=/dev/null bs=1M status=none
  t1=$(now)
  record "$wl" "$t" read_mbps "$(rate "$bytes" "$t0" "$t1")"
  size=$(stat -c %s "$MNT/big")
  [[ $size == "$bytes" ]] || verify_failed "$t $wl: size $size, expected $bytes"
  if [[ $VERIFY == 1 ]] && ! cmp -s -n "$bytes" "$src" "$MNT/big"; then
    verify_failed "$t $wl: content of $MNT/big differs from $src"
  fi
  sample_mem "$t" "$wl"
}

bench_tree() { # bench_tree TARGET
  local t=$1 t0 t1 n sb diffs
  mkdir "$MNT/tree"
  cat "$IN/tree.tar" >/dev/null
  sync
  t0=$(now)
  tar -xf "$IN/tree.tar" -C "$MNT/tree"
  sync
  t1=$(now)
  record tree "$t" untar_s "$(secs "$t0" "$t1")"
  sample_mem "$t" tree
  sb=$(stored_bytes "$t" "$MNT/tree")
  record tree "$t" stored_mib "$(mib "$sb")"
  n=$(find "$MNT/tree" -type f | wc -l)
  [[ $n == "$TREE_FILES" ]] || verify_failed "$t tree: $n files, expected $TREE_FILES"
  if [[ $VERIFY == 1 ]]; then
    # content, size, type and permission differences fail; a wrong mtime is only noted
    # (bindfs 1.14 does not apply tar's mtimes)
    diffs=$(tar -df "$IN/tree.tar" -C "$MNT/tree" 2>&1 || true)
    n=$(grep -c 'Mod time differs' <<<"$diffs" || true)
    [[ $n == 0 ]] || log "  note: $t tree: $n files with a different mtime than in the tarball"
    if grep -v 'Mod time differs' <<<"$diffs" | grep -q .; then
      grep -v 'Mod time differs' <<<"$diffs" | head -n 20 >>"$LOG"
      verify_failed "$t tree: tar -d found differences (first ones in $LOG)"
    fi
  fi
  t0=$(now)
  rm -rf "$MNT/tree"
  sync
  t1=$(now)
  record tree "$t" rm_s "$(secs "$t0" "$t1")"
  sample_mem "$t" tree
}

# ---------------------------------------------------------------- report

# median (or max) of the samples of one workload/target/metric, "" if none
stat_of() { # stat_of median|max WORKLOAD TARGET METRIC
  awk -F'\t' -v w="$2" -v t="$3" -v m="$4" '$2 == w && $3 == t && $4 == m { print $5 }' "$TSV" |
    sort -g | awk -v how="$1" '
      { v[NR] = $1 }
      END {
        if (NR == 0) exit
        if (how == "max") printf "%s", v[NR]
        else if (NR % 2) printf "%s", v[(NR + 1) / 2]
        else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2
      }'
}

fmt() { # fmt VALUE KIND
  [[ -n $1 ]] || { printf '—'; return; }
  case $2 in
    speed|size) printf '%.1f' "$1" ;;
    time) printf '%.2f' "$1" ;;
    mem) awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }' ;;
  esac
}

ratio() { # ratio IDCFS OTHER KIND: >1 = idcfs faster (speed, time); size: idcfs/other
  [[ -n $1 && -n $2 ]] || { printf '—'; return; }
  case $3 in
    speed|size) awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else printf "—" }' ;;
    time) awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.2fx", b / a; else printf "—" }' ;;
    *) printf '—' ;;
  esac
}

report() {
  local rows wl metric label unit kind how t cells human
  local -A val
  local ntree
  ntree=$(awk -F': ' '$1 == "tree_files" { print $2 }' "$IN/SOURCE")
  # workload metric label unit kind
  rows="text write_mbps write_text MB/s speed
text read_mbps cold_read_text MB/s speed
text stored_mib stored_text MiB size
random write_mbps write_random MB/s speed
random read_mbps cold_read_random MB/s speed
random stored_mib stored_random MiB size
tree untar_s untar_${ntree}_files s time
tree rm_s rm_-rf_tree s time
tree stored_mib stored_tree MiB size
text hwm_kib daemon_VmHWM_text MiB mem
random hwm_kib daemon_VmHWM_random MiB mem
tree hwm_kib daemon_VmHWM_tree MiB mem"

  {
    echo "## idcfs mount throughput ($(date -u +%Y-%m-%d))"
    echo
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)," \
      "kernel $(uname -r); RUNS=$RUNS (median shown; memory: max); $SIZE_MIB MiB per file workload."
    echo "Data: $(grep -E '^(package|text.bin|tree.tar):' "$IN/SOURCE" | tr '\n' ';' | sed 's/;$//; s/;/; /g')."
    echo "btrfs: loop device (direct-io) over a sparse $BTRFS_IMG file, -o compress-force=zstd:3; raw: $(stat -f -c %T "$BENCH_DIR") directory."
    echo
    printf '| %s |' "metric"
    for t in $TARGETS; do printf ' %s |' "$t"; done
    printf ' idcfs vs btrfs | idcfs vs bindfs |\n'
    printf '|---|'
    for t in $TARGETS; do printf '%s' '---:|'; done
    printf '%s\n' '---:|---:|'
  } >"$MD"

  echo
  echo "=== summary (RUNS=$RUNS; medians; ratios: speed = idcfs/other, time = other/idcfs, size = idcfs/other) ==="
  while read -r wl metric label unit kind; do
    how=median; [[ $kind == mem ]] && how=max
    val=()
    for t in $TARGETS; do val[$t]=$(stat_of "$how" "$wl" "$t" "$metric"); done
    # skip rows without any sample (e.g. daemon memory when no FUSE target ran)
    [[ -n $(for t in $TARGETS; do printf '%s' "${val[$t]}"; done) ]] || continue
    label=${label//_/ }
    cells="| $label ($unit) |"
    human="$label:"
    for t in $TARGETS; do
      cells+=" $(fmt "${val[$t]}" "$kind") |"
      [[ -n ${val[$t]} ]] || continue
      human+=" $t $(fmt "${val[$t]}" "$kind") $unit"
      if [[ $t == btrfs || $t == bindfs ]] && [[ -n ${val[idcfs]:-} && $kind != mem ]]; then
        human+=" ($(ratio "${val[idcfs]}" "${val[$t]}" "$kind"))"
      fi
      human+=","
    done
    if [[ $kind == mem ]]; then
      cells+=" — | — |"
    else
      cells+=" $(ratio "${val[idcfs]:-}" "${val[btrfs]:-}" "$kind") | $(ratio "${val[idcfs]:-}" "${val[bindfs]:-}" "$kind") |"
    fi
    echo "${human%,}"
    echo "$cells" >>"$MD"
  done <<<"$rows"
  {
    echo
    echo "Ratios: throughput and time columns are speedups of idcfs (>1 = idcfs faster); stored-size columns are idcfs size / other size (<1 = idcfs smaller)."
    echo "Stored size: idcfs = stats stored_bytes (whole store); btrfs = compsize disk usage (data extents only); bindfs/raw = du on the host fs."
    echo "Daemon VmHWM: peak resident memory of the FUSE daemon (idcfs; bindfs for comparison)."
    [[ $VERIFY_FAILURES == 0 ]] || echo "**WARNING: $VERIFY_FAILURES data verification failures in this run (see bench.log).**"
  } >>"$MD"
  echo
  cat "$MD"
  [[ $VERIFY_FAILURES == 0 ]] || log "WARNING: $VERIFY_FAILURES verification failures"
}

# ---------------------------------------------------------------- cleanup

cleanup() {
  local rc=$? m dev pid busy=0
  set +e
  trap - EXIT INT TERM
  for m in "$WORK"/*/mnt; do
    { [[ -d $m ]] && mountpoint -q "$m"; } || continue
    log "cleanup: unmounting $m"
    if [[ $m == "$WORK/idcfs/mnt" && -x $IDCFS ]]; then timeout 60 "$IDCFS" umount "$m"; fi
    mountpoint -q "$m" && umount "$m"
    mountpoint -q "$m" && umount -l "$m"
    mountpoint -q "$m" && busy=1
  done
  if [[ -e $WORK/btrfs/disk.img ]]; then
    for dev in $(losetup -l -n -O NAME -j "$WORK/btrfs/disk.img"); do
      log "cleanup: detaching $dev"; losetup -d "$dev"
    done
  fi
  for pid in "${DAEMON_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "cleanup: stopping leftover daemon $pid"; kill "$pid"; fi
  done
  [[ $busy == 1 || ! -d $WORK ]] || rm -rf --one-file-system "$WORK"
  exit "$rc"
}

# ---------------------------------------------------------------- main

main() {
  [[ $(id -u) == 0 ]] || { echo "must run as root (mount, losetup, drop_caches)" >&2; exit 1; }
  [[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 1; }
  [[ $SIZE_MIB =~ ^[1-9][0-9]*$ && $SIZE_MIB -le 1024 ]] || { echo "SIZE_MIB must be 1..1024" >&2; exit 1; }
  local t wl
  for t in $TARGETS; do
    case $t in
      idcfs|idcfs-enc) [[ -x $IDCFS ]] || { echo "idcfs binary $IDCFS not found: cargo build --release, or set IDCFS" >&2; exit 1; }
             [[ -e /dev/fuse ]] || { echo "/dev/fuse missing" >&2; exit 1; } ;;
      bindfs) command -v bindfs >/dev/null || { echo "bindfs missing: apt-get install bindfs" >&2; exit 1; } ;;
      btrfs) for c in mkfs.btrfs compsize losetup; do
               command -v "$c" >/dev/null || { echo "$c missing: apt-get install btrfs-progs btrfs-compsize" >&2; exit 1; }
             done ;;
      raw) ;;
      *) echo "unknown target '$t' (known: idcfs idcfs-enc bindfs btrfs raw)" >&2; exit 1 ;;
    esac
  done
  for wl in $WORKLOADS; do
    case $wl in text|random|tree) ;; *) echo "unknown workload '$wl' (known: text random tree)" >&2; exit 1 ;; esac
  done

  mkdir -p "$BENCH_DIR" "$WORK"
  : >"$LOG"
  : >"$TSV"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  log "idcfs mount benchmark: TARGETS='$TARGETS' WORKLOADS='$WORKLOADS' RUNS=$RUNS BENCH_DIR=$BENCH_DIR"
  prepare_inputs

  for RUN in $(seq 1 "$RUNS"); do
    for wl in $WORKLOADS; do
      for t in $TARGETS; do
        log "run $RUN/$RUNS: $wl on $t"
        setup_target "$t"
        case $wl in
          text|random) bench_file "$t" "$wl" ;;
          tree) bench_tree "$t" ;;
        esac
        teardown_target "$t"
      done
    done
  done
  report
}

main "$@"

"""Mean MS-SSIM per PSNR target of what `lossy_rd` served (issue 11's rate-distortion table).

usage: RD_OUT=OUT cargo run --release --example lossy_rd -- rd DIR avif
       python3 benches/ms_ssim.py DIR OUT
OUT holds NAME.TARGET.png for every photo NAME of DIR; MS-SSIM (RGB channels averaged; grey
pictures as RGB) is models/hp-dct-v2/rd.py's, so the figures compare with its tables. Its 5
scales need at least 176 pixels on each side: smaller pictures are skipped and counted.
Needs numpy and PIL.
"""
import collections
import glob
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "rd", os.path.join(HERE, "..", "models", "hp-dct-v2", "rd.py")
)
rd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rd)


def main(orig, out):
    by_target = collections.defaultdict(list)
    skipped = collections.Counter()
    for p in sorted(glob.glob(os.path.join(out, "*.png"))):
        name, target, _ = os.path.basename(p).rsplit(".", 2)
        a = rd.load(os.path.join(orig, name))
        if min(a.shape[:2]) < 176:
            skipped[float(target)] += 1
            continue
        by_target[float(target)].append(rd.ms_ssim(a, rd.load(p)))
    for t in sorted(by_target):
        v = by_target[t]
        print(
            f"{t:g} dB\t{len(v)} files ({skipped[t]} too small)\t"
            f"MS-SSIM mean {sum(v) / len(v):.4f}\tmin {min(v):.4f}"
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

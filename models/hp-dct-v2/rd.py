"""Rate-distortion table: the learned codec against JPEG, WebP, AVIF and JPEG XL.

usage: rd.py PNG_DIR LEARNED_TSV LEARNED_OUT_DIR [--jpeg-only]
(hp-int8-v1's rd.py with the learned rows named hp-dct-v2; --jpeg-only skips WebP, AVIF and
JPEG XL, whose rows are in BENCHMARKS.md 8.4.)
- PNG_DIR: the RGB test photos (none of them in the training set);
- LEARNED_TSV / LEARNED_OUT_DIR: the output and the decoded PNGs of
  `cargo run --release --example learned_rd -- PNG_DIR LEARNED_OUT_DIR > LEARNED_TSV`.
Per codec and setting: bpp = total compressed bits / total pixels; PSNR (RGB, 8-bit) and
MS-SSIM (RGB channels averaged; Wang et al. 2003: 11-tap Gaussian window, sigma 1.5, 5 scales
with the standard weights) averaged over the photos; encode and decode time per Mpixel, one
thread (tools: wall time including process start; learned: from the TSV). Then, for each
learned point, JPEG's PSNR at the same bpp (linear interpolation on JPEG's curve).
Tools (Debian 12): cjpeg/djpeg (libjpeg-turbo-progs), cwebp/dwebp (webp), avifenc/avifdec
(libavif-bin, aom), cjxl/djxl (libjxl-tools). Needs numpy and PIL.
"""
import glob
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def gauss_filter(x):
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    h, w = x.shape[0] - 10, x.shape[1] - 10
    x = sum(g[k] * x[k : k + h] for k in range(11))
    return sum(g[k] * x[:, k : k + w] for k in range(11))


def ssim_cs(a, b):
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ma, mb = gauss_filter(a), gauss_filter(b)
    va = gauss_filter(a * a) - ma * ma
    vb = gauss_filter(b * b) - mb * mb
    cov = gauss_filter(a * b) - ma * mb
    cs = (2 * cov + c2) / (va + vb + c2)
    ssim = (2 * ma * mb + c1) / (ma * ma + mb * mb + c1) * cs
    return ssim.mean(), cs.mean()


def ms_ssim_channel(a, b):
    vals = []
    for i in range(5):
        s, cs = ssim_cs(a, b)
        vals.append(s if i == 4 else cs)
        if i < 4:
            h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
            a = a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
            b = b[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    vals = np.maximum(np.array(vals), 0)
    return float(np.prod(vals**WEIGHTS))


def ms_ssim(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.mean([ms_ssim_channel(a[..., c], b[..., c]) for c in range(3)]))


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255 * 255 / mse)


def load(p):
    return np.asarray(Image.open(p).convert("RGB"))


def run(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


CODECS = [
    ("JPEG (cjpeg -optimize)", [5, 10, 15, 20, 30, 40, 50, 75, 90], lambda s, o, q: ["cjpeg", "-quality", str(q), "-optimize", "-outfile", o, s], lambda i, o: ["djpeg", "-outfile", o, i], ".jpg", ".ppm"),
    ("WebP (cwebp -m 4)", [10, 30, 50, 75, 90], lambda s, o, q: ["cwebp", "-quiet", "-q", str(q), "-m", "4", s, "-o", o], lambda i, o: ["dwebp", "-quiet", "-ppm", i, "-o", o], ".webp", ".ppm"),
    ("AVIF (avifenc -s 6, 4:2:0)", [50, 42, 34, 26, 18], lambda s, o, q: ["avifenc", "-j", "1", "-s", "6", "-y", "420", "--min", str(q), "--max", str(q), s, o], lambda i, o: ["avifdec", "-j", "1", i, o], ".avif", ".png"),
    ("JPEG XL (cjxl -e 7)", [6.0, 4.0, 2.5, 1.5, 1.0], lambda s, o, q: ["cjxl", "-d", str(q), "-e", "7", "--num_threads=0", s, o], lambda i, o: ["djxl", "--num_threads=0", i, o], ".jxl", ".png"),
]


def main():
    d, tsv, ldir = sys.argv[1], sys.argv[2], sys.argv[3]
    files = sorted(glob.glob(os.path.join(d, "*.png")))
    origs = {os.path.basename(f): load(f) for f in files}
    npix = sum(a.shape[0] * a.shape[1] for a in origs.values())
    tmp = tempfile.mkdtemp(prefix="idcfs-rd-")
    ppm = {}
    for f in files:
        p = os.path.join(tmp, os.path.basename(f) + ".ppm")
        Image.fromarray(origs[os.path.basename(f)]).save(p)
        ppm[os.path.basename(f)] = p
    rows = {}
    codecs = CODECS[:1] if "--jpeg-only" in sys.argv else CODECS
    for name, qs, enc, dec, ext, back_ext in codecs:
        for q in qs:
            bits, ps, ss, te, td = 0, [], [], 0.0, 0.0
            for n, a in origs.items():
                src = os.path.join(d, n) if "avif" in name.lower() else ppm[n]
                out = os.path.join(tmp, "x" + ext)
                back = os.path.join(tmp, "back" + back_ext)
                te += run(enc(src, out, q))
                bits += os.path.getsize(out) * 8
                td += run(dec(out, back))
                b = load(back)
                ps.append(psnr(a, b))
                ss.append(ms_ssim(a, b))
            rows.setdefault(name, []).append((str(q), bits / npix, np.mean(ps), np.mean(ss), te / npix * 1e6, td / npix * 1e6))
    learned = {}
    for line in open(tsv):
        n, m, size, pix, te, td = line.split("\t")
        learned.setdefault(int(m), []).append((n, int(size), int(pix), float(te), float(td)))
    for m in sorted(learned):
        items = learned[m]
        ps, ss = [], []
        for n, size, pix, te, td in items:
            b = load(os.path.join(ldir, f"{n}.m{m}.png"))
            ps.append(psnr(origs[n], b))
            ss.append(ms_ssim(origs[n], b))
        bits = sum(i[1] for i in items) * 8
        rows.setdefault("learned hp-dct-v2 (image-learned)", []).append((f"m={m} (step {m / 4:g})", bits / npix, np.mean(ps), np.mean(ss), sum(i[3] for i in items) / npix * 1e6, sum(i[4] for i in items) / npix * 1e6))
    print(f"{len(files)} photos, {npix / 1e6:.3f} Mpixel\n")
    print("| codec | setting | bpp | PSNR (dB) | MS-SSIM | encode s/Mpixel | decode s/Mpixel |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, rs in rows.items():
        for q, bpp, p, s, te, td in sorted(rs, key=lambda r: r[1]):
            print(f"| {name} | {q} | {bpp:.3f} | {p:.2f} | {s:.4f} | {te:.2f} | {td:.2f} |")
    jp = sorted((r[1], r[2]) for r in rows[CODECS[0][0]])
    print("\nLearned against JPEG at equal bpp (JPEG PSNR interpolated on its curve):\n")
    print("| learned setting | bpp | learned PSNR | JPEG PSNR at that bpp | difference (dB) |")
    print("|---|---:|---:|---:|---:|")
    for q, bpp, p, s, te, td in sorted(rows.get("learned hp-dct-v2 (image-learned)", []), key=lambda r: r[1]):
        if jp[0][0] <= bpp <= jp[-1][0]:
            j = float(np.interp(bpp, [x for x, _ in jp], [y for _, y in jp]))
            print(f"| {q} | {bpp:.3f} | {p:.2f} | {j:.2f} | {p - j:+.2f} |")
        else:
            print(f"| {q} | {bpp:.3f} | {p:.2f} | outside JPEG's measured range | |")


if __name__ == "__main__":
    main()

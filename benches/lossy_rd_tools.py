"""Rate-distortion of the classical image codecs' reference tools on a directory of PNGs.

For each codec and quality setting: total compressed bytes -> bits per pixel, and mean PSNR
(over every sample, 8-bit) of the decoded pictures against the originals, with encode and
decode wall time per megapixel (each tool run single-threaded where it has the option).
Tools (Debian 12): cjpeg/djpeg (libjpeg-turbo-progs), cwebp/dwebp (webp), avifenc/avifdec
(libavif-bin, aom), cjxl/djxl (libjxl-tools), pngtopnm (netpbm). Alpha is dropped (pngtopnm)
so every codec sees the same RGB or grey samples.

The PNG originals must have no alpha channel (the photos used do not).

Usage: python3 benches/lossy_rd_tools.py PNG_DIR   (needs numpy)
"""
import glob, os, subprocess, sys, tempfile, time
import numpy as np

def read_pnm(path):
    d = open(path, "rb").read()
    fields, pos = [], 2
    while len(fields) < 3:
        while d[pos:pos+1].isspace(): pos += 1
        if d[pos:pos+1] == b"#":
            while d[pos:pos+1] not in (b"\n", b"\r"): pos += 1
            continue
        s = pos
        while d[pos:pos+1].isdigit(): pos += 1
        fields.append(int(d[s:pos]))
    pos += 1
    w, h, maxval = fields
    ch = 3 if d[:2] == b"P6" else 1
    dt = np.uint8 if maxval < 256 else np.dtype(">u2")
    a = np.frombuffer(d[pos:], dtype=dt, count=w*h*ch).reshape(h, w, ch)
    if maxval >= 256: a = (a.astype(np.float64) * 255 / maxval).round().astype(np.uint8)
    return a

def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 * 255 / mse)

def run(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t

CODECS = {
    "jpeg (cjpeg -optimize)": ([50, 75, 90, 95], lambda src, out, q: ["cjpeg", "-quality", str(q), "-optimize", "-outfile", out, src], lambda inp, out: ["djpeg", "-outfile", out, inp], ".jpg"),
    "webp (cwebp -m 4)": ([50, 75, 90, 100], lambda src, out, q: ["cwebp", "-quiet", "-q", str(q), "-m", "4", src, "-o", out], lambda inp, out: ["dwebp", "-quiet", "-ppm", inp, "-o", out], ".webp"),
    # avifenc 0.11 reads PNG (not PNM) and avifdec writes PNG: run through PNG both ways.
    "avif (avifenc -s 6, 4:4:4)": ([30, 20, 12, 6], lambda src, out, q: ["avifenc", "-j", "1", "-s", "6", "-y", "444", "--min", str(q), "--max", str(q), src, out], lambda inp, out: ["sh", "-c", f"avifdec -j 1 {inp} {out}.png && pngtopnm {out}.png > {out}"], ".avif"),
    "jpeg xl (cjxl -e 7)": ([2.0, 1.0, 0.5, 0.3], lambda src, out, q: ["cjxl", "-d", str(q), "-e", "7", "--num_threads=0", src, out], lambda inp, out: ["djxl", "--num_threads=0", inp, out], ".jxl"),
}

def main(d):
    files = sorted(glob.glob(os.path.join(d, "*.png")))
    tmp = tempfile.mkdtemp(prefix="idcfs-rd-")
    origs = {}
    for f in files:
        pnm = os.path.join(tmp, os.path.basename(f) + (".pnm"))
        with open(pnm, "wb") as o:
            subprocess.run(["pngtopnm", f], check=True, stdout=o, stderr=subprocess.DEVNULL)
        a = read_pnm(pnm)
        # cjpeg/cwebp/avifenc/cjxl take PNM/PPM; give every tool the same file.
        ppm = pnm if a.shape[2] == 3 else pnm
        origs[f] = (ppm, a)
    pixels = sum(a.shape[0] * a.shape[1] for _, a in origs.values())
    print(f"{len(files)} files, {pixels/1e6:.2f} Mpixel")
    print("| codec | setting | bpp | mean PSNR (dB) | min PSNR | encode s/Mpixel | decode s/Mpixel |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (qs, enc, dec, ext) in CODECS.items():
        for q in qs:
            size, ps, te, td = 0, [], 0.0, 0.0
            for f, (src, a) in origs.items():
                out = os.path.join(tmp, "x" + ext)
                back = os.path.join(tmp, "x.ppm" if a.shape[2] == 3 else "x.pgm")
                te += run(enc(f if name.startswith("avif") else src, out, q))
                size += os.path.getsize(out)
                if name.startswith("webp") and a.shape[2] == 1:
                    back = os.path.join(tmp, "x.ppm")
                td += run(dec(out, back))
                b = read_pnm(back)
                if b.shape[2] != a.shape[2]:
                    b = b[:, :, :1] if a.shape[2] == 1 else np.repeat(b, 3, axis=2)
                ps.append(psnr(a, b))
            mp = pixels / 1e6
            print(f"| {name} | {q} | {size*8/pixels:.3f} | {np.mean(ps):.2f} | {min(ps):.2f} | {te/mp:.2f} | {td/mp:.2f} |")

if __name__ == "__main__":
    main(sys.argv[1])

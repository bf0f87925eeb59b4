"""Quantize the decoder side of hp-int8-v1 to integers, fine-tune it quantization-aware, and
export the model files idcfs loads.

usage: export.py DATA_DIR FLOAT.pt OUT_DIR QAT_SECONDS

Integer scheme (what makes decoding exact on every machine, see README.md):
- every h_s/g_s layer takes integer activations a (real value a * 2^-ea), has integer
  weights w (real w * 2^-fw[c], a power-of-two scale per output channel) and an integer
  bias B (scale 2^-(ea+fw[c]), rounding offset folded in), and computes
  out = clip(floor((sum w*a + B) * 2^-k[c]), lo, hi) with k[c] = ea + fw[c] - eo;
- fw[c] is lowered until sum|w| * max|a| + |B| < 2^24 for each output channel: every
  product and partial sum is then an integer that float32 holds exactly, so any summation
  order (threads, SIMD, FMA, GEMM blocking) gives the same result; the multiply by 2^-k,
  Floor and Clip are exact too. The check runs here and again in Rust when loading.
- ReLU layers clip to [0, 255]; h_s's last layer outputs the scale index, clipped to
  [0, 63]; g_s's last layer outputs 8-bit pixels, clipped to [0, 255].

Files written to OUT_DIR: enc.onnx (float analysis: x in [0,1] -> y, z), hs.onnx and
gs.onnx (integer-valued float32 graphs), int.bin (the same integers for the Rust reference,
the entropy tables). See FORMAT.md / src/codec/learned_image.rs for int.bin's layout.
"""
import math
import struct
import sys
import time
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Net, LEVELS, SIGMA_MIN, LOG_R, gauss_likelihood, sigma_of_index, ste_round
import train

W_BITS = 8  # |w| <= 127 before the 2^24 bound lowers it
A_MAX = 255
T_MAX = 1023  # |q * m| bound of g_s's input (y real = t / 4)
Z_MAX = 127  # |z| bound of h_s's input
E_IN_GS = 2
PREC = 24  # fixed-point probability precision of the entropy tables
LIMIT = 1 << 24


def ste_floor(x):
    return x + (torch.floor(x) - x).detach()


class QLayer:
    """Exponents of one quantized layer (fixed after calibration)."""

    def __init__(self, layer, transposed, ea, eo, lo, hi, amax_in, out_scale=1.0):
        self.layer, self.transposed = layer, transposed
        self.ea, self.eo, self.lo, self.hi, self.amax_in = ea, eo, lo, hi, amax_in
        self.out_scale = out_scale  # the real output is multiplied by this first (255 for pixels)
        self.fw = None

    def weight(self):
        w = self.layer.weight * self.out_scale
        return w.transpose(0, 1) if self.transposed else w  # [cout, cin, k, k]

    def choose_fw(self):
        w = self.weight().detach().double()
        cout = w.shape[0]
        fw = []
        for c in range(cout):
            m = w[c].abs().max().item()
            f = math.floor(math.log2(127 / max(m, 1e-12)))
            while True:
                wi = torch.round(w[c] * 2.0**f)
                b = self.bias_int_c(c, f)
                if wi.abs().sum().item() * self.amax_in + abs(b) < LIMIT:
                    break
                f -= 1
            fw.append(f)
        self.fw = fw

    def k(self, c, f=None):
        return self.ea + (self.fw[c] if f is None else f) - self.eo

    def bias_int_c(self, c, f):
        b = (self.layer.bias[c] * self.out_scale).item()
        k = self.ea + f - self.eo
        return round(b * 2.0 ** (self.ea + f)) + (1 << (k - 1) if k >= 1 else 0)

    def fake(self, x):
        """Quantization-aware forward in real units (STE), x already quantized."""
        fw = torch.tensor(self.fw, dtype=x.dtype).view(-1, 1, 1, 1)
        w = self.layer.weight * self.out_scale
        if self.transposed:
            wq = ste_round(w * (2.0**fw).transpose(0, 1)) / (2.0**fw).transpose(0, 1)
            y = F.conv_transpose2d(x, wq, None, self.layer.stride, self.layer.padding, self.layer.output_padding)
        else:
            wq = ste_round(w * 2.0**fw) / 2.0**fw
            y = F.conv2d(x, wq, None, self.layer.stride, self.layer.padding)
        y = y + (self.layer.bias * self.out_scale).view(1, -1, 1, 1)
        s = 2.0**self.eo
        return torch.clamp(ste_floor(y * s + 0.5), self.lo, self.hi) / s

    def ints(self):
        w = self.weight().detach().double()
        cout = w.shape[0]
        wi = torch.stack([torch.round(w[c] * 2.0 ** self.fw[c]) for c in range(cout)]).long()
        b = [self.bias_int_c(c, self.fw[c]) for c in range(cout)]
        k = [self.k(c) for c in range(cout)]
        for c in range(cout):
            assert wi[c].abs().sum().item() * self.amax_in + abs(b[c]) < LIMIT
        return wi, b, k


def calibrate(net, imgs, rng):
    """Largest activation (99.99th percentile) after each ReLU of h_s and g_s."""
    hs_max, gs_max = [[], []], [[], [], []]
    with torch.no_grad():
        for _ in range(12):
            x = train.batch(imgs, rng)
            y = net.g_a(x)
            z_hat = torch.round(net.h_a(torch.abs(y)))
            a = z_hat
            for i in range(2):
                a = F.relu(net.h_s[i](a))
                hs_max[i].append(torch.quantile(a.flatten()[::7], 0.9999).item())
            for m in (2, 4, 8):
                a = torch.round(y / (m / 4)) * (m / 4)
                for i in range(3):
                    a = F.relu(net.g_s[i](a))
                    gs_max[i].append(torch.quantile(a.flatten()[::7], 0.9999).item())
    e = lambda v: math.floor(math.log2(A_MAX / max(max(v), 1e-6)))
    return [e(v) for v in hs_max], [e(v) for v in gs_max]


def build_q(net, hs_e, gs_e):
    hs = [
        QLayer(net.h_s[0], True, 0, hs_e[0], 0, A_MAX, Z_MAX),
        QLayer(net.h_s[1], True, hs_e[0], hs_e[1], 0, A_MAX, A_MAX),
        QLayer(net.h_s[2], False, hs_e[1], 0, 0, LEVELS - 1, A_MAX),
    ]
    gs = [
        QLayer(net.g_s[0], True, E_IN_GS, gs_e[0], 0, A_MAX, T_MAX),
        QLayer(net.g_s[1], True, gs_e[0], gs_e[1], 0, A_MAX, A_MAX),
        QLayer(net.g_s[2], True, gs_e[1], gs_e[2], 0, A_MAX, A_MAX),
        QLayer(net.g_s[3], True, gs_e[2], 0, 0, 255, A_MAX, out_scale=255.0),
    ]
    for q in hs + gs:
        q.choose_fw()
    return hs, gs


def qat_loss(net, hs, gs, x, delta, lam):
    y = net.g_a(x)
    z = net.h_a(torch.abs(y))
    z_hat = torch.clamp(ste_round(z), -Z_MAX, Z_MAX)
    sig_z = torch.exp(net.z_log_sigma).view(1, -1, 1, 1)
    lz = gauss_likelihood(z + torch.empty_like(z).uniform_(-0.5, 0.5), sig_z, 1.0)
    a = z_hat
    for q in hs:
        a = q.fake(a)
    sig = sigma_of_index(a)
    ly = gauss_likelihood(y + delta * torch.empty_like(y).uniform_(-0.5, 0.5), sig, delta)
    a = ste_round(y / delta) * delta
    for q in gs:
        a = q.fake(a)
    x_hat = a / 255.0
    npix = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = (-torch.log2(ly).sum() - torch.log2(lz).sum()) / npix
    mse = torch.mean((x_hat - x) ** 2)
    return bpp + lam * 255**2 * mse, bpp, mse


class IntNet(nn.Module):
    """The integer-valued float32 graph exported to ONNX (one per decoder network)."""

    def __init__(self, qs):
        super().__init__()
        self.convs = nn.ModuleList()
        self.meta = []
        for q in qs:
            wi, b, k = q.ints()
            l = q.layer
            if q.transposed:
                c = nn.ConvTranspose2d(l.in_channels, l.out_channels, l.kernel_size, l.stride, l.padding, l.output_padding)
                c.weight.data = wi.transpose(0, 1).float().contiguous()
            else:
                c = nn.Conv2d(l.in_channels, l.out_channels, l.kernel_size, l.stride, l.padding)
                c.weight.data = wi.float()
            c.bias.data = torch.tensor(b, dtype=torch.float32)
            self.convs.append(c)
            self.register_buffer(f"s{len(self.meta)}", torch.tensor([2.0 ** -kk for kk in k], dtype=torch.float32).view(1, -1, 1, 1))
            self.meta.append((q.lo, q.hi))

    def forward(self, x):
        for i, c in enumerate(self.convs):
            lo, hi = self.meta[i]
            x = torch.clamp(torch.floor(c(x) * getattr(self, f"s{i}")), lo, hi)
        return x


class Enc(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.g_a, self.h_a = net.g_a, net.h_a

    def forward(self, x):
        y = self.g_a(x)
        return y, self.h_a(torch.abs(y))


def gauss_table(sigma):
    """Fixed-point (2^PREC) probabilities of the integers -R..R under N(0, sigma), tails
    folded into the end symbols, every probability >= 1."""
    r = max(1, min(255, math.ceil(sigma * 10)))
    ks = np.arange(-r, r + 1)
    cdf = lambda v: 0.5 * (1 + np.vectorize(math.erf)(v / (sigma * math.sqrt(2))))
    p = cdf(ks + 0.5) - cdf(ks - 0.5)
    p[0] += cdf(-r - 0.5)
    p[-1] += 1 - cdf(r + 0.5)
    total = 1 << PREC
    q = np.maximum(1, np.floor(p * (total - len(p)))).astype(np.int64)
    q[np.argmax(q)] += total - q.sum()
    assert q.min() >= 1 and q.sum() == total
    return r, q


def write_int_bin(path, net, hs, gs):
    out = bytearray(b"IDCHP1\0\0")
    u32 = lambda v: out.extend(struct.pack("<I", v))
    i32 = lambda v: out.extend(struct.pack("<i", v))
    u32(LEVELS)
    for i in range(LEVELS):
        r, q = gauss_table(SIGMA_MIN * math.exp(i * LOG_R))
        u32(r)
        for v in q:
            u32(int(v))
    zs = torch.exp(net.z_log_sigma).detach()
    zi = [int(min(LEVELS - 1, max(0, round(math.log(s / SIGMA_MIN) / LOG_R)))) for s in zs.tolist()]
    u32(len(zi))
    out.extend(bytes(zi))
    # Scale-index offset for delta = m/4: sigma/delta is index h - OFF[m].
    u32(7)
    for m in range(2, 9):
        i32(round(math.log(m / 4) / LOG_R))
    i32(T_MAX)
    i32(Z_MAX)
    u32(len(hs) + len(gs))
    for net_id, qs in ((0, hs), (1, gs)):
        for q in qs:
            wi, b, k = q.ints()
            l = q.layer
            out.extend(bytes([net_id, 1 if q.transposed else 0]))
            for v in (l.in_channels, l.out_channels, l.kernel_size[0], l.stride[0], l.padding[0], l.output_padding[0] if q.transposed else 0):
                u32(v)
            i32(q.lo)
            i32(q.hi)
            for v in k:
                i32(v)
            for v in b:
                i32(v)
            for v in wi.flatten().tolist():  # [cout, cin, k, k]
                i32(v)
    open(path, "wb").write(bytes(out))
    return zi


def main():
    torch.set_num_threads(2)
    data_dir, ckpt, out_dir, qat_seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    net = Net()
    net.load_state_dict(torch.load(ckpt))
    imgs = train.load(data_dir)
    rng = random.Random(7)
    torch.manual_seed(7)
    hs_e, gs_e = calibrate(net, imgs, rng)
    print("activation exponents", hs_e, gs_e, flush=True)
    hs, gs = build_q(net, hs_e, gs_e)
    opt = torch.optim.Adam(net.parameters(), lr=5e-5)
    t0, step = time.time(), 0
    while time.time() - t0 < qat_seconds:
        m = rng.randrange(2, 9)
        delta = m / 4
        loss, bpp, mse = qat_loss(net, hs, gs, train.batch(imgs, rng), delta, train.LAMBDA0 / delta**2)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            print(f"qat step {step} bpp {bpp.item():.3f} psnr {10 * math.log10(1 / mse.item()):.2f}", flush=True)
        if step % 50 == 0:
            for q in hs + gs:
                q.choose_fw()  # keep the 2^24 bound as weights move
    for q in hs + gs:
        q.choose_fw()
    net.eval()
    torch.save(net.state_dict(), out_dir + "/qat.pt")
    zi = write_int_bin(out_dir + "/int.bin", net, hs, gs)
    print("z table indexes", zi)
    hs_net, gs_net = IntNet(hs), IntNet(gs)
    with torch.no_grad():
        ax = {0: "n", 2: "h", 3: "w"}
        torch.onnx.export(Enc(net), torch.rand(1, 3, 128, 192), out_dir + "/enc.onnx", input_names=["x"], output_names=["y", "z"], dynamic_axes={"x": ax, "y": ax, "z": ax}, opset_version=13)
        torch.onnx.export(hs_net, torch.zeros(1, 48, 2, 3), out_dir + "/hs.onnx", input_names=["z"], output_names=["scale_index"], dynamic_axes={"z": ax, "scale_index": ax}, opset_version=13)
        torch.onnx.export(gs_net, torch.zeros(1, 96, 8, 12), out_dir + "/gs.onnx", input_names=["t"], output_names=["pixels"], dynamic_axes={"t": ax, "pixels": ax}, opset_version=13)
    print("exported", flush=True)


if __name__ == "__main__":
    main()

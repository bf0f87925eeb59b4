"""Quantize the decoder side of hp-dct-v2 to integers, fine-tune it quantization-aware, and
export the model files idcfs loads.

usage: export.py DATA_DIR FLOAT.pt OUT_DIR QAT_SECONDS

The integer scheme is hp-int8-v1's (models/hp-int8-v1/export.py, README.md): every layer
computes out = clip(floor((sum w*a + B) * 2^-k[c]), lo, hi) with integer weights (a
power-of-two scale per output channel), integer activations and the 2^24 exactness bound.
One refinement: for a transposed convolution the bound is taken per output phase (the
weights whose kernel offsets are congruent modulo the stride: exactly the terms that reach
one output position, so every partial sum of any summation order is a subset of them). The
Rust loader checks the same bound.

g_s's layers (int.bin order):
 0. fixed inverse 2x2 layer, transposed conv k=2 s=2, 768 -> 192: input t (real t/4),
    weights 2*w_real (2, or +-1 for the Haar DC), shift 0, output real a/8, clip +-2*T_MAX:
    no rounding at all;
 1. inverse block transform, transposed conv k=8 s=8, 192 -> 3: output 8-bit pixels 0..255;
 2. deblocking conv 3x3, 3 -> 35: channels 0..2 the pixels (identity), 32 hidden channels
    clipped to 0..255 (integers, as the float model clamps them);
 3. conv 3x3, 35 -> 3: the pixels plus the learned correction, clipped to 0..255.
h_s's layers as v1: 64 -> 128 -> 128 (ReLU, calibrated exponents) -> 768 scale indexes.
"""
import math
import random
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Net, LEVELS, SIGMA_MIN, LOG_R, M, Z, HID, EPS, B_MIN, gauss_likelihood, sigma_of_index, ste_round
import train

A_MAX = 255
T_MAX = 511  # |q * m| bound of g_s's input (y real = t / 4)
Z_MAX = 127  # |z| bound of h_s's input
E_IN_GS = 2
PREC = 24
LIMIT = 1 << 24


def ste_floor(x):
    return x + (torch.floor(x) - x).detach()


class QLayer:
    """One quantized layer. weight(): real [cout, cin, k, k]; bias(): real [cout]."""

    def __init__(self, weight, bias, transposed, k, stride, pad, outpad, ea, eo, lo, hi, amax_in, fixed_fw=None):
        self.weight, self.bias = weight, bias
        self.transposed, self.k, self.stride, self.pad, self.outpad = transposed, k, stride, pad, outpad
        self.ea, self.eo, self.lo, self.hi, self.amax_in = ea, eo, lo, hi, amax_in
        self.fixed_fw = fixed_fw
        self.fw = None

    def bound(self, wi):
        """sum |w| over the terms that can meet in one output (per phase if transposed)."""
        if not self.transposed:
            return wi.abs().sum().item()
        s = self.stride
        return max(wi[:, py::s, px::s].abs().sum().item() for py in range(s) for px in range(s))

    def choose_fw(self):
        w = self.weight().detach().double()
        fw = []
        for c in range(w.shape[0]):
            if self.fixed_fw is not None:
                f = self.fixed_fw
            else:
                m = w[c].abs().max().item()
                f = math.floor(math.log2(127 / max(m, 1e-12)))
            while True:
                wi = torch.round(w[c] * 2.0**f)
                b = self.bias_int_c(c, f)
                if self.bound(wi) * self.amax_in + abs(b) < LIMIT:
                    break
                assert self.fixed_fw is None
                f -= 1
            fw.append(f)
        self.fw = fw

    def bias_int_c(self, c, f):
        b = self.bias()[c].item()
        k = self.ea + f - self.eo
        return round(b * 2.0 ** (self.ea + f)) + (1 << (k - 1) if k >= 1 else 0)

    def fake(self, x):
        """Quantization-aware forward in real units (STE), x already quantized."""
        fw = torch.tensor(self.fw, dtype=x.dtype).view(-1, 1, 1, 1)
        w = self.weight()
        wq = ste_round(w * 2.0**fw) / 2.0**fw
        if self.transposed:
            y = F.conv_transpose2d(x, wq.transpose(0, 1), None, self.stride, self.pad, self.outpad)
        else:
            y = F.conv2d(x, wq, None, self.stride, self.pad)
        y = y + self.bias().view(1, -1, 1, 1)
        s = 2.0**self.eo
        return torch.clamp(ste_floor(y * s + 0.5), self.lo, self.hi) / s

    def ints(self):
        w = self.weight().detach().double()
        cout = w.shape[0]
        wi = torch.stack([torch.round(w[c] * 2.0 ** self.fw[c]) for c in range(cout)]).long()
        b = [self.bias_int_c(c, self.fw[c]) for c in range(cout)]
        k = [self.ea + self.fw[c] - self.eo for c in range(cout)]
        for c in range(cout):
            assert self.bound(wi[c]) * self.amax_in + abs(b[c]) < LIMIT
            assert -30 <= k[c] <= 30
        return wi, b, k


def identity(n_out, n_in):
    """[n_out, n_in, 3, 3] with 1 at the centre tap of channel c -> c for c < 3."""
    w = torch.zeros(n_out, n_in, 3, 3)
    for c in range(3):
        w[c, c, 1, 1] = 1.0
    return w


def layers(net, hs_e):
    tr = lambda l: (lambda: l.weight.transpose(0, 1))
    hs = [
        QLayer(tr(net.h_s[0]), lambda: net.h_s[0].bias, True, 5, 2, 2, 1, 0, hs_e[0], 0, A_MAX, Z_MAX),
        QLayer(tr(net.h_s[1]), lambda: net.h_s[1].bias, True, 5, 2, 2, 1, hs_e[0], hs_e[1], 0, A_MAX, A_MAX),
        QLayer(lambda: net.h_s[2].weight, lambda: net.h_s[2].bias, False, 3, 1, 1, 0, hs_e[1], 0, 0, LEVELS - 1, A_MAX),
    ]
    zero = lambda n: (lambda: torch.zeros(n))
    gs = [
        QLayer(lambda: net.s2d.transpose(0, 1), zero(192), True, 2, 2, 0, 0, E_IN_GS, 3, -2 * T_MAX, 2 * T_MAX, T_MAX, fixed_fw=1),
        QLayer(lambda: net.gs_block.weight.transpose(0, 1), lambda: net.gs_block.bias, True, 8, 8, 0, 0, 3, 0, 0, 255, 2 * T_MAX),
        QLayer(lambda: torch.cat([identity(3, 3), net.db1.weight]), lambda: torch.cat([torch.zeros(3), net.db1.bias]), False, 3, 1, 1, 0, 0, 0, 0, 255, A_MAX),
        QLayer(lambda: torch.cat([identity(3, 3), net.db2.weight], 1), lambda: net.db2.bias, False, 3, 1, 1, 0, 0, 0, 0, 255, A_MAX),
    ]
    for q in hs + gs:
        q.choose_fw()
    return hs, gs


def calibrate(net, imgs, rng):
    """Largest activation (99.99th percentile) after each ReLU of h_s."""
    hs_max = [[], []]
    with torch.no_grad():
        for _ in range(12):
            x = train.batch(imgs, rng)
            z_hat = torch.round(net.h_a(torch.abs(net.g_a(x))))
            a = z_hat
            for i in range(2):
                a = F.relu(net.h_s[i](a))
                hs_max[i].append(torch.quantile(a.flatten()[::7], 0.9999).item())
    return [math.floor(math.log2(A_MAX / max(max(v), 1e-6))) for v in hs_max]


def int_forward(qs, x):
    for q in qs:
        x = q.fake(x)
    return x


def qat_loss(net, hs, gs, x, delta, lam):
    y = net.g_a(x)
    z = net.h_a(torch.abs(y))
    z_hat = torch.clamp(ste_round(z), -Z_MAX, Z_MAX)
    sig_z = torch.exp(net.z_log_sigma).view(1, -1, 1, 1)
    lz = gauss_likelihood(z + torch.empty_like(z).uniform_(-0.5, 0.5), sig_z, 1.0)
    sig = sigma_of_index(int_forward(hs, z_hat))
    ly = gauss_likelihood(y + delta * torch.empty_like(y).uniform_(-0.5, 0.5), sig, delta)
    t = torch.clamp(ste_round(y / delta) * delta * 4, -T_MAX, T_MAX) / 4
    x_hat = int_forward(gs, t)
    npix = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = (-torch.log2(ly).sum() - torch.log2(lz).sum()) / npix
    mse = torch.mean((x_hat - x * 255) ** 2)
    return bpp + lam * mse, bpp, mse


class IntNet(nn.Module):
    """The integer-valued float32 graph exported to ONNX (one per decoder network)."""

    def __init__(self, qs):
        super().__init__()
        self.convs = nn.ModuleList()
        self.meta = []
        for q in qs:
            wi, b, k = q.ints()
            cout, cin = wi.shape[0], wi.shape[1]
            if q.transposed:
                c = nn.ConvTranspose2d(cin, cout, q.k, q.stride, q.pad, q.outpad)
                c.weight.data = wi.transpose(0, 1).float().contiguous()
            else:
                c = nn.Conv2d(cin, cout, q.k, q.stride, q.pad)
                c.weight.data = wi.float()
            c.bias.data = torch.tensor(b, dtype=torch.float32)
            self.convs.append(c)
            self.register_buffer(f"s{len(self.meta)}", torch.tensor([2.0**-kk for kk in k], dtype=torch.float32).view(1, -1, 1, 1))
            self.meta.append((q.lo, q.hi))

    def forward(self, x):
        for i, c in enumerate(self.convs):
            lo, hi = self.meta[i]
            x = torch.clamp(torch.floor(c(x) * getattr(self, f"s{i}")), lo, hi)
        return x


class Enc(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        y = self.net.g_a(x)
        return y, self.net.h_a(torch.abs(y))


def gauss_table(sigma):
    """Fixed-point (2^PREC) probabilities of the integers -R..R under model.gauss_likelihood's
    mixture (1 - EPS) N(0, sigma) + EPS Laplace(0, max(sigma, B_MIN)/sqrt 2) (sigma in
    quantization steps), tails folded into the end symbols, every probability >= 1."""
    b = max(sigma, B_MIN) / math.sqrt(2)
    r = max(1, min(255, math.ceil(max(sigma, b) * 10)))
    ks = np.arange(-r, r + 1)
    gcdf = lambda v: 0.5 * (1 + np.vectorize(math.erf)(v / (sigma * math.sqrt(2))))
    lcdf = lambda v: np.where(v < 0, 0.5 * np.exp(np.minimum(v, 0) / b), 1 - 0.5 * np.exp(-np.maximum(v, 0) / b))
    cdf = lambda v: (1 - EPS) * gcdf(v) + EPS * lcdf(v)
    p = cdf(ks + 0.5) - cdf(ks - 0.5)
    p[0] += cdf(-r - 0.5)
    p[-1] += 1 - cdf(r + 0.5)
    total = 1 << PREC
    q = np.maximum(1, np.floor(p * (total - len(p)))).astype(np.int64)
    q[np.argmax(q)] += total - q.sum()
    assert q.min() >= 1 and q.sum() == total
    return r, q


def write_int_bin(path, net, hs, gs):
    """The layout of hp-int8-v1's int.bin (FORMAT.md section 5.4), unchanged; the 64 tables
    hold gauss_table's mixture instead of pure Gaussians (int.bin carries the probabilities)."""
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
    u32(7)
    for m in range(2, 9):
        i32(round(math.log(m / 4) / LOG_R))
    i32(T_MAX)
    i32(Z_MAX)
    u32(len(hs) + len(gs))
    for net_id, qs in ((0, hs), (1, gs)):
        for q in qs:
            wi, b, k = q.ints()
            out.extend(bytes([net_id, 1 if q.transposed else 0]))
            for v in (wi.shape[1], wi.shape[0], q.k, q.stride, q.pad, q.outpad):
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
    hs_e = calibrate(net, imgs, rng)
    print("h_s activation exponents", hs_e, flush=True)
    hs, gs = layers(net, hs_e)
    print("g_s weight exponents (min, max)", [(min(q.fw), max(q.fw)) for q in gs], flush=True)
    params = [p for n, p in net.named_parameters()]
    opt = torch.optim.Adam(params, lr=5e-5)
    t0, step = time.time(), 0
    while time.time() - t0 < qat_seconds:
        m = rng.randrange(2, 9)
        delta = m / 4
        loss, bpp, mse = qat_loss(net, hs, gs, train.batch(imgs, rng), delta, train.LAMBDA0 / delta**2)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            print(f"qat step {step} t {time.time() - t0:.0f}s m {m} bpp {bpp.item():.3f} psnr {10 * math.log10(255**2 / mse.item()):.2f}", flush=True)
        if step % 25 == 0:
            for q in hs + gs:
                q.choose_fw()
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
        torch.onnx.export(hs_net, torch.zeros(1, Z, 2, 3), out_dir + "/hs.onnx", input_names=["z"], output_names=["scale_index"], dynamic_axes={"z": ax, "scale_index": ax}, opset_version=13)
        torch.onnx.export(gs_net, torch.zeros(1, M, 8, 12), out_dir + "/gs.onnx", input_names=["t"], output_names=["pixels"], dynamic_axes={"t": ax, "pixels": ax}, opset_version=13)
        # The exported integer g_s against the fake-quantized float one on a training crop.
        x = train.batch(imgs, rng)[:1]
        y = net.g_a(x)
        for m in (2, 4, 8):
            t = torch.clamp(torch.round(y / (m / 4)) * m, -T_MAX, T_MAX)
            a = gs_net(t)
            b = int_forward(gs, t / 4)
            p = 10 * math.log10(255**2 / torch.mean((a - x * 255) ** 2).item())
            print(f"m={m}: integer g_s vs fake-quant max diff {(a - b).abs().max().item():.1f}, PSNR {p:.2f}", flush=True)
    print("exported", flush=True)


if __name__ == "__main__":
    main()

"""The network of idcfs's learned image codec `hp-dct-v2` (shared by train.py, export.py).

Transform coding that starts where JPEG works, with a learned entropy model:
- g_a (encoder only, float): x in [0,1] -> centred 8-bit units -> conv k=8 stride 8
  (3 -> 192), initialised to an orthonormal colour transform times the orthonormal 8x8 DCT
  (divided by S0 = 128), then a fixed orthonormal 2x2 "space to depth" (192 -> 768 channels
  at 1/16): the 4 AC coefficients of the 2x2 neighbouring blocks are moved into channels, the
  4 DC coefficients of each colour are replaced by their 2x2 Haar transform (one DC per 16x16
  area plus 3 zero-mean differences: what JPEG gets from coding DC differentially).
- h_a (encoder only, float): |y| -> 1x1 conv -> 128, ReLU, 5x5/2 conv -> 128, ReLU,
  5x5/2 conv -> Z = 64 (z at 1/64, as in v1).
- h_s (decoder, integer): 5x5/2 transposed conv 64 -> 128, ReLU, 5x5/2 transposed conv
  128 -> 128, ReLU, 3x3 conv 128 -> 768: the scale index (0..63) of each coefficient.
- g_s (decoder, integer): the fixed inverse 2x2 layer (transposed conv k=2 s=2, 768 -> 192),
  the inverse block transform (transposed conv k=8 s=8, 192 -> 3, initialised to the exact
  inverse, trained) giving 8-bit pixels, then a deblocking residual stage of two 3x3 convs
  (3 -> 3+32 -> 3: the 3 pixel channels pass through by identity, 32 hidden channels clipped
  to 0..255, the second conv adds a learned correction, initialised to zero).
The quantization step of y is DELTA = m/4 (m = 2..8), as in v1 (same tables, same offsets).
"""
import math
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

M, Z, NH, C1, HID = 768, 64, 128, 192, 32
LEVELS = 64
SIGMA_MIN, SIGMA_MAX = 0.11, 256.0
LOG_R = math.log(SIGMA_MAX / SIGMA_MIN) / (LEVELS - 1)
S0 = 128.0


def sigma_of_index(h):
    return SIGMA_MIN * torch.exp(h * LOG_R)


def dct_matrix(n=8):
    d = np.zeros((n, n))
    for u in range(n):
        for i in range(n):
            a = math.sqrt(1 / n) if u == 0 else math.sqrt(2 / n)
            d[u, i] = a * math.cos((2 * i + 1) * u * math.pi / (2 * n))
    return d


COLOUR = np.array([[1, 1, 1], [1, 0, -1], [1, -2, 1]], dtype=np.float64)
COLOUR = COLOUR / np.linalg.norm(COLOUR, axis=1, keepdims=True)  # orthonormal rows


def block_basis():
    """[192, 3, 8, 8]: channel k*64 + u*8 + v = colour row k times DCT basis (u, v)."""
    d = dct_matrix()
    b = np.einsum("kc,ui,vj->kuvcij", COLOUR, d, d).reshape(C1, 3, 8, 8)
    return torch.tensor(b, dtype=torch.float32)


def s2d_matrix():
    """[768, 192, 2, 2] orthonormal: output channel 4*c + q from channel c at the 4 block
    positions p = 2*py + px; for the DC channels (c = 64*k) the 4 outputs are the 2x2 Haar
    transform (+1/2 or -1/2 weights), for the others a permutation."""
    w = np.zeros((M, C1, 2, 2))
    haar = 0.5 * np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]])
    for c in range(C1):
        for q in range(4):
            for p in range(4):
                if c % 64 == 0:
                    w[4 * c + q, c, p // 2, p % 2] = haar[q, p]
                elif q == p:
                    w[4 * c + q, c, p // 2, p % 2] = 1.0
    return torch.tensor(w, dtype=torch.float32)


def conv(i, o, k=5, s=2):
    return nn.Conv2d(i, o, k, s, k // 2)


def deconv(i, o, k=5, s=2):
    return nn.ConvTranspose2d(i, o, k, s, k // 2, output_padding=s - 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.ga_block = nn.Conv2d(3, C1, 8, 8)
        self.register_buffer("s2d", s2d_matrix())
        self.h_a = nn.Sequential(conv(M, NH, 1, 1), nn.ReLU(), conv(NH, NH), nn.ReLU(), conv(NH, Z))
        self.h_s = nn.ModuleList([deconv(Z, NH), deconv(NH, NH), conv(NH, M, 3, 1)])
        self.gs_block = nn.ConvTranspose2d(C1, 3, 8, 8)
        self.db1 = nn.Conv2d(3, HID, 3, 1, 1)  # deblocking hidden channels (pixel units)
        self.db2 = nn.Conv2d(HID, 3, 3, 1, 1)  # correction added to the pixels
        self.z_log_sigma = nn.Parameter(torch.zeros(Z))
        b = block_basis()
        with torch.no_grad():
            self.ga_block.weight.copy_(b * (255.0 / S0))
            self.ga_block.bias.zero_()
            self.gs_block.weight.copy_(b * S0)  # [cin=192, cout=3, 8, 8]: the transpose
            self.gs_block.bias.fill_(127.5)
            self.db1.weight.mul_(0.3)
            self.db1.bias.fill_(20.0)
            self.db2.weight.zero_()
            self.db2.bias.zero_()
            self.h_s[2].bias.fill_(20.0)

    def g_a(self, x):
        return F.conv2d(self.ga_block(x - 0.5), self.s2d, None, 2)

    def hs_float(self, z_hat):
        x = F.relu(self.h_s[0](z_hat))
        x = F.relu(self.h_s[1](x))
        return torch.clamp(self.h_s[2](x), 0, LEVELS - 1)

    def gs_float(self, y_hat):
        """Pixels in 0..255 (float)."""
        c = F.conv_transpose2d(y_hat, self.s2d, None, 2)
        p = torch.clamp(self.gs_block(c), 0, 255)
        h = torch.clamp(self.db1(p), 0, 255)
        return torch.clamp(p + self.db2(h), 0, 255)


EPS = 1.0 / 256  # weight of the heavy-tailed component of every entropy table
B_MIN = 2.0  # its smallest Laplace scale, in quantization steps


def gauss_likelihood(v, sigma, delta):
    """P(the quantization bin of width delta around v) under the tables' distribution:
    (1 - EPS) N(0, sigma) + EPS Laplace(0, b), b = max(sigma, B_MIN delta) / sqrt(2): a
    Gaussian whose tails never make an unexpected coefficient cost more than ~12 bits (the
    hyperprior trained here on few smooth photos underestimates sigma on detailed ones).
    export.py writes the same mixture into int.bin's fixed-point tables."""
    v = v.abs()
    sigma = sigma.clamp(min=SIGMA_MIN)
    n = torch.distributions.Normal(0.0, 1.0)
    pg = n.cdf((delta / 2 - v) / sigma) - n.cdf((-delta / 2 - v) / sigma)
    b = torch.clamp(sigma, min=B_MIN * delta) / math.sqrt(2)
    lap_cdf = lambda t: torch.where(t < 0, 0.5 * torch.exp(t / b), 1 - 0.5 * torch.exp(-t / b))
    pl = lap_cdf(v + delta / 2) - lap_cdf(v - delta / 2)
    return ((1 - EPS) * pg + EPS * pl).clamp(min=1e-9)


def ste_round(x):
    return x + (torch.round(x) - x).detach()

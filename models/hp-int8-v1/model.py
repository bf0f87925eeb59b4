"""The network of idcfs's learned image codec `hp-int8-v1` (shared by train.py, export.py).

A scale hyperprior (Balle et al. 2018) made small for CPU training here:
- g_a (encoder only, float): 4 strided 5x5 convs with GDN, 3 -> 32 -> 64 -> 64 -> M=96.
- h_a (encoder only, float): |y| -> 3x3 conv, two strided 5x5 convs -> Z=48 channels.
- h_s (decoder side, integer-exact): two stride-2 5x5 transposed convs + 3x3 conv whose output
  *is* the scale index (0..63) of a fixed table of Gaussian scales (SIGMA_MIN * R**i).
- g_s (decoder side, integer-exact): 4 stride-2 5x5 transposed convs with ReLU (no GDN: ReLU
  and clipping are exact in integers), 96 -> 64 -> 64 -> 32 -> 3.
The quantization step of y is DELTA = m/4 (m = 2..8), the rate knob of one model.
"""
import math
import torch
import torch.nn as nn
import torch.nn.functional as F

N1, N2, M, Z = 32, 64, 96, 48
LEVELS = 64
SIGMA_MIN, SIGMA_MAX = 0.11, 256.0
LOG_R = math.log(SIGMA_MAX / SIGMA_MIN) / (LEVELS - 1)


def sigma_of_index(h):
    return SIGMA_MIN * torch.exp(h * LOG_R)


class GDN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.beta = nn.Parameter(torch.ones(c))
        self.gamma = nn.Parameter(0.1 * torch.eye(c).view(c, c, 1, 1))

    def forward(self, x):
        beta = self.beta.abs() + 1e-6
        gamma = self.gamma.abs()
        return x / torch.sqrt(F.conv2d(x * x, gamma, beta))


def conv(i, o, k=5, s=2):
    return nn.Conv2d(i, o, k, s, k // 2)


def deconv(i, o, k=5, s=2):
    return nn.ConvTranspose2d(i, o, k, s, k // 2, output_padding=s - 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.g_a = nn.Sequential(conv(3, N1), GDN(N1), conv(N1, N2), GDN(N2), conv(N2, N2), GDN(N2), conv(N2, M))
        self.h_a = nn.Sequential(conv(M, N2, 3, 1), nn.ReLU(), conv(N2, N2), nn.ReLU(), conv(N2, Z))
        # Decoder side: plain lists so export.py can walk the layers one by one.
        self.h_s = nn.ModuleList([deconv(Z, N2), deconv(N2, N2), conv(N2, M, 3, 1)])
        self.g_s = nn.ModuleList([deconv(M, N2), deconv(N2, N2), deconv(N2, N1), deconv(N1, 3)])
        # Factorized prior of z: a zero-mean Gaussian per channel (a table index at export).
        self.z_log_sigma = nn.Parameter(torch.zeros(Z))
        with torch.no_grad():
            self.h_s[2].bias.fill_(20.0)

    def hs_float(self, z_hat):
        x = F.relu(self.h_s[0](z_hat))
        x = F.relu(self.h_s[1](x))
        return torch.clamp(self.h_s[2](x), 0, LEVELS - 1)

    def gs_float(self, y_hat):
        x = y_hat
        for i, layer in enumerate(self.g_s):
            x = layer(x)
            if i < len(self.g_s) - 1:
                x = F.relu(x)
        return x


def gauss_likelihood(v, sigma, delta):
    """P(the quantization bin of width delta around v) under N(0, sigma)."""
    v = v.abs()
    sigma = sigma.clamp(min=SIGMA_MIN)
    n = torch.distributions.Normal(0.0, 1.0)
    p = n.cdf((delta / 2 - v) / sigma) - n.cdf((-delta / 2 - v) / sigma)
    return p.clamp(min=1e-9)


def ste_round(x):
    return x + (torch.round(x) - x).detach()

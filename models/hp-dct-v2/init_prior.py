"""Set the static part of the entropy model from data (what ~10^5 Adam steps would learn).

usage: init_prior.py DATA_DIR IN.pt OUT.pt
With lr 1e-3, Adam moves h_s's last bias by about 1e-3 per step: the per-coefficient scale
index (a 0..63 range, e.g. DC ~ 50 and the highest frequencies ~ 0) would take tens of
thousands of steps to reach its place. Instead: run 40 training crops through the model, set
each y channel's h_s bias so that its mean scale index is the index of that channel's RMS
(sigma_i = 0.11 r^i), and each z channel's prior sigma to that channel's RMS.
"""
import math
import random
import sys

import torch

import train
from model import Net, LEVELS, LOG_R, SIGMA_MIN

torch.set_num_threads(2)
net = Net()
net.load_state_dict(torch.load(sys.argv[2]))
imgs = train.load(sys.argv[1])
rng = random.Random(3)
ys, zs, hs = [], [], []
with torch.no_grad():
    for _ in range(5):
        x = train.batch(imgs, rng)
        y = net.g_a(x)
        z = torch.round(net.h_a(y.abs()))
        a = torch.relu(net.h_s[1](torch.relu(net.h_s[0](z))))
        ys.append(y.transpose(0, 1).reshape(y.shape[1], -1))
        zs.append(z.transpose(0, 1).reshape(z.shape[1], -1))
        hs.append(net.h_s[2](a).transpose(0, 1).reshape(y.shape[1], -1))
    y, z, h = torch.cat(ys, 1), torch.cat(zs, 1), torch.cat(hs, 1)
    rms = y.pow(2).mean(1).sqrt().clamp(min=SIGMA_MIN)
    want = (torch.log(rms / SIGMA_MIN) / LOG_R).clamp(0, LEVELS - 1)
    net.h_s[2].bias += want - h.mean(1)
    zr = z.pow(2).mean(1).sqrt().clamp(min=0.3)
    net.z_log_sigma.copy_(torch.log(zr))
    print("y scale index per channel (first 16):", [round(v, 1) for v in want[:16].tolist()])
    print("z sigma:", [round(v, 2) for v in zr.tolist()])
torch.save(net.state_dict(), sys.argv[3])

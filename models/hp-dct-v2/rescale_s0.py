"""Rescale a checkpoint's latent y by 1/2 (S0 -> 2 S0) exactly: the same codec with every
quantization step doubled in 8-bit units (the step ladder m/4 covers lower rates).

usage: rescale_s0.py IN.pt OUT.pt
g_a's block weights and bias / 2, g_s's block weights * 2 (its input is y), h_a's first
weights * 2 (it sees |y|), h_s's last bias - ln 2 / ln r (sigma of y halves).
"""
import math
import sys

import torch

from model import LOG_R

sd = torch.load(sys.argv[1])
sd["ga_block.weight"] /= 2
sd["ga_block.bias"] /= 2
sd["gs_block.weight"] *= 2
sd["h_a.0.weight"] *= 2
sd["h_s.2.bias"] -= math.log(2) / LOG_R
torch.save(sd, sys.argv[2])

"""Train hp-int8-v1 on CPU (see README.md for the data and its pins).

usage: train.py DATA_DIR OUT.pt SECONDS [--resume CKPT] [--lr LR] [--seed N]
DATA_DIR holds the training photos (extracted from the pinned Debian packages by
fetch_data.sh). Each photo is loaded at two scales (short side 512 and 768, Lanczos: the
wallpapers are JPEGs, downscaling hides their blocking); training draws random 128x128 crops.
Loss = bpp + lambda(delta) * 255^2 * MSE with delta = m/4, m uniform in 2..8 and
lambda(delta) = LAMBDA0 / delta^2: one model for a range of rates. Adam, lr 1e-3 for the
first 70% of the time budget, then 2e-4.
"""
import glob
import random
import sys
import time

import numpy as np
import torch
from PIL import Image

from model import Net, gauss_likelihood, sigma_of_index, ste_round

LAMBDA0 = 0.013
PATCH = 128
BATCH = 8


def load(data_dir):
    imgs = []
    for f in sorted(glob.glob(data_dir + "/*")):
        im = Image.open(f).convert("RGB")
        for short in (512, 768):
            s = short / min(im.size)
            if s >= 1:
                continue
            r = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.LANCZOS)
            imgs.append(np.asarray(r))
    return imgs


def batch(imgs, rng):
    out = np.empty((BATCH, PATCH, PATCH, 3), np.uint8)
    for b in range(BATCH):
        a = imgs[rng.randrange(len(imgs))]
        y = rng.randrange(a.shape[0] - PATCH + 1)
        x = rng.randrange(a.shape[1] - PATCH + 1)
        p = a[y : y + PATCH, x : x + PATCH]
        if rng.random() < 0.5:
            p = p[:, ::-1]
        out[b] = p
    return torch.from_numpy(out.copy()).permute(0, 3, 1, 2).float() / 255.0


def step_loss(net, x, delta, lam):
    y = net.g_a(x)
    z = net.h_a(torch.abs(y))
    z_t = z + torch.empty_like(z).uniform_(-0.5, 0.5)
    z_hat = ste_round(z)
    sig_z = torch.exp(net.z_log_sigma).view(1, -1, 1, 1)
    lz = gauss_likelihood(z_t, sig_z, 1.0)
    h = net.hs_float(z_hat)
    sig = sigma_of_index(h)
    y_t = y + delta * torch.empty_like(y).uniform_(-0.5, 0.5)
    ly = gauss_likelihood(y_t, sig, delta)
    y_hat = ste_round(y / delta) * delta
    x_hat = net.gs_float(y_hat)
    npix = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = (-torch.log2(ly).sum() - torch.log2(lz).sum()) / npix
    mse = torch.mean((x_hat - x) ** 2)
    return bpp + lam * 255**2 * mse, bpp, mse


def main():
    torch.set_num_threads(2)
    data_dir, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    lr = 1e-3
    net = Net()
    if "--resume" in sys.argv:
        net.load_state_dict(torch.load(sys.argv[sys.argv.index("--resume") + 1]))
    if "--lr" in sys.argv:
        lr = float(sys.argv[sys.argv.index("--lr") + 1])
    imgs = load(data_dir)
    print(f"{len(imgs)} training pictures", flush=True)
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 1
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    t0 = time.time()
    step = 0
    acc = np.zeros(3)
    while time.time() - t0 < seconds:
        if time.time() - t0 > 0.7 * seconds:
            for g in opt.param_groups:
                g["lr"] = lr / 5
        m = rng.randrange(2, 9)
        delta = m / 4
        x = batch(imgs, rng)
        loss, bpp, mse = step_loss(net, x, delta, LAMBDA0 / delta**2)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        acc += [loss.item(), bpp.item(), 10 * np.log10(1 / max(mse.item(), 1e-10))]
        step += 1
        if step % 25 == 0:
            print(f"step {step} t {time.time() - t0:.0f}s loss {acc[0] / 25:.3f} bpp {acc[1] / 25:.3f} psnr {acc[2] / 25:.2f}", flush=True)
            acc[:] = 0
            torch.save(net.state_dict(), out)
    torch.save(net.state_dict(), out)
    print(f"done: {step} steps in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()

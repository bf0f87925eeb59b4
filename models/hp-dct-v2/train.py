"""Train hp-dct-v2 on CPU (see README.md for the data and its pins).

usage: train.py DATA_DIR OUT.pt SECONDS [--resume CKPT] [--lr LR] [--seed N] [--freeze]
  [--lambda L0]
--freeze: the block transforms and the deblocking stage stay as they are (phase 1: only
the hyperprior h_a/h_s and z's prior learn). Without it everything learns (phase 2), the
block transforms at lr/10.
Each photo is loaded at three scales (short side 512, 768 and 1080, Lanczos; a photo whose
short side is 1080 is used as it is: the detail level of the evaluation photos); training draws random
128x128 crops (batch 8, horizontal flips). Loss = bpp + lambda(delta) * MSE (8-bit units)
with delta = m/4, m uniform in 2..8 and lambda(delta) = L0 / delta^2. Adam; the learning rate
drops to lr/5 for the last 30% of the time budget.
"""
import glob
import random
import sys
import time

import numpy as np
import torch
from PIL import Image

from model import Net, gauss_likelihood, sigma_of_index, ste_round

LAMBDA0 = 0.00053  # 8.66 / S0^2: the high-rate optimum of a uniform quantizer at step delta*S0
PATCH = 128
BATCH = 8


def load(data_dir):
    imgs = []
    for f in sorted(glob.glob(data_dir + "/*")):
        im = Image.open(f).convert("RGB")
        for short in (512, 768, 1080):
            s = short / min(im.size)
            if s > 1:
                continue
            r = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.LANCZOS) if s < 1 else im
            imgs.append(np.asarray(r))
    return imgs


def batch(imgs, rng, patch=PATCH):
    out = np.empty((BATCH, patch, patch, 3), np.uint8)
    for b in range(BATCH):
        a = imgs[rng.randrange(len(imgs))]
        y = rng.randrange(a.shape[0] - patch + 1)
        x = rng.randrange(a.shape[1] - patch + 1)
        p = a[y : y + patch, x : x + patch]
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
    mse = torch.mean((x_hat - x * 255) ** 2)
    return bpp + lam * mse, bpp, mse


def main():
    torch.set_num_threads(2)
    data_dir, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    arg = lambda k, d: type(d)(sys.argv[sys.argv.index(k) + 1]) if k in sys.argv else d
    lr = arg("--lr", 1e-3)
    lam0 = arg("--lambda", LAMBDA0)
    freeze = "--freeze" in sys.argv
    net = Net()
    if "--resume" in sys.argv:
        net.load_state_dict(torch.load(sys.argv[sys.argv.index("--resume") + 1]))
    imgs = load(data_dir)
    print(f"{len(imgs)} training pictures, freeze={freeze}, lambda0={lam0}, lr={lr}", flush=True)
    seed = arg("--seed", 1)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    block = [net.ga_block.weight, net.ga_block.bias, net.gs_block.weight, net.gs_block.bias]
    deblock = list(net.db1.parameters()) + list(net.db2.parameters())
    prior = list(net.h_a.parameters()) + list(net.h_s.parameters()) + [net.z_log_sigma]
    groups = [{"params": prior, "lr": lr}]
    if not freeze:
        groups += [{"params": block, "lr": lr / 10}, {"params": deblock, "lr": lr}]
    opt = torch.optim.Adam(groups)
    base = [g["lr"] for g in opt.param_groups]
    t0 = time.time()
    step = 0
    acc = np.zeros(3)
    per_m = {}
    while time.time() - t0 < seconds:
        if time.time() - t0 > 0.7 * seconds:
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b / 5
        m = rng.randrange(2, 9)
        delta = m / 4
        x = batch(imgs, rng)
        loss, bpp, mse = step_loss(net, x, delta, lam0 / delta**2)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        psnr = 10 * np.log10(255**2 / max(mse.item(), 1e-10))
        acc += [loss.item(), bpp.item(), psnr]
        s = per_m.setdefault(m, np.zeros(3))
        s += [1, bpp.item(), psnr]
        step += 1
        if step % 25 == 0:
            ms = " ".join(f"m{k}:{v[1] / v[0]:.3f}/{v[2] / v[0]:.2f}" for k, v in sorted(per_m.items()))
            print(f"step {step} t {time.time() - t0:.0f}s loss {acc[0] / 25:.3f} bpp {acc[1] / 25:.3f} psnr {acc[2] / 25:.2f} | {ms}", flush=True)
            acc[:] = 0
            per_m = {}
            torch.save(net.state_dict(), out)
    torch.save(net.state_dict(), out)
    print(f"done: {step} steps in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()

"""Reference for `cargo xtask bench head`: the same head, optimizer and loop in Python PyTorch,
written the way its users write it (nn.Sequential, torch.optim.RMSprop with Keras' rho and
epsilon, a shuffled index per epoch, validation every epoch). Prints one JSON line.
"""

import argparse
import json
import time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--width", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(0)
    xs = torch.rand(a.samples, a.width)
    ys = (torch.arange(a.samples) % 2).float()
    vx, vy = xs[:200], ys[:200]
    seconds = []
    for run in range(a.runs):
        torch.manual_seed(run)
        model = torch.nn.Sequential(
            torch.nn.Linear(a.width, 256), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(256, 1))
        opt = torch.optim.RMSprop(model.parameters(), lr=2e-5, alpha=0.9, eps=1e-7)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        start = time.perf_counter()
        for _ in range(a.epochs):
            model.train()
            order = torch.randperm(a.samples)
            running_loss, correct = 0.0, 0
            for i in range(0, a.samples, 20):
                idx = order[i:i + 20]
                opt.zero_grad()
                out = model(xs[idx]).squeeze(1)
                loss = loss_fn(out, ys[idx])
                loss.backward()
                opt.step()
                running_loss += loss.item() * len(idx)
                correct += ((out > 0).float() == ys[idx]).sum().item()
            model.eval()
            with torch.no_grad():
                for i in range(0, len(vx), 20):
                    loss_fn(model(vx[i:i + 20]).squeeze(1), vy[i:i + 20]).item()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"samples": a.samples, "width": a.width, "epochs": a.epochs, "seconds": seconds}))


if __name__ == "__main__":
    main()

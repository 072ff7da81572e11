"""Where a PyTorch peer's step spends its GPU time: per-kernel CUDA time of the compact+compile model of a peer
script (the `torch_baseline.py` that `fathom bench` is compared with), grouped into the classes fathom's
`bench` phases can be held against. Prints kernel time per step, the classes, then the top kernels.
Usage: python3 tests/gpu/peer_profile.py PEER_SCRIPT [--steps 3] [--top 40]
The peer script must define CFG and build(mode, cfg, compile_) as torch_baseline.py does."""
import argparse, collections, importlib.util, os, sys

ap = argparse.ArgumentParser()
ap.add_argument("peer")
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--top", type=int, default=40)
a = ap.parse_args()
if not os.path.isfile(a.peer):
    print(f"peer_profile.py: no peer script at {a.peer} (expected a torch_baseline.py-style script)", file=sys.stderr)
    sys.exit(2)
spec = importlib.util.spec_from_file_location("peer", a.peer)
peer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peer)
for name in ("CFG", "build"):
    if not hasattr(peer, name):
        print(f"peer_profile.py: {a.peer} has no {name} (expected a torch_baseline.py-style script)", file=sys.stderr)
        sys.exit(2)

import torch
from torch.profiler import ProfilerActivity, profile

torch.manual_seed(0)
c = peer.CFG
model, fwd = peer.build("compact", c, True)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
ids = torch.randint(0, c["vocab_size"], (2, 4097), device="cuda")
x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def step():
    loss = fwd(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(4):  # compile and warm up outside the profile
    step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(a.steps):
        step()
    torch.cuda.synchronize()

total, calls = collections.Counter(), collections.Counter()
for e in prof.events():
    if e.device_type == torch.autograd.DeviceType.CUDA:
        total[e.name] += getattr(e, "device_time_total", 0) or e.cuda_time_total
        calls[e.name] += 1


def kind(name):
    n = name.lower()
    if "grouped" in n or "groupproblemshape" in n:
        return "grouped GEMM (routed experts)"
    if any(k in n for k in ("fmha", "flash", "sdpa", "cudnn")):
        return "attention (SDPA)"
    if "adam" in n or "multi_tensor" in n:
        return "optimizer"
    if "triton" in n:
        return "Triton-fused elementwise"
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "xmma")):
        return "other GEMMs"
    return "other"


per_step = lambda us: us / a.steps / 1e3
print(f"peer kernels: {per_step(sum(total.values())):.2f} ms of kernel time per step ({a.steps} profiled steps)")
classes = collections.Counter()
for name, us in total.items():
    classes[kind(name)] += us
for k, us in classes.most_common():
    print(f"  {k:30s} {per_step(us):8.2f} ms")
for name, us in total.most_common(a.top):
    print(f"{per_step(us):8.3f} ms {calls[name] // a.steps:5d}x  {name[:140]}")

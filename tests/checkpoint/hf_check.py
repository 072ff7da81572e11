#!/usr/bin/env python3
"""fathom's HF export and import against transformers' DeepseekV3ForCausalLM (issue 11), in one command.

Run on the GPU machine (torch 2.11, transformers 5.17, safetensors; a GPU only for the native bf16 / FP8
runs, everything else on the CPU), from the repository root, after building fathom:

    python3 tests/checkpoint/hf_check.py --fathom build/fathom --out $OUT/hf_check [--checkpoint CKPT]

1. Import (transformers -> fathom). A small random DeepSeek-V3 (q LoRA, YaRN with mscale != mscale_all_dim,
   grouped routing, 2 shared experts, odd widths) is built with transformers and saved by save_pretrained,
   sharded, in f32 and in bf16; a copy gets an MTP layer (num_nextn_predict_layers 1) that transformers
   ignores. `fathom import` turns each into a checkpoint and `fathom logits --dtype f64` runs it; so does
   `fathom logits` on the directory itself (the model.init_from path). Their logits must equal
   transformers' float64 logits of the same weights within the golden tolerance.
2. Export (fathom -> transformers). CKPT (a fathom checkpoint, e.g. of recipes/small.yaml after a few
   steps; default: the one step 1 imported, with its MTP layer) is exported as f32, bf16 and fp8 with
   `fathom export` (its GB/s printed), each directory loaded with AutoModelForCausalLM.from_pretrained and
   run on fresh random tokens:
     f32   transformers float64 vs fathom's own f64 forward on the checkpoint (must agree);
     bf16  transformers float64 vs fathom f64 on the bf16 directory (must agree), its error against the
           checkpoint reported, and transformers' native bf16 on the GPU reported;
     fp8   the script dequantizes the directory exactly (e4m3 x weight_scale_inv in f32, as fathom does),
           transformers float64 on that vs fathom f64 on the fp8 directory (must agree); the FP8 error
           against bf16 reported; transformers' own FP8 loading (fine-grained FP8 on the GPU, and its
           dequantize=True path) run and reported where this transformers supports it.
Tolerance (the golden tests', tests/model/golden_test.cc): relative L2 ||a - b|| / ||b|| <= 1e-5 for
logits of the same weights, both sides in float64 (transformers computes its router and RoPE tables in
float32 by design, which leaves ~1e-7). Float32 and bf16 runs are reported with their own bounds.
Writes <out>/report.json; exits 1 when a check fails.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RMSNorm

SAME_WEIGHTS_TOL = 1e-5  # golden tolerance, float64 on both sides
F32_TOL = 1e-4           # fathom f32 vs transformers f32 (different summation orders)
BF16_TOL = 5e-2          # bf16 compute, or bf16-rounded weights, vs f64
FP8_NATIVE_TOL = 1e-1    # transformers' FP8 kernels also quantize activations (1x128 tiles)


def rmsnorm_in_input_dtype(self, hidden_states):
    """transformers' RMSNorm casts to float32 first, which in a float64 model rounds every norm (the
    golden script patches it the same way); the math is unchanged."""
    dtype = torch.promote_types(hidden_states.dtype, torch.float32)
    h = hidden_states.to(dtype)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight * h.to(hidden_states.dtype)


DeepseekV3RMSNorm.forward = rmsnorm_in_input_dtype


class Report:
    def __init__(self):
        self.rows = []

    def check(self, name, value, tol, must=True):
        ok = value <= tol
        self.rows.append({"check": name, "rel_l2": value, "tolerance": tol, "ok": ok, "asserted": must})
        mark = ("ok" if ok else "FAIL") if must else ("within" if ok else "over")
        print(f"  [{mark:6}] {name}: rel L2 {value:.3e} (tolerance {tol:.0e}{'' if must else ', reported'})")
        return ok

    def note(self, name, text):
        self.rows.append({"check": name, "note": text})
        print(f"  [note  ] {name}: {text}")

    def failed(self):
        return [r for r in self.rows if r.get("asserted") and not r["ok"]]


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def run(cmd, expect_ok=True):
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    out = p.stdout + p.stderr
    print("  " + out.strip().replace("\n", "\n  ") + f"\n  ({time.time() - start:.1f} s, exit {p.returncode})")
    if expect_ok and p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {cmd[1]} failed with exit {p.returncode}")
    return out


def load_logits(path):
    with safe_open(path, framework="pt") as f:
        return f.get_tensor("logits").double()


def fathom_logits(args, source, tokens, name, dtype="f64"):
    out = os.path.join(args.out, f"logits_{name}.safetensors")
    run([args.fathom, "logits", source, "--tokens", tokens, "--out", out, "--dtype", dtype])
    return load_logits(out)


def hf_model(path, dtype, device="cpu", **kwargs):
    config = AutoConfig.from_pretrained(path, attn_implementation="sdpa", experts_implementation="eager")
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, **kwargs)
    if device != "cpu" and "device_map" not in kwargs:
        model = model.to(device)
    return model.eval()


def hf_logits(model, ids):
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=ids.to(device), use_cache=False).logits.double().cpu()


# ---------------------------------------------------------------------------------------------------
# 1. Import: transformers saves, fathom reads.

def small_config(mtp_layers=0):
    return DeepseekV3Config(
        vocab_size=112, hidden_size=72, intermediate_size=152, moe_intermediate_size=20, num_hidden_layers=3,
        first_k_dense_replace=1, num_attention_heads=3, num_key_value_heads=3, q_lora_rank=36, kv_lora_rank=28,
        qk_nope_head_dim=10, qk_rope_head_dim=8, v_head_dim=14, n_routed_experts=8, n_shared_experts=2,
        num_experts_per_tok=3, n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
        max_position_embeddings=128, rms_norm_eps=1e-5, rope_interleave=True, tie_word_embeddings=False,
        attention_bias=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 32, "beta_fast": 32.0, "beta_slow": 1.0,
                         "mscale": 0.707, "mscale_all_dim": 1.0},
        attn_implementation="sdpa", experts_implementation="eager")


def reinitialise(model, seed):
    """Larger values than transformers' init so a wrong term shows; every value exactly an f32."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        named = dict(model.named_parameters())
        named.update((n, b) for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
        for name in sorted(named):
            p = named[name]
            if name.endswith("e_score_correction_bias"):
                p.copy_(torch.empty(p.shape).uniform_(-0.05, 0.05, generator=gen))
            elif p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                std = 1.0 if name == "model.embed_tokens.weight" else 0.15
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def weight_map(path):
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return json.load(f)["weight_map"]
    with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as f:
        return {k: "model.safetensors" for k in f.keys()}


def add_mtp_layer(src, dst, config, seed):
    """A copy of `src` with MTP module 1 (layer N) as DeepSeek-V3's release stores it: embed_tokens and
    shared_head.head (copies of the main ones), enorm, hnorm, eh_proj and a decoder layer with the tensors
    layer N-1 has, in a shard of its own; config.json gets num_nextn_predict_layers 1."""
    shutil.copytree(src, dst)
    wmap = weight_map(dst)
    n = config.num_hidden_layers
    gen = torch.Generator().manual_seed(seed)
    handles = {}

    def tensor(name):
        file = wmap[name]
        if file not in handles:
            handles[file] = safe_open(os.path.join(dst, file), framework="pt")
        return handles[file].get_tensor(name)

    mtp = {}
    prefix = f"model.layers.{n - 1}."
    for name in wmap:
        if name.startswith(prefix):
            t = tensor(name)
            new = f"model.layers.{n}." + name[len(prefix):]
            mtp[new] = (1 + 0.1 * torch.randn(t.shape, generator=gen)) if t.dim() == 1 else \
                torch.randn(t.shape, generator=gen) * 0.15
            if name.endswith("e_score_correction_bias"):
                mtp[new] = torch.empty(t.shape).uniform_(-0.05, 0.05, generator=gen)
            mtp[new] = mtp[new].to(t.dtype)
    h = config.hidden_size
    dtype = tensor("model.norm.weight").dtype
    mtp[f"model.layers.{n}.embed_tokens.weight"] = tensor("model.embed_tokens.weight")
    mtp[f"model.layers.{n}.shared_head.head.weight"] = tensor("lm_head.weight")
    for norm in ("enorm", "hnorm", "shared_head.norm"):
        mtp[f"model.layers.{n}.{norm}.weight"] = (1 + 0.1 * torch.randn(h, generator=gen)).to(dtype)
    mtp[f"model.layers.{n}.eh_proj.weight"] = (torch.randn(h, 2 * h, generator=gen) * 0.15).to(dtype)
    save_file({k: v.contiguous() for k, v in mtp.items()}, os.path.join(dst, "model-mtp.safetensors"),
              metadata={"format": "pt"})
    index_path = os.path.join(dst, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    index["weight_map"].update({k: "model-mtp.safetensors" for k in mtp})
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(dst, "config.json")) as f:
        cfg = json.load(f)
    cfg["num_nextn_predict_layers"] = 1
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def import_checks(args, report, seed):
    print("\n== 1. import: directories transformers saved, read by fathom ==")
    config = small_config()
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(config).float().eval()
    reinitialise(model, seed)
    ids = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(seed + 1))
    tokens = os.path.join(args.out, "import_tokens.safetensors")
    save_file({"input_ids": ids}, tokens)

    dirs = {}
    for dtype in ("f32", "bf16"):
        path = os.path.join(args.out, f"transformers_{dtype}")
        saved = model if dtype == "f32" else DeepseekV3ForCausalLM(config).eval()
        if dtype == "bf16":
            saved.load_state_dict(model.state_dict())
            saved = saved.to(torch.bfloat16)
        saved.save_pretrained(path, max_shard_size="100KB")
        names = weight_map(path)
        fused = any(k.endswith("experts.gate_up_proj") for k in names)
        report.note(f"transformers {dtype} save", f"{len(set(names.values()))} shards, {len(names)} tensors, "
                    f"experts {'fused (gate_up_proj)' if fused else 'per expert'}")
        dirs[dtype] = path
    mtp_dir = os.path.join(args.out, "transformers_f32_mtp")
    add_mtp_layer(dirs["f32"], mtp_dir, config, seed + 2)
    dirs["f32_mtp"] = mtp_dir

    for name, path in dirs.items():
        ref = hf_logits(hf_model(path, torch.float64), ids)  # the saved weights (bf16: rounded), in f64
        ckpt = os.path.join(args.out, f"imported_{name}")
        run([args.fathom, "import", path, "--out", ckpt])
        ours = fathom_logits(args, ckpt, tokens, f"imported_{name}")
        report.check(f"import {name}: fathom f64 (imported checkpoint) vs transformers f64", rel_l2(ours, ref),
                     SAME_WEIGHTS_TOL)
        direct = fathom_logits(args, path, tokens, f"direct_{name}")
        report.check(f"import {name}: fathom f64 (the directory, as model.init_from) vs transformers f64",
                     rel_l2(direct, ref), SAME_WEIGHTS_TOL)
        ours32 = fathom_logits(args, ckpt, tokens, f"imported_{name}_f32", dtype="f32")
        report.check(f"import {name}: fathom f32 vs transformers f64", rel_l2(ours32, ref), F32_TOL)
    return os.path.join(args.out, "imported_f32_mtp")


# ---------------------------------------------------------------------------------------------------
# 2. Export: fathom writes, transformers reads.

def dequantize_directory(src, dst):
    """`src` (an FP8 export) with every e4m3 weight replaced by weight x weight_scale_inv in f32 (each
    128x128 block times its scale: the product fathom computes), the scales dropped, no
    quantization_config."""
    os.makedirs(dst, exist_ok=True)
    wmap = weight_map(src)
    handles = {f: safe_open(os.path.join(src, f), framework="pt") for f in set(wmap.values())}
    out_map = {}
    for file in sorted(set(wmap.values())):
        tensors = {}
        for name in handles[file].keys():
            if name.endswith("_scale_inv"):
                continue
            t = handles[file].get_tensor(name)
            if t.dtype == torch.float8_e4m3fn:
                s = handles[wmap[name + "_scale_inv"]].get_tensor(name + "_scale_inv")
                rows, cols = t.shape
                s = s.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
                t = t.to(torch.float32) * s
            tensors[name] = t.to(torch.float32).contiguous()
            out_map[name] = file
        save_file(tensors, os.path.join(dst, file), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = "float32"
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": out_map}, f, indent=2)


def export_checks(args, report, checkpoint, seed):
    print(f"\n== 2. export: {checkpoint} written by fathom, read by transformers ==")
    exported = {}
    for dtype in ("f32", "bf16", "fp8"):
        path = os.path.join(args.out, f"exported_{dtype}")
        out = run([args.fathom, "export", checkpoint, "--out", path, "--dtype", dtype,
                   "--shard-size", args.shard_size])
        m = re.search(r"([\d.]+) GB \w+ in ([\d.]+) s \(([\d.]+) GB/s written", out)
        if m:
            report.note(f"export {dtype}", f"{m.group(1)} GB in {m.group(2)} s, {m.group(3)} GB/s written")
        exported[dtype] = path
    with open(os.path.join(exported["f32"], "config.json")) as f:
        cfg = json.load(f)
    seq = min(args.seq, cfg["max_position_embeddings"])
    ids = torch.randint(0, cfg["vocab_size"], (args.batch, seq), generator=torch.Generator().manual_seed(seed))
    tokens = os.path.join(args.out, "export_tokens.safetensors")
    save_file({"input_ids": ids}, tokens)

    ckpt64 = fathom_logits(args, checkpoint, tokens, "checkpoint")
    # f32: the master weights bit for bit.
    same = fathom_logits(args, exported["f32"], tokens, "exported_f32")
    report.check("export f32: fathom f64 on the directory vs on the checkpoint (same weights)",
                 rel_l2(same, ckpt64), 0.0)
    ref = hf_logits(hf_model(exported["f32"], torch.float64), ids)
    report.check("export f32: transformers f64 vs fathom f64 on the checkpoint", rel_l2(ref, ckpt64),
                 SAME_WEIGHTS_TOL)
    ckpt32 = fathom_logits(args, checkpoint, tokens, "checkpoint_f32", dtype="f32")
    hf32 = hf_logits(hf_model(exported["f32"], torch.float32), ids)
    report.check("export f32: transformers f32 vs fathom f32", rel_l2(hf32, ckpt32), F32_TOL)

    # bf16: the weights rounded to bf16.
    bf16_ours = fathom_logits(args, exported["bf16"], tokens, "exported_bf16")
    bf16_ref = hf_logits(hf_model(exported["bf16"], torch.float64), ids)
    report.check("export bf16: transformers f64 vs fathom f64 on the directory", rel_l2(bf16_ref, bf16_ours),
                 SAME_WEIGHTS_TOL)
    report.check("export bf16: bf16-rounded weights vs the f32 checkpoint (both f64)", rel_l2(bf16_ours, ckpt64),
                 BF16_TOL, must=False)
    if torch.cuda.is_available():
        native = hf_logits(hf_model(exported["bf16"], torch.bfloat16, device="cuda"), ids)
        report.check("export bf16: transformers bf16 on the GPU vs fathom f64 on the directory",
                     rel_l2(native, bf16_ours), BF16_TOL, must=False)

    # fp8: e4m3 Linear weights with 128x128 block scales.
    fp8_ours = fathom_logits(args, exported["fp8"], tokens, "exported_fp8")
    dequantized = os.path.join(args.out, "exported_fp8_dequantized")
    dequantize_directory(exported["fp8"], dequantized)
    fp8_ref = hf_logits(hf_model(dequantized, torch.float64), ids)
    report.check("export fp8: transformers f64 on the dequantized directory vs fathom f64 on the fp8 directory",
                 rel_l2(fp8_ref, fp8_ours), SAME_WEIGHTS_TOL)
    report.check("export fp8: FP8 weights vs bf16 weights (both f64): the FP8 error", rel_l2(fp8_ours, bf16_ours),
                 BF16_TOL, must=False)
    report.check("export fp8: FP8 weights vs the f32 checkpoint (both f64)", rel_l2(fp8_ours, ckpt64), BF16_TOL,
                 must=False)
    if torch.cuda.is_available():
        try:
            native = hf_logits(hf_model(exported["fp8"], torch.bfloat16, device="cuda", device_map="cuda"), ids)
            report.check("export fp8: transformers fine-grained FP8 on the GPU vs fathom f64 on the fp8 directory",
                         rel_l2(native, fp8_ours), FP8_NATIVE_TOL, must=False)
        except Exception as e:  # a transformers without the kernels it needs: say so, the rest stands
            report.note("export fp8: transformers fine-grained FP8 on the GPU", f"did not load: {e!r}"[:300])
    try:
        from transformers import FineGrainedFP8Config
        model = hf_model(exported["fp8"], torch.float32, quantization_config=FineGrainedFP8Config(dequantize=True))
        report.check("export fp8: transformers' own dequantization (dequantize=True) vs fathom f64",
                     rel_l2(hf_logits(model, ids), fp8_ours), BF16_TOL, must=False)
    except Exception as e:
        report.note("export fp8: transformers' own dequantization", f"did not load: {e!r}"[:300])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fathom", default="build/fathom", help="the fathom binary")
    parser.add_argument("--out", required=True, help="a new directory for everything this writes")
    parser.add_argument("--checkpoint", help="a fathom checkpoint to export (default: step 1's import)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--shard-size", default="1GB")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    args = parser.parse_args()
    if os.path.exists(args.out) and os.listdir(args.out):
        sys.exit(f"--out {args.out} exists and is not empty")
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(min(16, os.cpu_count() or 1))
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, seed {args.seed}")
    report = Report()
    imported = import_checks(args, report, args.seed)
    export_checks(args, report, args.checkpoint or imported, args.seed + 7)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"seed": args.seed, "torch": torch.__version__, "transformers": transformers.__version__,
                   "rows": report.rows}, f, indent=2)
    failed = report.failed()
    print(f"\n{len(failed)} failed of {sum(1 for r in report.rows if r.get('asserted'))} asserted checks"
          f" (report: {os.path.join(args.out, 'report.json')})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

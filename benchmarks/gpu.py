"""BERT-base full/LoRA training speed, memory and MFU: python benchmarks/gpu.py --modes full,lora --json gpu.json"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, BertConfig

# Dense (not 2:4 sparse) bf16 peaks in TFLOP/s; the first matching pattern wins, so specific names go first.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("A10G", 125.0),
    ("L4", 121.0),
]
LORA_TARGETS = ["query", "key", "value", "dense"]


def peak_tflops_for(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by its `torch.cuda.get_device_name()`, or None when it is not in the table."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        # Word boundaries keep "L4" from matching "L40S".
        if re.search(rf"\b{re.escape(pattern)}\b", device_name):
            return tflops
    return None


def train_flops_per_sample(
    matmul_params: int, trainable_matmul_params: int, layers: int, hidden: int, seq_len: int
) -> int:
    """Model FLOPs of one training sample (forward + backward), the numerator of MFU.

    Per token, a matmul weight costs 2 FLOPs in the forward, 2 in the backward to the activations and 2 more for its
    own weight gradient, which frozen weights skip: (4 * N + 2 * N_trainable) * seq_len. That is 6N for full
    fine-tuning and 4N + 6A for LoRA (N frozen base weights plus A adapter weights). Attention scores and their
    weighted sum cost 2 * 2 * seq_len^2 * hidden per layer forward and twice that backward, with no weights to freeze:
    12 * layers * hidden * seq_len^2. Embeddings are lookups, and the pooler and classifier see one token per sample
    (<1% of BERT-base), so neither is counted.
    """
    return (4 * matmul_params + 2 * trainable_matmul_params) * seq_len + 12 * layers * hidden * seq_len**2


def encoder_matmul_params(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) weights of the encoder's linear layers, LoRA adapters included."""
    total = trainable = 0
    for name, module in model.named_modules():
        if "encoder." in name and isinstance(module, nn.Linear):
            total += module.weight.numel()
            trainable += module.weight.numel() if module.weight.requires_grad else 0
    return total, trainable


def bert_config(tiny: bool) -> BertConfig:
    if tiny:
        return BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=2
        )
    return BertConfig(num_labels=2)


def build_model(config: BertConfig, mode: str, lora_r: int) -> nn.Module:
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    if mode == "lora":
        # Imported here because importing peft takes several seconds, which full mode and the FLOPs helpers skip.
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS, r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules=LORA_TARGETS
        )
        model = get_peft_model(model, lora)
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(args: argparse.Namespace, config: BertConfig, mode: str, device: torch.device) -> dict:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = build_model(config, mode, args.lora_r).to(device).train()
    total_params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    matmul_params, trainable_matmul_params = encoder_matmul_params(model)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")
    step_model = torch.compile(model) if args.compile else model

    # Synthetic, fixed-length batch created once on the device so that input pipelines and padding are not measured.
    input_ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len), device=device)
    labels = torch.randint(0, config.num_labels, (args.batch_size,), device=device)
    # bf16 autocast on GPU; plain fp32 on CPU, where bf16 is slow without AMX.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            start = time.perf_counter()
        with autocast:
            loss = step_model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - start

    samples_per_s = args.steps * args.batch_size / seconds
    flops = train_flops_per_sample(
        matmul_params, trainable_matmul_params, config.num_hidden_layers, config.hidden_size, args.seq_len
    )
    tflops = flops * samples_per_s / 1e12
    result = {
        "mode": mode,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "seconds": seconds,
        "samples_per_s": samples_per_s,
        "tokens_per_s": samples_per_s * args.seq_len,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "total_params": total_params,
        "trainable_params": sum(p.numel() for p in trainable),
        "encoder_matmul_params": matmul_params,
        "encoder_trainable_matmul_params": trainable_matmul_params,
        "flops_per_sample": flops,
        "tflops": tflops,
        "mfu": tflops / args.peak_tflops if args.peak_tflops else None,
        "final_loss": loss.item(),
    }
    del model, step_model, optimizer, loss
    return result


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| mode | batch | seq | samples/s | tokens/s | peak mem GiB | TFLOP/s | MFU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        lines.append(
            f"| {r['mode']} | {r['batch_size']} | {r['seq_len']} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f}"
            f" | {fmt(r['peak_mem_gib'], '.2f')} | {r['tflops']:.2f} | {fmt(mfu, '.1f')} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modes", default="full,lora", help="comma-separated subset of full,lora")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before timing")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="hidden 32, 2 layers: a CPU smoke test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak; default looked up by GPU name")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"full", "lora"}:
        parser.error("--modes takes full, lora or both")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if args.peak_tflops is None and device.type == "cuda":
        args.peak_tflops = peak_tflops_for(device_name)
    config = bert_config(args.tiny)
    results = [run_mode(args, config, mode, device) for mode in args.modes]

    print(f"{device_name} | peak bf16 dense TFLOP/s: {fmt(args.peak_tflops, '.0f')} | torch {torch.__version__}")
    print(markdown_table(results))
    if args.json:
        report = {
            "device": device_name,
            "peak_tflops": args.peak_tflops,
            "versions": {name: version(name) for name in ("torch", "transformers", "peft")},
            "config": {"tiny": args.tiny, "layers": config.num_hidden_layers, "hidden": config.hidden_size},
            "compile": args.compile,
            "lora_r": args.lora_r,
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

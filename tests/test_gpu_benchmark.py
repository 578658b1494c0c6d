"""CPU smoke test of benchmarks/gpu.py and a hand check of its FLOPs formula."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu() -> ModuleType:
    # benchmarks/ is not a package: the script is meant to be copied to GPU machines on its own.
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_bert_base_by_hand(gpu: ModuleType) -> None:
    # BertConfig(): 12 layers, hidden 768, intermediate 3072; per layer Q, K, V, O = 4 * 768^2, FFN = 2 * 768 * 3072.
    n = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert n == 84_934_656
    attention = 12 * 12 * 768 * 128 * 128
    assert attention == 1_811_939_328
    assert gpu.train_flops_per_sample(n, n, 12, 768, 128) == 6 * n * 128 + attention == 67_041_755_136
    # LoRA r=16 on all encoder linears: r * (d_in + d_out) per adapter, 4 attention ones plus 2 FFN ones per layer.
    a = 12 * (4 * 16 * (768 + 768) + 2 * 16 * (768 + 3072))
    assert a == 2_654_208
    assert gpu.train_flops_per_sample(n + a, a, 12, 768, 128) == (4 * n + 6 * a) * 128 + attention == 47_336_914_944


def test_peak_table(gpu: ModuleType) -> None:
    assert gpu.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989
    assert gpu.peak_tflops_for("NVIDIA H100 PCIe") == 756
    assert gpu.peak_tflops_for("NVIDIA H200") == 989
    assert gpu.peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312
    assert gpu.peak_tflops_for("NVIDIA A10G") == 125
    assert gpu.peak_tflops_for("NVIDIA L4") == 121
    assert gpu.peak_tflops_for("NVIDIA L40S") is None


def test_script_runs_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--steps", "3", "--warmup", "1", "--device", "cpu"]
    cmd += ["--batch-size", "8", "--seq-len", "32", "--lora-r", "4", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| full |" in proc.stdout and "| lora |" in proc.stdout

    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"full", "lora"}
    for r in results.values():
        assert r["samples_per_s"] > 0
        assert r["mfu"] is None and r["peak_mem_gib"] is None
    assert 0 < results["lora"]["trainable_params"] < results["full"]["trainable_params"]
    # Tiny encoder: 2 layers * (4 * 32^2 + 2 * 32 * 64); r=4 adapters add 4 * 4 * 64 + 2 * 4 * (32 + 64) per layer.
    assert results["full"]["encoder_trainable_matmul_params"] == 16_384
    assert results["lora"]["encoder_matmul_params"] == 16_384 + 2 * 1_792
    assert results["lora"]["encoder_trainable_matmul_params"] == 2 * 1_792

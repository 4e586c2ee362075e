"""What else speeds up the forward pass? Each option side by side with imgembed's current path.

    .venv/bin/python bench/archive/forward_options.py

Forward throughput (images/s) on a pre-made batch at 224 px, for: the current path (folded
BatchNorm, channels_last, bf16 where native), batch sizes 16/32/64/128, torch.compile
(inductor, with and without max-autotune-no-cudagraphs and freezing), TorchScript trace +
freeze, and oneDNN graph fusion (torch.jit.enable_onednn_fusion). Options that fail are
reported as such.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: common, quality, quality_data

import time

import torch

from imgembed.model.network import load_model
from imgembed.model.precision import autocast, resolve

from common import images_per_second


def main() -> None:
    precision = resolve("auto")
    model = load_model(precision=precision)
    print(f"precision {precision}, threads {torch.get_num_threads()}")

    def current(x):
        with torch.inference_mode(), autocast(precision):
            return model(x)

    rows = []
    for bs in (16, 32, 64, 128):
        x = torch.randn(bs, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        rows.append((f"current path, batch {bs}", images_per_second(current, x, warmup=2)))
    x = torch.randn(64, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    base = rows[2][1]

    for name, kwargs in (("torch.compile (inductor)", {}),
                         ("torch.compile max-autotune-no-cudagraphs", {"mode": "max-autotune-no-cudagraphs"})):
        try:
            compiled = torch.compile(model, **kwargs)

            def run(x, compiled=compiled):
                with torch.inference_mode(), autocast(precision):
                    return compiled(x)
            start = time.perf_counter()
            run(x)
            warm = time.perf_counter() - start
            rows.append((f"{name} (compile {warm:.0f} s)", images_per_second(run, x, warmup=2)))
        except Exception as e:  # noqa: BLE001 - report and go on
            rows.append((f"{name}: failed ({type(e).__name__})", 0.0))

    def traced_rate(onednn_fusion: bool) -> float:
        torch.jit.enable_onednn_fusion(onednn_fusion)
        try:
            with torch.inference_mode(), autocast(precision):
                traced = torch.jit.freeze(torch.jit.trace(model.eval(), x[:2]))

            def run_traced(x):
                with torch.inference_mode(), autocast(precision):
                    return traced(x)
            return images_per_second(run_traced, x, warmup=2)
        finally:
            torch.jit.enable_onednn_fusion(False)

    try:
        rows.append(("TorchScript trace + freeze", traced_rate(False)))
        rows.append(("TorchScript + oneDNN graph fusion", traced_rate(True)))
    except Exception as e:  # noqa: BLE001
        rows.append((f"TorchScript: failed ({type(e).__name__}: {str(e)[:60]})", 0.0))

    for name, r in rows:
        print(f"{name:<58} {r:7.1f} images/s  {r / base:4.2f}x")


if __name__ == "__main__":
    main()

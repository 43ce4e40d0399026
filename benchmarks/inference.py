"""torch against onnxruntime on the demo's model, side by side in one process.

The model is `fashion_fast`'s network with its heads, wrapped as `cnnlab export` writes it
(uint8 images in, normalization and the recipe's test-time views inside: ten views of each
image for the demo), built fresh (the weights do not change the time). torch runs the same
module in fp32 under inference_mode; onnxruntime runs the exported file on its CPU provider.
Both use every thread torch uses. Latency: one image at a time, the median of --repeats
calls after a warm-up. Throughput: batches of 256 images.

    PYTHONPATH=. .venv/bin/python benchmarks/inference.py [--repeats 50] [--no-views]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cnnlab.api import load_recipe
from cnnlab.build import build
from cnnlab.export import INPUT, export_module, wrap
from cnnlab.runs import device_name


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: allocations, first-call setup
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed calls at batch 1")
    parser.add_argument("--batches", type=int, default=5, help="timed batches of 256")
    parser.add_argument("--no-views", action="store_true", help="without test-time views")
    args = parser.parse_args()
    import onnxruntime as ort

    overrides = {"train.device": "cpu", "data.test_subset": 512}
    if args.no_views:
        overrides["train.tta"] = []
    recipe = load_recipe("fashion_fast", overrides)
    module = wrap(build(recipe, device="cpu"))
    images = build(recipe, device="cpu").splits.test.images.cpu()[:512]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_module(module, images[:2], Path(tmp) / "model.onnx", "onnx", recipe.name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def torch_run(x: torch.Tensor):
            with torch.inference_mode():
                return module(x)

        def ort_run(x: np.ndarray):
            return session.run(None, {INPUT: x})

        one_t, one_o = images[:1], images[:1].numpy()
        big_t, big_o = images[:256], np.ascontiguousarray(images[:256].numpy())
        rows = [
            ("torch (fp32, inference_mode)", timed(lambda: torch_run(one_t), args.repeats),
             timed(lambda: torch_run(big_t), args.batches)),
            ("onnxruntime (CPU provider)", timed(lambda: ort_run(one_o), args.repeats),
             timed(lambda: ort_run(big_o), args.batches)),
        ]  # fmt: skip
    views = len(module.views.views) if module.views is not None else 1
    print(f"device: {device_name(torch.device('cpu'))}, threads: {torch.get_num_threads()}")
    print(f"model: {recipe.name}, {views} view(s) of each image, uint8 1x28x28 in")
    print(f"{'engine':32s} {'batch 1: ms':>12s} {'batch 256: images/s':>20s}")
    base = None
    for name, latency, throughput in rows:
        ms = statistics.median(latency) * 1000
        ips = 256 / statistics.median(throughput)
        print(f"{name:32s} {ms:12.2f} {ips:20,.0f}")
        base = base or (ms, ips)
    ms, ips = statistics.median(rows[1][1]) * 1000, 256 / statistics.median(rows[1][2])
    print(f"onnxruntime / torch: latency {ms / base[0]:.2f}x, throughput {ips / base[1]:.2f}x")


if __name__ == "__main__":
    main()

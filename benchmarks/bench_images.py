"""Image benchmarks: embedding throughput of the image base on 2 cores, and classify latency of one image.

    python benchmarks/bench_images.py [--quick]

1. Embeddings per second with `efficientnet-lite0` (the `vision-moderation` base), on 2 threads:
   - ONNX Runtime, end to end: normalised JPEG bytes -> decode at reduced scale -> 224x224 -> the exported
     backbone (what serving does). Aim: 150 images/s or more on a 2-core box.
   - the in-process ceiling: the same ONNX graph on pixels already prepared (no decoding);
   - the naive alternative: eager torch on the same prepared pixels.
2. Classify latency p50/p95 for one 200 KB JPEG with a trained `vision-moderation` model (ONNX): the image
   check and normalisation (`arbiter.images.decode_image`) plus the prediction, fetch excluded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
THREADS = 2


def _jpeg(i: int, *, side: int, quality: int = 90) -> bytes:
    from arbiter.testing.images import make_image

    yes = i % 2 == 0
    colour = (200 + i % 40, 30 + i % 60, 20) if yes else (20, 30 + i % 60, 200 + i % 40)
    return make_image("JPEG", size=(side, side * 3 // 4), color=colour, noise=True, quality=quality)


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def embedding_throughput(count: int) -> dict[str, float]:
    import onnxruntime
    import torch

    from arbiter.images import decode_image
    from arbiter.ml.image_encoders import ImageEncoder, pixels, remember_image

    torch.set_num_threads(THREADS)
    images = [decode_image(_jpeg(i, side=640)) for i in range(count)]
    keys = [remember_image(image.sha256, image.data) for image in images]
    encoder = ImageEncoder.load("efficientnet-lite0", device=torch.device("cpu"))
    with tempfile.TemporaryDirectory() as folder:
        path = encoder.onnx_export(Path(folder) / "encoder.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    batch_size = 16

    def onnx_end_to_end() -> None:
        for start in range(0, count, batch_size):
            batch = np.stack([pixels(image.data) for image in images[start : start + batch_size]])
            session.run(None, {"pixel_values": batch})

    prepared = np.stack([pixels(image.data) for image in images])

    def onnx_ceiling() -> None:
        for start in range(0, count, batch_size):
            session.run(None, {"pixel_values": prepared[start : start + batch_size]})

    def torch_eager() -> None:
        with torch.inference_mode():
            for start in range(0, count, batch_size):
                encoder.model(torch.from_numpy(prepared[start : start + batch_size]))

    results = {}
    for name, run in (("onnx", onnx_end_to_end), ("onnx_ceiling", onnx_ceiling), ("torch", torch_eager)):
        run()  # warm-up (allocations, lazy initialisation)
        started = time.perf_counter()
        run()
        results[name] = _rate(count, time.perf_counter() - started)
    del keys
    return results


def classify_latency(samples: int) -> dict[str, float]:
    from arbiter.images import decode_image
    from arbiter.ml import HeadSpec, Predictor, TrainOptions, train_from_snapshot
    from arbiter.ml.image_encoders import remember_image

    rows = []
    for i in range(24):
        image = decode_image(_jpeg(i, side=96))
        rows.append(
            {
                "row": i,
                "input": remember_image(image.sha256, image.data),
                "labels": {"tobacco": ["yes_tobacco" if i % 2 == 0 else "no_tobacco"]},
                "split": "train",
            }
        )
    # About 200 KB: a 900x675 noisy JPEG at quality 80.
    quality, side = 80, 900
    picture = _jpeg(1000, side=side, quality=quality)
    with tempfile.TemporaryDirectory() as folder:
        result = train_from_snapshot(
            rows=rows,
            heads=[HeadSpec(name="tobacco", labels=("no_tobacco", "yes_tobacco"))],
            out_dir=Path(folder) / "artifact",
            options=TrainOptions(strategy="head", max_epochs=20),
            base_model="vision-moderation",
        )
        predictor = Predictor.load(result.artifact, runtime="onnx", threads=THREADS)
        timings = []
        for _ in range(samples + 3):
            started = time.perf_counter()
            image = decode_image(picture)
            predictor.predict([remember_image(image.sha256, image.data)])
            timings.append((time.perf_counter() - started) * 1000)
        timings = timings[3:]
    return {
        "bytes": len(picture),
        "p50_ms": statistics.median(timings),
        "p95_ms": sorted(timings)[int(0.95 * (len(timings) - 1))],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    count = 32 if args.quick else 256
    samples = 10 if args.quick else 50
    print(f"image embeddings, efficientnet-lite0, {THREADS} threads, {count} images (640x480 JPEG sources)")
    rates = embedding_throughput(count)
    print(f"  {'runtime':<32}{'images/s':>10}{'vs torch':>10}")
    labels = {
        "onnx": "ONNX, decode included (serving)",
        "onnx_ceiling": "ONNX, pixels ready (ceiling)",
        "torch": "torch eager, pixels ready",
    }
    for name, label in labels.items():
        print(f"  {label:<32}{rates[name]:>10.1f}{rates[name] / rates['torch']:>9.2f}x")
    print(f"  serving reaches {rates['onnx'] / rates['onnx_ceiling']:.0%} of the ceiling; aim: 150 images/s")
    print()
    latency = classify_latency(samples)
    print(
        f"classify one {latency['bytes'] / 1024:.0f} KB JPEG (vision-moderation + a trained head, ONNX, "
        f"checks included, fetch excluded): p50 {latency['p50_ms']:.1f} ms, p95 {latency['p95_ms']:.1f} ms"
    )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

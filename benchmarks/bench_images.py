"""Image benchmarks: embedding throughput of the image base on 2 cores, and classify latency of one image.

    python benchmarks/bench_images.py [--quick]

1. Embeddings per second with `efficientnet-lite0` (the `vision-moderation` base), on 2 threads:
   - ONNX Runtime, end to end: normalised JPEG bytes -> decode at reduced scale -> 224x224 -> the exported
     backbone (what serving does). Aim: 150 images/s or more on a 2-core box.
   - the in-process ceiling: the same ONNX graph on pixels already prepared (no decoding);
   - the ceiling again with ONNX Runtime's default of worker threads that spin while waiting for work (serving
     turns spinning off: on a loaded machine the spinning threads take the cores from the work);
   - the naive alternative: eager torch on the same prepared pixels;
   - static int8 (onnxruntime `quantize_static`, QDQ, per-channel weights, calibrated on 16 other images) on the
     prepared pixels, with its embeddings' cosine to fp32. Not served: it is faster, but per-tensor int8
     activations wreck this backbone's embeddings (the swish stem's channels span 1 to 70; quantising the stem
     conv alone already drops the cosine to about 0.6), far below the 0.99 a served graph would need.
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


class _Calibration:
    """onnxruntime's calibration reader over a fixed array of pixels, four at a time."""

    def __init__(self, prepared: np.ndarray) -> None:
        self.batches = iter([{"pixel_values": prepared[i : i + 4]} for i in range(0, len(prepared), 4)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _static_int8(fp32: Path) -> Path:
    """The backbone statically quantised (QDQ, uint8 activations, per-channel int8 weights), calibrated on 16
    generated images that are not among the measured ones."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from arbiter.ml.image_encoders import pixels

    prepared = fp32.with_name("encoder.pre.onnx")
    quant_pre_process(str(fp32), str(prepared))
    target = fp32.with_name("encoder.static-int8.onnx")
    calibration = np.stack([pixels(_jpeg(500 + i, side=320)) for i in range(16)])
    quantize_static(
        str(prepared),
        str(target),
        _Calibration(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    return target


def embedding_throughput(count: int) -> dict[str, float]:
    import onnxruntime
    import torch

    from arbiter.images import decode_image
    from arbiter.ml.image_encoders import ImageEncoder, onnx_session_options, pixels, remember_image

    torch.set_num_threads(THREADS)
    images = [decode_image(_jpeg(i, side=640)) for i in range(count)]
    keys = [remember_image(image.sha256, image.data) for image in images]
    encoder = ImageEncoder.load("efficientnet-lite0", device=torch.device("cpu"))
    options = onnx_session_options(THREADS)  # what serving uses: worker threads do not spin
    spinning = onnx_session_options(THREADS, spin=True)  # ONNX Runtime's default
    with tempfile.TemporaryDirectory() as folder:
        path = encoder.onnx_export(Path(folder) / "encoder.onnx")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        spinning_session = onnxruntime.InferenceSession(
            str(path), spinning, providers=["CPUExecutionProvider"]
        )
        int8 = onnxruntime.InferenceSession(
            str(_static_int8(path)), options, providers=["CPUExecutionProvider"]
        )
    batch_size = 16

    def onnx_end_to_end() -> None:
        for start in range(0, count, batch_size):
            batch = np.stack([pixels(image.data) for image in images[start : start + batch_size]])
            session.run(None, {"pixel_values": batch})

    prepared = np.stack([pixels(image.data) for image in images])

    def onnx_ceiling() -> None:
        for start in range(0, count, batch_size):
            session.run(None, {"pixel_values": prepared[start : start + batch_size]})

    def onnx_spinning() -> None:
        for start in range(0, count, batch_size):
            spinning_session.run(None, {"pixel_values": prepared[start : start + batch_size]})

    def onnx_static_int8() -> None:
        for start in range(0, count, batch_size):
            int8.run(None, {"pixel_values": prepared[start : start + batch_size]})

    def torch_eager() -> None:
        with torch.inference_mode():
            for start in range(0, count, batch_size):
                encoder.model(torch.from_numpy(prepared[start : start + batch_size]))

    results = {}
    runs = (
        ("onnx", onnx_end_to_end),
        ("onnx_ceiling", onnx_ceiling),
        ("spinning", onnx_spinning),
        ("static_int8", onnx_static_int8),
        ("torch", torch_eager),
    )
    for name, run in runs:
        run()  # warm-up (allocations, lazy initialisation)
        started = time.perf_counter()
        run()
        results[name] = _rate(count, time.perf_counter() - started)
    # Both graphs return L2-normalised embeddings: the dot product is the cosine.
    (fp32_values,) = session.run(None, {"pixel_values": prepared})
    (int8_values,) = int8.run(None, {"pixel_values": prepared})
    cosine = np.sum(np.asarray(fp32_values) * np.asarray(int8_values), axis=1)
    results["static_int8_cosine_min"] = float(cosine.min())
    results["static_int8_cosine_mean"] = float(cosine.mean())
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
    labels = {
        "onnx": "ONNX, decode included (serving)",
        "onnx_ceiling": "ONNX, pixels ready (ceiling)",
        "spinning": "ONNX ceiling, threads spinning",
        "static_int8": "ONNX static int8, pixels ready",
        "torch": "torch eager, pixels ready",
    }
    print(f"  {'runtime':<32}{'images/s':>10}{'vs torch':>10}{'vs ceiling':>12}")
    for name, label in labels.items():
        print(
            f"  {label:<32}{rates[name]:>10.1f}{rates[name] / rates['torch']:>9.2f}x"
            f"{rates[name] / rates['onnx_ceiling']:>11.2f}x"
        )
    print(f"  serving reaches {rates['onnx'] / rates['onnx_ceiling']:.0%} of the ceiling; aim: 150 images/s")
    print(
        f"  static int8 embeddings vs fp32: cosine min {rates['static_int8_cosine_min']:.3f}, mean "
        f"{rates['static_int8_cosine_mean']:.3f} (a served graph needs >= 0.99): not served"
    )
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

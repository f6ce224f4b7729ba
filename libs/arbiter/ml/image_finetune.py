"""The `full` strategy for image bases: fine-tune the image backbone together with the heads.

The same loop as text fine-tuning (`arbiter.ml.finetune`): AdamW with a linear warmup (the first
`warmup_ratio` of the steps) then linear decay to zero, gradient clipping at `max_grad_norm`, class-weighted
losses, bf16 autocast on CUDA and fp32 on CPU, the heads learning 20 times faster than the backbone, an
`EpochProgress` per epoch scored on the validation rows, early stopping on the selection rule, the best
epoch's backbone and heads kept, cancellation polled between steps, a deadline.

What differs for images:
- Each training image is augmented lightly on every step, in torch on the preprocessed tensor (there is no
  torchvision): a random resized crop (60 to 100 % of the area, aspect 3:4 to 4:3, resized back to the
  input size) and a horizontal flip half of the time, as one batched affine resampling on the device. The
  validation rows and serving see the plain image.
- The BatchNorm layers keep ImageNet's running statistics (they stay in inference mode; their scales and
  shifts train): the statistics of a batch of a few dozen images, of one task, are noisy, and a backbone
  whose statistics drift from the ones it was trained with loses more than it gains on small sets.
- The fit rows' images are decoded and preprocessed once and kept (float16) while they fit in
  `PIXEL_CACHE_BYTES`; the others are decoded again when a batch needs them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from arbiter.ml.data import LabelledRows
from arbiter.ml.finetune import finetune_optimiser
from arbiter.ml.heads import (
    CancelCheck,
    EpochTracker,
    HeadStack,
    HeadTargets,
    ProgressCallback,
    cancel_check,
)
from arbiter.ml.image_encoders import ImageEncoder
from arbiter.ml.model import HeadModel, LinearComponent
from arbiter.ml.specs import HeadSpec, TrainOptions

# A convolutional backbone takes larger steps than a transformer encoder (text: 5e-5); heads 20 times
# that (`finetune_optimiser`), 2e-3, near the 3e-3 of heads on a frozen backbone.
DEFAULT_LEARNING_RATE = 1e-4
MIN_CROP_AREA = 0.6
CROP_RATIO = (3 / 4, 4 / 3)
FLIP_PROBABILITY = 0.5
PIXEL_CACHE_BYTES = 2 * 1024**3
# Rows timed (after a warm-up pass on two) to measure a fine-tuning step's speed on a CPU, where the time
# per row hardly depends on the batch; a GPU is timed on a whole batch, which it runs far faster per row.
SPEED_SAMPLE = 8


class TrainingPixels:
    """The preprocessed pixels of a list of image keys, by position: decoded once each while they fit in
    `max_bytes` (float16), decoded again beyond."""

    def __init__(
        self, encoder: ImageEncoder, keys: Sequence[str], *, max_bytes: int = PIXEL_CACHE_BYTES
    ) -> None:
        self.encoder = encoder
        self.keys = list(keys)
        self.max_bytes = max_bytes
        self._kept: dict[str, np.ndarray] = {}
        self._size = 0

    def _one(self, key: str) -> np.ndarray:
        found = self._kept.get(key)
        if found is not None:
            return found
        values = self.encoder.pixel_batch([key])[0].astype(np.float16)
        if self._size + values.nbytes <= self.max_bytes:
            self._kept[key] = values
            self._size += values.nbytes
        return values

    def batch(self, index: Sequence[int]) -> torch.Tensor:
        """`[len(index), 3, H, W]` float32 on the CPU."""
        return torch.from_numpy(np.stack([self._one(self.keys[i]) for i in index]).astype(np.float32))


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random resized crop and a random horizontal flip per image, as one affine resampling of the batch
    (bilinear); the random draws come from `generator` (CPU), so a seed repeats them."""
    count = batch.shape[0]
    area = torch.empty(count).uniform_(MIN_CROP_AREA, 1.0, generator=generator)
    log_ratio = torch.empty(count).uniform_(
        math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator=generator
    )
    ratio = torch.exp(log_ratio)
    # Crop width and height as fractions of the image's (1: the whole side).
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    # The crop's centre, in the [-1, 1] coordinates of `affine_grid`, kept inside the image.
    centre_x = (torch.rand(count, generator=generator) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(count, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(count, generator=generator) < FLIP_PROBABILITY, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    grid = torch.nn.functional.affine_grid(
        theta.to(batch.device, batch.dtype), list(batch.shape), align_corners=False
    )
    return torch.nn.functional.grid_sample(
        batch, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def _train_mode(model: torch.nn.Module) -> None:
    """Training mode (dropout, drop-connect) with every BatchNorm layer's running statistics frozen."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def image_encoder_finetune(
    *,
    encoder: ImageEncoder,
    specs: Sequence[HeadSpec],
    fit: LabelledRows,
    valid: LabelledRows,
    options: TrainOptions,
    parents: dict[str, LinearComponent],
    on_progress: ProgressCallback | None,
    should_cancel: CancelCheck | None,
    max_epochs: int | None = None,
    deadline: float | None = None,
) -> tuple[list[HeadModel], EpochTracker]:
    """Fine-tune `encoder`'s backbone in place; on return it holds the best epoch's weights (and is marked
    fine-tuned, which its saved folder records).

    With a `deadline` (a `time.monotonic()` value) no epoch starts that would, at the pace of the epochs
    so far, end after it, and an epoch still running at the deadline ends there.
    """
    torch.manual_seed(options.seed)
    device = encoder.device
    epochs = max_epochs or options.max_epochs
    stack = HeadStack(specs, encoder.dim).to(device)
    stack.initialise(parents)
    targets = HeadTargets.from_rows(fit, class_weighting=options.class_weighting, device=device)
    pixels = TrainingPixels(encoder, fit.texts)
    learning_rate = options.learning_rate or DEFAULT_LEARNING_RATE
    trained = [parameter for parameter in encoder.model.parameters() if parameter.requires_grad]
    optimizer, scheduler = finetune_optimiser(
        trained=trained,
        heads=stack,
        learning_rate=learning_rate,
        options=options,
        rows=len(fit),
        epochs=epochs,
    )
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    parameters = [*trained, *stack.parameters()]
    generator = torch.Generator().manual_seed(options.seed)
    tracker = EpochTracker(candidate="full", options=options, valid=valid, on_progress=on_progress)
    first_started = time.monotonic()
    try:
        for epoch in range(1, epochs + 1):
            started = time.monotonic()
            _train_mode(encoder.model)
            stack.train()
            order = torch.randperm(len(fit), generator=generator)
            losses: list[float] = []
            for start in range(0, len(order), options.batch_size):
                cancel_check(should_cancel)
                if deadline is not None and losses and time.monotonic() > deadline:
                    break
                index = order[start : start + options.batch_size]
                batch = augment(pixels.batch(index.tolist()).to(device), generator)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = stack(encoder.forward_pixels(batch))
                loss = targets.loss(logits, index.to(device))
                if not loss.requires_grad:
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, options.max_grad_norm)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
            encoder.model.eval()
            encoder.weights_changed()
            valid_embeddings = encoder.embed(valid.texts)
            stack.eval()
            stop = tracker.record(
                epoch=epoch,
                train_loss=float(np.mean(losses)) if losses else 0.0,
                probabilities=stack.probabilities(valid_embeddings),
                state=lambda: {"encoder": encoder.model.state_dict(), "heads": stack.state_dict()},
                started=started,
            )
            epoch_seconds = (time.monotonic() - first_started) / epoch
            if stop or (deadline is not None and time.monotonic() + epoch_seconds > deadline):
                break
    finally:
        encoder.model.eval()
        optimizer.zero_grad(set_to_none=True)
    encoder.model.load_state_dict(tracker.best_state["encoder"])
    encoder.model.eval()
    encoder.weights_changed()
    encoder.fine_tuned = True
    stack.load_state_dict(tracker.best_state["heads"])
    return stack.head_models(), tracker


def image_finetune_speed(
    encoder: ImageEncoder, *, specs: Sequence[HeadSpec], fit: LabelledRows, options: TrainOptions
) -> float:
    """Seconds per row of one fine-tuning step, timed on a sample after a warm-up pass: decoding,
    augmenting, forward and backward through the backbone and a throwaway head, as `image_encoder_finetune`
    trains. No step is applied, so the backbone is unchanged; the optimizer's update adds about a tenth."""
    device = encoder.device
    sample = options.batch_size if device.type == "cuda" else min(options.batch_size, SPEED_SAMPLE)
    count = min(len(fit), max(1, sample))
    if count == 0:
        return 0.0
    rows = fit.subset(np.arange(count))
    stack = HeadStack(specs, encoder.dim).to(device)
    targets = HeadTargets.from_rows(rows, class_weighting=options.class_weighting, device=device)
    pixels = TrainingPixels(encoder, rows.texts)
    generator = torch.Generator().manual_seed(options.seed)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    _train_mode(encoder.model)
    timings = []
    try:
        # The first pass warms up kernels and allocations on two rows; the second is timed on all.
        for size in (min(count, 2), count):
            started = time.monotonic()
            index = list(range(size))
            batch = augment(pixels.batch(index).to(device), generator)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = stack(encoder.forward_pixels(batch))
            loss = targets.loss(logits, torch.tensor(index, device=device))
            if loss.requires_grad:
                loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings.append(time.monotonic() - started)
    finally:
        encoder.model.zero_grad(set_to_none=True)
        encoder.model.eval()
    return 1.1 * timings[-1] / count

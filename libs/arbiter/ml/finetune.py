"""The `full` strategy: fine-tune the encoder together with the heads.

AdamW with a linear warmup (the first `warmup_ratio` of the steps) then linear decay to zero, gradient
clipping at `max_grad_norm`, bf16 autocast on CUDA and fp32 on CPU. The heads start from scratch (or
from the parent) and learn 20 times faster than the encoder, whose weights are already good. The word
embedding table stays frozen: it is half of a small encoder's weights, a few epochs touch only the rows
of the tokens they see, and updating it densely doubles the time of a CPU step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from arbiter.ml.data import LabelledRows
from arbiter.ml.encoders import Encoder
from arbiter.ml.heads import (
    CancelCheck,
    Clock,
    EpochTracker,
    HeadStack,
    HeadTargets,
    ProgressCallback,
    cancel_check,
)
from arbiter.ml.model import HeadModel, LinearComponent
from arbiter.ml.specs import HeadSpec, TrainOptions

DEFAULT_LEARNING_RATE = 5e-5
HEAD_LEARNING_RATE_FACTOR = 20.0


def finetune_optimiser(
    *,
    trained: list[torch.nn.Parameter],
    heads: torch.nn.Module,
    learning_rate: float,
    options: TrainOptions,
    rows: int,
    epochs: int,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over an encoder's trained weights and its heads (the heads learn faster), with a linear warmup over
    `options.warmup_ratio` of the steps, then a linear decay to zero; shared by text and image fine-tuning."""
    optimizer = torch.optim.AdamW(
        [
            {"params": trained, "lr": learning_rate},
            {"params": heads.parameters(), "lr": learning_rate * HEAD_LEARNING_RATE_FACTOR},
        ],
        weight_decay=options.weight_decay,
    )
    total_steps = math.ceil(rows / options.batch_size) * epochs
    warmup = max(1, int(total_steps * options.warmup_ratio))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def encoder_finetune(
    *,
    encoder: Encoder,
    specs: Sequence[HeadSpec],
    fit: LabelledRows,
    valid: LabelledRows,
    options: TrainOptions,
    parents: dict[str, LinearComponent],
    on_progress: ProgressCallback | None,
    should_cancel: CancelCheck | None,
    max_epochs: int | None = None,
    deadline: float | None = None,
    clock: Clock = time.monotonic,
) -> tuple[list[HeadModel], EpochTracker]:
    """Fine-tune `encoder` in place; on return it holds the best epoch's weights.

    With a `deadline` (a `clock()` value) no epoch starts that would, at the pace of the epochs so far,
    end after it, and an epoch still running at the deadline ends there (the tracker's `stopped` says so).
    """
    torch.manual_seed(options.seed)
    device = encoder.device
    epochs = max_epochs or options.max_epochs
    stack = HeadStack(specs, encoder.dim).to(device)
    stack.initialise(parents)
    targets = HeadTargets.from_rows(fit, class_weighting=options.class_weighting, device=device)
    token_ids = encoder.tokenize(fit.texts, max_tokens=options.max_tokens)
    learning_rate = options.learning_rate or DEFAULT_LEARNING_RATE
    word_embeddings = encoder.model.get_input_embeddings().weight
    word_embeddings.requires_grad_(False)
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
    first_started = clock()
    for epoch in range(1, epochs + 1):
        started = time.monotonic()
        encoder.model.train()
        stack.train()
        order = torch.randperm(len(fit), generator=generator)
        losses: list[float] = []
        for start in range(0, len(order), options.batch_size):
            cancel_check(should_cancel)
            if deadline is not None and losses and clock() > deadline:
                break
            index = order[start : start + options.batch_size]
            input_ids, attention_mask = encoder.pad([token_ids[i] for i in index.tolist()])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = stack(encoder.forward(input_ids, attention_mask))
            loss = targets.loss(logits, index.to(device))
            if not loss.requires_grad:
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, options.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        encoder.weights_changed()
        valid_embeddings = encoder.embed(valid.texts, max_tokens=options.max_tokens, bf16=bf16)
        stack.eval()
        stop = tracker.record(
            epoch=epoch,
            train_loss=float(np.mean(losses)) if losses else 0.0,
            probabilities=stack.probabilities(valid_embeddings),
            state=lambda: {"encoder": encoder.model.state_dict(), "heads": stack.state_dict()},
            started=started,
        )
        epoch_seconds = (clock() - first_started) / epoch
        if stop:
            break
        if deadline is not None and clock() + epoch_seconds > deadline:
            if epoch < epochs:
                tracker.deadline_stop(epochs)
            break
    encoder.model.load_state_dict(tracker.best_state["encoder"])
    encoder.model.eval()
    encoder.weights_changed()
    stack.load_state_dict(tracker.best_state["heads"])
    return stack.head_models(), tracker

"""Building a snapshot (pure Python): validated rows to JSON Lines, a seeded stratified split, and the report.

The snapshot file has one line per valid row, in this exact shape (shared with the trainer):
    {"row": 17, "input": "text", "labels": {"toxicity": ["toxic"], "insult": null}, "split": "train"}
`split` is "train", "test" or null (no split requested). Rows are written in row-number order.
In an image snapshot `input` is `"sha256:<hex>"`: the fetched image's normalised bytes, stored content-addressed
in the blob store under `arbiter.images.image_blob_key(hex)` (never rewritten, so the snapshot stays as it was).
"""

from __future__ import annotations

import json
import random
import tempfile
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from services.dataset.validation import RowPlan, normalise_text

MIN_CLASS_EXAMPLES = 10
MAX_IMBALANCE = 50
REPORT_INVALID_ROWS = 100
DUPLICATE_EXAMPLES = 50
DUPLICATE_EXAMPLE_ROWS = 10

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode


@dataclass
class _Group:
    """Valid rows whose inputs are equal once normalised."""

    first_row: int
    signature: Signature
    rows: list[int] = field(default_factory=list)
    size: int = 0
    exact_texts: set[int] = field(default_factory=set)
    conflict: bool = False


@dataclass
class BuiltSnapshot:
    """The snapshot file (a temporary file, positioned at its start), its heads and its report."""

    file: IO[bytes]
    heads: list[dict[str, Any]]
    rows: int
    report: dict[str, Any]
    invalid_rows: list[dict[str, Any]]
    split: dict[str, Any] | None


Signature = tuple[tuple[Any, ...], ...]

# (row number, input cell) -> (the input to write, None) or (None, the problem that makes the row invalid).
InputResolver = Callable[[int, str], tuple[str | None, dict[str, Any] | None]]


def _signature(labels: dict[str, list[str] | None]) -> Signature:
    """A row's labels as a sortable key: (0,) where a head does not apply, else (1, label, ...)."""
    return tuple(
        (0,) if values is None else (1, *(values if len(values) < 2 else sorted(values)))
        for values in labels.values()
    )


@dataclass
class _Seen:
    """What the pass over the rows learned: counts, duplicate groups and, per valid row, its group and labels."""

    class_counts: dict[str, Counter[str]]
    total: int = 0
    valid: int = 0
    invalid_rows: list[dict[str, Any]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    not_applicable: Counter[str] = field(default_factory=Counter)
    exact_seen: set[int] = field(default_factory=set)
    groups: dict[int, _Group] = field(default_factory=dict)
    row_groups: array[int] = field(default_factory=lambda: array("q"))  # per valid row: its input's group
    row_signatures: array[int] = field(default_factory=lambda: array("l"))  # per valid row: index in labels
    signatures: dict[Signature, int] = field(default_factory=dict)
    signature_labels: list[dict[str, list[str] | None]] = field(default_factory=list)

    def add_invalid(self, number: int, line: int | None, problems: list[dict[str, Any]]) -> None:
        self.invalid_rows.append({"row": number, "line": line, "reasons": problems})
        self.reasons.update({p["code"] for p in problems})

    def add_valid(self, number: int, text: str, labels: dict[str, list[str] | None]) -> None:
        self.valid += 1
        for head, values in labels.items():
            if values is None:
                self.not_applicable[head] += 1
            else:
                self.class_counts[head].update(values)
        signature = _signature(labels)
        key = hash(normalise_text(text))
        exact = hash(text)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(first_row=number, signature=signature)
        elif group.signature != signature:
            group.conflict = True
        group.size += 1
        if len(group.rows) < DUPLICATE_EXAMPLE_ROWS:
            group.rows.append(number)
        group.exact_texts.add(exact)
        self.exact_seen.add(exact)
        self.row_groups.append(key)
        signature_id = self.signatures.get(signature)
        if signature_id is None:
            signature_id = self.signatures[signature] = len(self.signature_labels)
            self.signature_labels.append(labels)
        self.row_signatures.append(signature_id)


def build_snapshot(
    rows: Iterable[tuple[int, int | None, Sequence[Any]]],
    *,
    plan: RowPlan,
    test_percent: float | None = None,
    seed: int = 0,
    resolve_input: InputResolver | None = None,
) -> BuiltSnapshot:
    """Validate `(number, line, cells)` rows with `plan` and write the valid ones.

    Memory grows with the number of distinct inputs (for duplicates and the split), not with their text.
    """
    with tempfile.TemporaryFile() as draft:
        seen = _validate(rows, plan=plan, draft=draft, resolve_input=resolve_input)
        splits = _split(seen.row_groups, seen.groups, test_percent=test_percent, seed=seed)
        final, per_split = _with_splits(draft, splits=splits, row_signatures=seen.row_signatures)
    split_info = None
    if splits is not None:
        tested = sum(1 for s in splits if s == "test")
        split_info = {
            "test_percent": test_percent,
            "seed": seed,
            "train": seen.valid - tested,
            "test": tested,
        }
    head_manifest, report = _report(
        seen,
        plan=plan,
        split_counts=_split_counts(per_split, seen.signature_labels) if splits is not None else None,
    )
    if split_info is not None:
        report["split"] = split_info
    return BuiltSnapshot(
        file=final,
        heads=head_manifest,
        rows=seen.valid,
        report=report,
        invalid_rows=seen.invalid_rows,
        split=split_info,
    )


def _validate(
    rows: Iterable[tuple[int, int | None, Sequence[Any]]],
    *,
    plan: RowPlan,
    draft: IO[bytes],
    resolve_input: InputResolver | None = None,
) -> _Seen:
    """One pass over the rows: each is validated and counted; valid ones are written to `draft` without their
    split (which needs every row's group first)."""
    seen = _Seen(class_counts={h.head: Counter() for h in plan.heads})
    for number, line, cells in rows:
        seen.total += 1
        text, labels, problems = plan.derive(cells)
        if problems:
            seen.add_invalid(number, line, problems)
            continue
        assert text is not None
        if resolve_input is not None:
            resolved, unusable = resolve_input(number, text)
            if unusable is not None:
                seen.add_invalid(number, line, [unusable])
                continue
            assert resolved is not None
            text = resolved
        seen.add_valid(number, text, labels)
        draft.write(_dumps({"row": number, "input": text, "labels": labels})[:-1].encode() + b"\n")
    return seen


def _with_splits(
    draft: IO[bytes], *, splits: list[str] | None, row_signatures: array[int]
) -> tuple[IO[bytes], dict[str, Counter[int]]]:
    """The snapshot file: each draft line closed with its split; and how many rows of each label signature
    went to each split."""
    draft.seek(0)
    final = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller inside BuiltSnapshot
    per_split: dict[str, Counter[int]] = {"train": Counter(), "test": Counter()}
    for index, prefix in enumerate(draft):
        split = splits[index] if splits is not None else None
        final.write(
            prefix[:-1] + (b', "split": "%s"}\n' % split.encode() if split else b', "split": null}\n')
        )
        if split is not None:
            per_split[split][row_signatures[index]] += 1
    final.seek(0)
    return final, per_split


def _split_counts(
    per_split: dict[str, Counter[int]], signature_labels: list[dict[str, list[str] | None]]
) -> dict[str, dict[str, Counter[str]]]:
    """Per split, head and label: how many rows."""
    split_counts: dict[str, dict[str, Counter[str]]] = {
        "train": defaultdict(Counter),
        "test": defaultdict(Counter),
    }
    for split_name, by_signature in per_split.items():
        for signature_id, count in by_signature.items():
            for head, values in signature_labels[signature_id].items():
                for label in values or ():
                    split_counts[split_name][head][label] += count
    return split_counts


def _report(
    seen: _Seen, *, plan: RowPlan, split_counts: dict[str, dict[str, Counter[str]]] | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The heads' manifest and the validation report."""
    head_manifest, warnings = _heads(plan, seen.class_counts)
    duplicates = _duplicates(seen.groups, valid=seen.valid, distinct_exact=len(seen.exact_seen))
    if duplicates["conflicting"]["groups"]:
        warnings.append(
            f"{duplicates['conflicting']['groups']} groups of duplicate inputs have different labels "
            f"({duplicates['conflicting']['rows']} rows)"
        )
    total, valid = seen.total, seen.valid
    report: dict[str, Any] = {
        "rows_total": total,
        "valid_rows": valid,
        "invalid_rows": total - valid,
        "invalid_percent": round(100 * (total - valid) / total, 2) if total else 0.0,
        "invalid_reasons": dict(seen.reasons.most_common()),
        "invalid_rows_sample": seen.invalid_rows[:REPORT_INVALID_ROWS],
        "max_tokens": plan.max_tokens,
        "heads": {
            head.head: {
                "labels": dict(sorted(seen.class_counts[head.head].items())),
                "does_not_apply": seen.not_applicable[head.head],
                "splits": {s: dict(sorted(split_counts[s][head.head].items())) for s in split_counts}
                if split_counts is not None
                else None,
            }
            for head in plan.heads
        },
        "duplicates": duplicates,
        "warnings": warnings,
    }
    return head_manifest, report


def _split(
    row_groups: array[int],
    groups: dict[int, _Group],
    *,
    test_percent: float | None,
    seed: int,
) -> list[str] | None:
    """Seeded, stratified train/test assignment per valid row.

    Near-duplicate inputs form one unit (they never straddle the split). Units are ordered by stratum (the
    first row's labels) and shuffled within it, then every (100/test_percent)-th unit from a seeded random
    start goes to test: each stratum, however small, gets its share to within one unit.
    """
    if not test_percent:
        return None
    rng = random.Random(seed)
    keyed = sorted(((group.signature, rng.random()), key) for key, group in groups.items())
    fraction = test_percent / 100
    position = rng.random()
    unit_split: dict[int, str] = {}
    for _, key in keyed:
        after = position + fraction
        unit_split[key] = "test" if int(after) > int(position) else "train"
        position = after
    return [unit_split[key] for key in row_groups]


def _heads(plan: RowPlan, class_counts: dict[str, Counter[str]]) -> tuple[list[dict[str, Any]], list[str]]:
    manifest: list[dict[str, Any]] = []
    warnings: list[str] = []
    for head_plan in plan.heads:
        spec = head_plan.mapping.label_spec()
        counts = class_counts[head_plan.head]
        labels = list(spec.known_labels() or sorted(counts))
        if not counts:
            warnings.append(f"head {head_plan.head!r} has no labels in the valid rows; it is left out")
            continue
        manifest.append({"name": head_plan.head, "labels": labels, "multi_label": spec.multi_label})
        for label in labels:
            if counts[label] < MIN_CLASS_EXAMPLES:
                warnings.append(
                    f"head {head_plan.head!r}: class {label!r} has {counts[label]} examples "
                    f"(fewer than {MIN_CLASS_EXAMPLES})"
                )
        present = [counts[label] for label in labels if counts[label]]
        if len(present) == 1 and not spec.multi_label:
            warnings.append(f"head {head_plan.head!r} has only one class in the valid rows")
        elif present and max(present) > MAX_IMBALANCE * min(present):
            most = max(labels, key=lambda label: counts[label])
            least = min((label for label in labels if counts[label]), key=lambda label: counts[label])
            warnings.append(
                f"head {head_plan.head!r} is imbalanced: {most!r} outnumbers {least!r} "
                f"{counts[most] / counts[least]:.0f}:1 (more than {MAX_IMBALANCE}:1)"
            )
    return manifest, warnings


def _duplicates(groups: dict[int, _Group], *, valid: int, distinct_exact: int) -> dict[str, Any]:
    duplicated = [g for g in groups.values() if g.size > 1]
    exact_groups = [g for g in duplicated if len(g.exact_texts) < g.size]
    conflicting = [g for g in duplicated if g.conflict]
    examples = sorted(duplicated, key=lambda g: (not g.conflict, g.first_row))[:DUPLICATE_EXAMPLES]
    return {
        # Rows beyond the first with the very same input text.
        "exact": {"groups": len(exact_groups), "rows": valid - distinct_exact},
        # Rows beyond the first whose input matches once case, punctuation and spacing are ignored.
        "normalised": {"groups": len(duplicated), "rows": valid - len(groups)},
        "conflicting": {"groups": len(conflicting), "rows": sum(g.size for g in conflicting)},
        "examples": [
            {
                "rows": g.rows,
                "count": g.size,
                "conflicting_labels": g.conflict,
                "exact": len(g.exact_texts) == 1,
            }
            for g in examples
        ],
    }


def snapshot_lines(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    for line in stream:
        if line.strip():
            yield json.loads(line)


def check_test_set(
    *,
    train: Iterable[dict[str, Any]],
    test: Iterable[dict[str, Any]],
    train_heads: list[dict[str, Any]],
    test_heads: list[dict[str, Any]],
) -> dict[str, Any]:
    """How well a second snapshot serves as the test set of the first: shared heads and labels, and leakage
    (test inputs that also appear, exactly or normalised, in the training rows)."""
    exact: set[int] = set()
    normalised: set[int] = set()
    for row in train:
        exact.add(hash(row["input"]))
        normalised.add(hash(normalise_text(row["input"])))
    train_labels = {h["name"]: set(h["labels"]) for h in train_heads}
    test_labels = {h["name"]: set(h["labels"]) for h in test_heads}
    counts: dict[str, Counter[str]] = {name: Counter() for name in test_labels}
    rows = leaked_exact = leaked_normalised = 0
    leaked_examples: list[int] = []
    for row in test:
        rows += 1
        text = row["input"]
        if hash(text) in exact:
            leaked_exact += 1
        if hash(normalise_text(text)) in normalised:
            leaked_normalised += 1
            if len(leaked_examples) < DUPLICATE_EXAMPLES:
                leaked_examples.append(row["row"])
        for head, values in row["labels"].items():
            if head in counts:
                counts[head].update(values or ())
    shared = sorted(set(train_labels) & set(test_labels))
    problems: list[str] = []
    warnings: list[str] = []
    if not shared:
        problems.append("the snapshots share no head: the test set cannot evaluate the model")
    for head in shared:
        unseen = sorted(test_labels[head] - train_labels[head])
        if unseen:
            problems.append(f"head {head!r}: test labels {unseen} never occur in the training snapshot")
        missing = sorted(train_labels[head] - set(counts[head]))
        if missing:
            warnings.append(f"head {head!r}: no test rows for {missing}; those classes cannot be evaluated")
        for label, count in sorted(counts[head].items()):
            if count < MIN_CLASS_EXAMPLES:
                warnings.append(
                    f"head {head!r}: class {label!r} has {count} test rows (fewer than {MIN_CLASS_EXAMPLES})"
                )
    for head in sorted(set(train_labels) - set(test_labels)):
        warnings.append(f"head {head!r} is not in the test snapshot and will not be evaluated")
    if leaked_normalised:
        warnings.append(
            f"{leaked_normalised} test rows also appear in the training snapshot ({leaked_exact} exactly): "
            "metrics will look better than they are"
        )
    return {
        "usable": not problems,
        "problems": problems,
        "warnings": warnings,
        "shared_heads": shared,
        "test_rows": rows,
        "leakage": {"exact": leaked_exact, "normalised": leaked_normalised, "example_rows": leaked_examples},
        "test_counts": {head: dict(sorted(counts[head].items())) for head in shared},
    }

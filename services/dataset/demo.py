"""Demo content for `arbiter up`: the example dataset, with a first snapshot ready to train on."""

from __future__ import annotations

from services.dataset import logic

DEMO_ACTOR = "system:demo"


def seed_demo(*, org_id: int) -> None:
    dataset, _ = logic.dataset_create_example(org_id=org_id, actor=DEMO_ACTOR)
    logic.snapshot_create(
        dataset=dataset,
        actor=DEMO_ACTOR,
        input_column=None,
        label_columns=None,
        type="text_classification",
        name=f"{dataset.name} v1",
        test_percent=20,
        seed=0,
    )

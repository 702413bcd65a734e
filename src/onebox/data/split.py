"""Split examples into train and validation sets, stably.

Each example's side is decided by a hash of (seed, content), not by shuffling, so appending
rows to a dataset never moves an existing row to the other side, and identical content always
lands on the same side (no train/validation leakage through duplicates).
"""

from __future__ import annotations

import hashlib

from onebox.data.schema import Example


def split_score(example: Example, seed: int) -> float:
    """A uniform value in [0, 1) fixed by the seed and the example's content."""
    digest = hashlib.sha256(f"{seed}\0{example.content_key()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(
    examples: list[Example], validation_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Return ``(train, validation)``, each in input order.

    An example goes to validation when its score is below ``validation_fraction``. With at
    least 2 rows and a fraction > 0 there is at least one validation row (the lowest score)
    and at least one training row (the highest score). A fraction of 0 disables validation.
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if validation_fraction == 0 or len(examples) < 2:
        return list(examples), []
    scores = [split_score(e, seed) for e in examples]
    to_validation = [s < validation_fraction for s in scores]
    if not any(to_validation):
        to_validation[min(range(len(scores)), key=scores.__getitem__)] = True
    if all(to_validation):
        to_validation[max(range(len(scores)), key=scores.__getitem__)] = False
    train = [e for e, v in zip(examples, to_validation, strict=True) if not v]
    validation = [e for e, v in zip(examples, to_validation, strict=True) if v]
    return train, validation

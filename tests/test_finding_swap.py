"""Finding-swapped reports as hard negatives (loss.swap_kind: finding): the text swap and the loader
(a training run with them: tests/test_location_swap.py)."""

from __future__ import annotations

import numpy as np
import pytest

from afloc_models.config import AFLocConfig, preset, validate
from afloc_models.errors import AFLocError, ConfigError
from afloc_training.data import PairDataset, load_pairs
from afloc_training.finding_swap import FINDING_TERMS, findings_named, swap_finding
from afloc_training.phantoms import write_phantom_datastore


def test_one_finding_is_renamed_everywhere_and_nothing_else_changes():
    report = ("small right pleural effusion", "left upper zone nodule", "right pleural effusion again")
    for seed in range(20):
        swapped = swap_finding(report, np.random.default_rng(seed))
        assert swapped is not None and len(swapped) == len(report)
        before, after = set(findings_named(report)), set(findings_named(swapped))
        # Exactly one finding left the report and one it did not state came in.
        assert len(before - after) == 1 and len(after - before) == 1
        new = (after - before).pop()
        assert new not in before
        for old_sentence, new_sentence in zip(report, swapped):
            old_words, new_words = old_sentence.split(), new_sentence.split()
            assert len(old_words) == len(new_words)
            for a, b in zip(old_words, new_words):  # only finding terms change
                assert a == b or any(a in terms for terms in FINDING_TERMS.values())
        # The renamed finding's terms are gone from every sentence.
        gone = (before - after).pop()
        assert not any(w in FINDING_TERMS[gone] for s in swapped for w in s.split())


def test_the_replacement_is_never_a_finding_the_report_states_in_other_words():
    report = ("the heart is enlarged", "left pneumothorax", "patchy airspace disease in the right base")
    seen = set()
    for seed in range(50):
        swapped = swap_finding(report, np.random.default_rng(seed))
        assert swapped is not None
        assert swapped[0] == report[0] and swapped[2] == report[2]  # cue-only wordings are never renamed
        seen.add(swapped[1].split()[1])
    # pneumothorax becomes something the report does not state: not cardiomegaly, not consolidation.
    assert seen and seen.isdisjoint({"cardiomegaly", "consolidation", "pneumothorax"})
    assert seen <= {"nodule", "effusion", "atelectasis", "edema"}


def test_reports_without_a_named_finding_have_no_copy():
    rng = np.random.default_rng(0)
    assert swap_finding(("heart size is normal", "lungs are clear"), rng) is None
    assert swap_finding(("the heart is enlarged",), rng) is None  # stated, but not by a term
    everything = tuple(f"right {terms[0]}" for terms in FINDING_TERMS.values())
    assert swap_finding(everything, rng) is None  # nothing left to swap in


def test_the_same_draw_gives_the_same_copy():
    report = ("right lower zone atelectasis", "mild pulmonary edema")
    a = swap_finding(report, np.random.default_rng([3, 1, 7, 2]))
    b = swap_finding(report, np.random.default_rng([3, 1, 7, 2]))
    assert a == b and a != report


def test_config_and_loader_validate_the_kind(tmp_path):
    config = preset("small")
    config.loss.swap_kind = "findings"
    with pytest.raises(ConfigError, match="loss.swap_kind must be one of location, finding"):
        validate(config)
    assert AFLocConfig().loss.swap_kind == "location"
    write_phantom_datastore(tmp_path / "data", 4, seed=0, size=64)
    pairs = load_pairs(tmp_path / "data").pairs
    data = type(config.data)(resize=72, crop=64, num_workers=0)
    with pytest.raises(AFLocError, match="negatives must be"):
        PairDataset(pairs, data, channels=1, train=True, negatives="sideways")


def test_loader_carries_finding_swapped_reports(tmp_path):
    write_phantom_datastore(tmp_path / "data", 8, seed=0, size=64)
    pairs = load_pairs(tmp_path / "data").pairs
    data = type(preset("small").data)(resize=72, crop=64, num_workers=0)
    train_set = PairDataset(pairs, data, channels=1, train=True, seed=0, negatives="finding")
    val_set = PairDataset(pairs, data, channels=1, train=False, seed=0, negatives="finding")
    assert all(val_set[i].negative is None for i in range(len(pairs)))  # never for validation
    copies = [s for s in (train_set[i] for i in range(len(pairs))) if s.negative is not None]
    assert copies, "phantom reports name findings"
    for sample in copies:
        assert set(findings_named(sample.negative)) != set(findings_named(sample.sentences))
        # Sides are kept: a finding swap is not a location swap.
        assert [w for s in sample.negative for w in s.split() if w in ("right", "left")] == [
            w for s in sample.sentences for w in s.split() if w in ("right", "left")
        ]


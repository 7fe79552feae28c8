"""benchmarks/quality.py: the side-by-side table, the generalization target checks, reading sizes."""

from __future__ import annotations

import pytest

from afloc_models.config import preset
from benchmarks.quality import _infer_sizes, _phantoms_differ, generalization_targets, parse_args, side_by_side


def _metrics(pg: float, cnr: float, per: dict[str, tuple[int, float]]) -> dict:
    return {
        "cases": sum(n for n, _ in per.values()),
        "overall": {"pointing_game": pg, "pointing_game_ci95": [pg - 0.1, pg + 0.1], "cnr": cnr,
                    "cnr_ci95": [cnr - 0.2, cnr + 0.2], "miou": 0.2, "mdice": 0.3},
        "per_finding": {f: {"n": n, "pointing_game": p, "pointing_game_ci95": [p, p], "cnr": 1.0,
                            "cnr_ci95": [1.0, 1.0], "miou": 0.1, "mdice": 0.2} for f, (n, p) in per.items()},
    }


def test_side_by_side_lines_up_findings_and_sets():
    main = {
        "similarity": "dot",
        "metrics": {"dot": _metrics(0.75, 2.4, {"nodule": (30, 0.8), "cardiomegaly": (20, 1.0)})},
        "external": {"synthetic": _metrics(0.62, 1.6, {"nodule": (40, 0.35), "cardiomegaly": (30, 0.9)}),
                     "real": _metrics(0.5, 1.2, {"nodule": (10, 0.4)})},
    }
    table = side_by_side(main)
    assert list(table) == ["cardiomegaly", "nodule", "overall"]
    assert set(table["nodule"]) == {"in_domain", "external_synthetic", "external_real"}
    assert "external_real" not in table["cardiomegaly"]  # no inserted cardiomegaly
    assert table["nodule"]["external_synthetic"]["n"] == 40
    assert table["overall"]["external_real"]["n"] == 10
    assert table["overall"]["in_domain"]["pointing_game_ci95"] == [0.65, 0.85]

    checks = generalization_targets(main)
    assert checks["in_domain"] == {"pointing_game": True, "cnr": True}
    assert checks["external_synthetic"]["pointing_game"] and checks["external_synthetic"]["cnr"]
    assert checks["external_synthetic"]["worst_finding"] == {"finding": "nodule", "pointing_game": 0.35, "met": True}
    assert not checks["external_real"]["pointing_game"] and not checks["external_real"]["cnr"]


def test_the_in_domain_column_is_the_served_similarity():
    """A regions_cosine model is served with cosine maps: its in-domain column and targets use them."""
    from afloc_models.config import AFLocConfig
    from benchmarks.quality import _served_similarity

    main = {
        "similarity": "cosine",
        "metrics": {"dot": _metrics(0.2, 0.5, {"nodule": (30, 0.2)}), "cosine": _metrics(0.75, 2.4, {"nodule": (30, 0.8)})},
        "external": {},
    }
    assert side_by_side(main)["overall"]["in_domain"]["pointing_game"] == 0.75
    assert generalization_targets(main)["in_domain"] == {"pointing_game": True, "cnr": True}
    cosine = AFLocConfig.from_dict({"base": "small", "loss": {"local_attention": "regions_cosine"}})
    assert (_served_similarity(cosine), _served_similarity(AFLocConfig.from_dict({"base": "small"}))) == ("cosine", "dot")


def test_curve_snapshots_copy_each_saved_multiple(tmp_path):
    """--curve-every: the stop_check copies the checkpoint once its saved step reaches each multiple."""
    import json

    from benchmarks.quality import _Snapshots

    checkpoint, folder = tmp_path / "main", tmp_path / "main_curve"
    checkpoint.mkdir()

    def saved(step: int) -> None:
        (checkpoint / "meta.json").write_text(json.dumps({"training": {"step": step}}))
        (checkpoint / "model.safetensors").write_bytes(b"weights %d" % step)
        (checkpoint / "train_state.pt").write_bytes(b"optimiser")

    snapshots = _Snapshots(checkpoint, folder, every=100)
    assert snapshots() is False  # nothing saved yet: no copy, never a stop
    saved(59)  # an epoch end before the first multiple
    assert snapshots() is False and snapshots.copied == []
    saved(100)
    assert snapshots() is False and snapshots() is False  # copied once, not again
    saved(201)  # an epoch end one step after the multiple replaced the save at 200
    snapshots()
    assert [step for step, _ in snapshots.copied] == [100, 201]
    assert (folder / "step100" / "model.safetensors").read_bytes() == b"weights 100"
    assert not (folder / "step100" / "train_state.pt").exists()  # the optimiser state is not kept


def test_reading_sizes_start_with_the_checkpoint_s_own():
    """The side-by-side table reads the config's own size, so it is always evaluated, first."""
    config = preset("small")
    own = config.data.inference_size
    assert _infer_sizes(parse_args(["--work", "w"]), config) == [own]
    assert _infer_sizes(parse_args(["--work", "w", "--infer-sizes", f"224,{own},224"]), config) == [own, 224]


def test_bad_reading_sizes_are_refused_by_name(capsys):
    for bad in ("abc", "256,-1", "8"):
        with pytest.raises(SystemExit):
            parse_args(["--work", "w", "--infer-sizes", bad])
        assert "--infer-sizes must be a comma list" in capsys.readouterr().err


def test_a_phantom_set_written_otherwise_is_named_before_it_is_replaced(tmp_path):
    from afloc_training.phantoms import write_phantom_datastore

    folder = tmp_path / "train"
    assert _phantoms_differ(folder, 4, 1, 64, "plain", 0.0) == "no phantom set there yet"
    write_phantom_datastore(folder, 4, 1, size=64, style="plain", real_fraction=0.0)
    assert _phantoms_differ(folder, 4, 1, 64, "plain", 0.0) is None
    # No real backgrounds were found, so any asked share is what that folder can hold.
    manifest = folder / "ground_truth" / "manifest.json"
    if '"real_backgrounds": 0' in manifest.read_text():
        assert _phantoms_differ(folder, 4, 1, 64, "plain", 0.6) is None
    said = _phantoms_differ(folder, 5, 2, 64, "varied", 0.0)
    assert said == "it holds phantoms with n 4 (this run: 5), seed 1 (this run: 2), style plain (this run: varied)"
    manifest.write_text("{")
    assert "not valid JSON" in _phantoms_differ(folder, 4, 1, 64, "plain", 0.0)

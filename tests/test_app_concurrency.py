"""Eight simultaneous ``/infer/afloc`` requests with different prompts each get their own result."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

PROMPTS = [
    "nodule",
    "right pleural effusion",
    "left apical pneumothorax",
    "cardiomegaly",
    "right lower lobe opacity",
    "pulmonary edema",
    "atelectasis",
    "left lower zone consolidation",
]


def _label(reply, tmp_path, index: int) -> np.ndarray:
    import slicerio

    path = tmp_path / f"label_{index}.seg.nrrd"
    path.write_bytes(reply.label)
    seg = slicerio.read_segmentation(str(path))
    return seg["voxels"][:, :, 0].T, [s["name"] for s in seg["segments"]]


def test_eight_concurrent_prompts_each_get_their_own_label(afloc_server, afloc_infer, afloc_checkpoint, tmp_path):
    from afloc_models.inference import AFLocPredictor

    def ask(prompt: str):
        # threshold 0 keeps every mask large, so a label swapped between requests cannot pass.
        return afloc_infer(
            afloc_server.url,
            image="phantom_00002",
            params={"prompt": prompt, "threshold": 0.0, "save_heatmap": False},
        )

    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
        replies = list(pool.map(ask, PROMPTS))

    predictor = AFLocPredictor.load(afloc_checkpoint, device="cpu")
    image = afloc_server.studies / "phantom_00002.png"
    expected = {p: predictor.localize(image, [p], threshold=0.0)[0].mask for p in PROMPTS}
    distinct = {expected[p].tobytes() for p in PROMPTS}
    assert len(distinct) > 1, "all prompts give the same mask: the test could not tell answers apart"
    for index, (prompt, reply) in enumerate(zip(PROMPTS, replies)):
        assert reply.status == 200, reply.params
        assert [entry["prompt"] for entry in reply.params["prompts"]] == [prompt]
        label, names = _label(reply, tmp_path, index)
        assert names == [prompt]
        mismatch = np.count_nonzero(label != expected[prompt].astype(np.uint8))
        assert mismatch <= 1e-3 * label.size, f"{prompt!r}: {mismatch} pixels differ from its direct prediction"
        others = [q for q in PROMPTS if q != prompt and expected[q].tobytes() != expected[prompt].tobytes()]
        for other in others:
            assert np.count_nonzero(label != expected[other].astype(np.uint8)) > mismatch

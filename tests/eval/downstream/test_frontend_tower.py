"""AVSR front-end exports as downstream towers: what they decode, what they compute, and the harness on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avsr.frontends.visual import ResNetVideoFrontend
from data.downstream import Example
from data.lrs2 import LRS2Config
from data.synth.mediawriter import write_mp4
from eval.downstream.__main__ import main
from eval.downstream.frontend_tower import load_frontend_tower, segment_means
from tests.data.downstream.conftest import write_lrw
from train.export import ExportError, read_export, save_export

BOX = (8, 16, 24, 32)  # left, top, right, bottom of the mouth in the test frames
LRS2 = LRS2Config(mouth_box=BOX, resize=20, crop=16)


def save_visual_export(path: Path, seed: int, lrs2: LRS2Config = LRS2) -> Path:
    torch.manual_seed(seed)
    frontend = ResNetVideoFrontend(1, (1, 1, 1, 1))
    return save_export(
        path, kind="avsr_frontend", model_name="moco_frontend",
        overrides={"video_frontend": "resnet18", "video_resnet_layers": [1, 1, 1, 1]},
        state_dict={f"video_frontend.{k}": v for k, v in frontend.state_dict().items()},
        preprocess=lrs2.preprocess(), extra={"stream": "v", "objective": "moco", "step": 0},
    )  # fmt: skip


def face_clip(path: Path, frames: int, mouth_level: int) -> Path:
    """32x32 frames, black but for the mouth box at ``mouth_level``."""
    video = np.zeros((frames, 32, 32, 3), np.uint8)
    left, top, right, bottom = BOX
    video[:, top:bottom, left:right] = mouth_level
    return write_mp4(path, video, 25.0, None, 16000)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("frontend")
    return {
        "export": save_visual_export(root / "export", seed=0),
        "short": face_clip(root / "short.mp4", 6, 200),
        "long": face_clip(root / "long.mp4", 11, 90),
    }


def test_decode_cuts_the_mouth_box_and_normalises_as_the_avsr_dataset(files):
    tower = load_frontend_tower(files["export"], "video")
    short, long = tower.decode([Example(0, files["short"]), Example(1, files["long"])], progress=False)
    assert short["input"].shape == (6, 1, 16, 16) and long["input"].shape == (11, 1, 16, 16)
    for item, level in ((short, 200), (long, 90)):
        expected = (level / 255 - LRS2.mean) / LRS2.std  # the box is uniform: every pixel of the crop is it
        assert item["input"].float().mean().item() == pytest.approx(expected, abs=0.05)
        assert item["input"].std().item() < 0.1


def test_clip_features_are_segment_means_of_the_front_end_padding_aside(files):
    tower = load_frontend_tower(files["export"], "video")
    items = tower.decode([Example(0, files["short"]), Example(1, files["long"])], progress=False)
    feats, kept = tower.item_features(items, progress=False, batch_size=2)  # one padded batch
    assert kept.tolist() == [0, 1]
    reference = ResNetVideoFrontend(1, (1, 1, 1, 1)).double().eval()
    weights = read_export(files["export"], kind="avsr_frontend").state_dict
    state = {k[len("video_frontend.") :]: v.double() for k, v in weights.items()}
    reference.load_state_dict(state)
    for row, item in enumerate(items):
        x = item["input"].double()[None]  # one clip alone, no padding, float64
        out, _ = reference(x, torch.tensor([x.shape[1]]))
        n = out.shape[1]
        parts = [out[0, s * n // 3 : (s + 1) * n // 3].mean(0) for s in range(3)]  # 6 and 11 frames: no empty one
        torch.testing.assert_close(feats[row].double(), torch.cat(parts), rtol=1e-4, atol=1e-5)


def test_segment_means_of_short_clips_reuse_their_frames():
    x = torch.arange(12, dtype=torch.float64).view(1, 4, 3).repeat(3, 1, 1)  # frame t holds 3t, 3t+1, 3t+2
    out = segment_means(x, torch.tensor([4, 2, 1]), 3)
    torch.testing.assert_close(out[0], torch.stack([x[0, 0], x[0, 1], x[0, 2:4].mean(0)]))
    torch.testing.assert_close(out[1], torch.stack([x[0, 0], x[0, 0], x[0, 1]]))
    torch.testing.assert_close(out[2], x[0, :1].expand(3, -1))


def test_random_init_is_the_seeded_architecture_and_differs_from_the_export(files):
    pretrained = load_frontend_tower(files["export"], "video").frontend.state_dict()
    a = load_frontend_tower(files["export"], "video", init="random", seed=3).frontend.state_dict()
    b = load_frontend_tower(files["export"], "video", init="random", seed=3).frontend.state_dict()
    torch.manual_seed(3)
    fresh = ResNetVideoFrontend(1, (1, 1, 1, 1)).state_dict()
    for name, value in a.items():
        assert torch.equal(value, b[name]) and torch.equal(value, fresh[name]), name
    assert not torch.equal(a["stem_conv.weight"], pretrained["stem_conv.weight"])


def test_a_file_that_cannot_be_read_is_listed_not_fatal_within_budget(files, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    tower = load_frontend_tower(files["export"], "video")
    items = tower.decode([Example(0, files["short"]), Example(0, bad)], progress=False)
    feats, kept = tower.item_features(items, progress=False, max_fail_fraction=0.5)
    assert kept.tolist() == [0] and feats.shape == (1, 3 * 512) == (1, tower.dim)


def test_an_export_of_the_other_stream_is_refused_by_name(files):
    with pytest.raises(ExportError, match="holds the 'v' front-end, not the audio"):
        load_frontend_tower(files["export"], "audio")


def test_the_harness_probes_a_front_end_export_on_an_lrw_layout(tmp_path):
    # The LRW fixture's frames are 32x32 and one grey level per word; the mouth box is the whole frame.
    export = save_visual_export(
        tmp_path / "export", seed=0, lrs2=LRS2Config(mouth_box=(0, 0, 32, 32), resize=20, crop=16)
    )
    root = write_lrw(tmp_path / "lipread_mp4", real=True)
    out = tmp_path / "r.json"
    main(["--export", str(export), "--task", "lrw", "--root", str(root), "--tower", "video", "--seeds", "2",
          "--protocol", "linear", "--protocol", "zeroshot", "--json", str(out), "--quiet"])  # fmt: skip
    records = json.loads(out.read_text())["records"]
    assert sorted((r["init"], r["seed"]) for r in records) == [
        ("pretrained", 0),
        ("pretrained", 1),
        ("random", 0),
        ("random", 1),
    ]
    assert all(r["protocol"] == "linear" and r["num_test"] == 6 for r in records)  # no text tower: no zero-shot
    assert all(r["accuracy"] == 100.0 for r in records)  # grey levels per word: any front-end separates them


def test_finetune_is_refused_for_a_front_end_export(files, tmp_path):
    root = write_lrw(tmp_path / "lipread_mp4", real=False)
    args = ["--export", str(files["export"]), "--task", "lrw", "--root", str(root), "--protocol", "finetune"]
    with pytest.raises(SystemExit, match="the finetune protocol takes VATT exports"):
        main([*args, "--quiet"])

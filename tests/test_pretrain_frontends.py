"""pretrain.py objective=moco / wav2vec2: a run like VATT's, and an export train_avsr.py loads as a front-end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import avsr
from avsr.frontends.audio import Wav2Vec2AudioFrontend
from avsr.frontends.visual import ResNetVideoFrontend
from avsr.init import InitConfig, init_frontends
from pretrain import objective_of
from pretrain_frontends import moco_in_batch
from tests.conftest import run_launcher
from train.export import read_export
from train_avsr import read_avsr_inits

W2V_TINY = {
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": [[16, 10, 5], [16, 3, 2], [16, 2, 2], [16, 2, 2]],
    "extractor_conv_bias": False,
    "encoder_embed_dim": 32,
    "encoder_projection_dropout": 0.0,
    "encoder_pos_conv_kernel": 8,
    "encoder_pos_conv_groups": 4,
    "encoder_num_layers": 1,
    "encoder_num_heads": 2,
    "encoder_attention_dropout": 0.0,
    "encoder_ff_interm_features": 64,
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.0,
    "encoder_layer_norm_first": False,
    "encoder_layer_drop": 0.0,
}
COMMON = ["batch_size=4", "max_steps=3", "log_every=1", "eval_batches=1", "data.train_splits=[train]",
          "optim.warmup_steps=1"]  # fmt: skip


def _run(objective: str, corpus: Path, out: Path, extra: list[str]) -> list[dict]:
    run_launcher("pretrain.py", [f"objective={objective}", f"data.root={corpus}", *COMMON, *extra, f"output_dir={out}"])
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_objective_is_read_before_the_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("objective: wav2vec2\nmax_steps: 3\n")
    assert objective_of([]) == "vatt"
    assert objective_of(["--config", str(cfg)]) == "wav2vec2"
    assert objective_of([f"--config={cfg}", "objective=moco"]) == "moco"


def test_moco_held_out_score_is_each_query_against_the_keys_of_its_batch():
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen, dtype=torch.float64), dim=1)
    k = torch.nn.functional.normalize(q + 0.8 * torch.randn(6, 8, generator=gen, dtype=torch.float64), dim=1)
    loss, accuracy = moco_in_batch(q.float(), k.float(), temperature=0.2)
    rows, hits = [], 0
    for i in range(6):
        scores = [float(q[i] @ k[j]) / 0.2 for j in range(6)]
        rows.append(math.log(sum(math.exp(x) for x in scores)) - scores[i])
        hits += max(range(6), key=scores.__getitem__) == i
    assert loss == pytest.approx(sum(rows) / 6, rel=1e-5)
    assert accuracy == pytest.approx(100.0 * hits / 6)
    assert 0 < hits < 6  # both outcomes occur, so the comparison checks something


def test_moco_run_exports_a_visual_frontend_that_an_avsr_model_loads_exactly(speech_corpus, tmp_path):
    run = tmp_path / "moco"
    records = _run(
        "moco", speech_corpus, run,
        ["visual.resnet_layers=[1,1,1,1]", "preprocess.resize=20", "visual.crop=16", "moco.dim=16",
         "moco.hidden_dim=32", "moco.queue_size=8", "moco.clip_frames=8"],
    )  # fmt: skip
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert "val_accuracy" in records[-2] or any("val_accuracy" in r for r in records)
    assert (run / "curves.png").is_file() and (run / "config.yaml").is_file()

    exp = read_export(run / "export", kind="avsr_frontend")
    inits = read_avsr_inits(InitConfig(video_frontend_from=str(run / "export")))
    model = avsr.create_model("avsr_test", modalities="v", vocab_size=10, **exp.overrides)
    assert init_frontends(model, InitConfig(video_frontend_from=str(run / "export")), "v", None, inits) == "v"
    for name, value in model.video_frontend.state_dict().items():
        assert torch.equal(value, exp.state_dict[f"video_frontend.{name}"]), name
    reference = ResNetVideoFrontend(1, (1, 1, 1, 1)).eval()
    reference.load_state_dict({k[len("video_frontend.") :]: v for k, v in exp.state_dict.items()}, strict=True)
    video, lengths = torch.randn(2, 6, 1, 16, 16), torch.tensor([6, 4])
    assert torch.equal(model.video_frontend.eval()(video, lengths)[0], reference(video, lengths)[0])


def test_wav2vec2_run_exports_an_audio_frontend_that_an_avsr_model_loads_exactly(speech_corpus, tmp_path):
    run = tmp_path / "w2v"
    kwargs = json.dumps(W2V_TINY).replace(" ", "")
    records = _run(
        "wav2vec2", speech_corpus, run,
        [f"audio.kwargs={kwargs}", "wav2vec2.codevector_dim=16", "wav2vec2.codebook_size=8",
         "wav2vec2.num_negatives=5", "data.audio_seconds=0.8"],
    )  # fmt: skip
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3] and all("loss_contrastive" in r for r in losses)

    exp = read_export(run / "export", kind="avsr_frontend")
    assert exp.overrides["audio_frontend"] == "wav2vec2" and exp.overrides["wav2vec2_kwargs"] == W2V_TINY
    inits = read_avsr_inits(InitConfig(audio_frontend_from=str(run / "export")))
    model = avsr.create_model("avsr_test", modalities="a", vocab_size=10, **exp.overrides)
    init_frontends(model, InitConfig(audio_frontend_from=str(run / "export")), "a", None, inits)
    for name, value in model.audio_frontend.state_dict().items():
        assert torch.equal(value, exp.state_dict[f"audio_frontend.{name}"]), name
    reference = Wav2Vec2AudioFrontend(640, "custom", W2V_TINY).eval()
    reference.model.load_state_dict({k[len("audio_frontend.model.") :]: v for k, v in exp.state_dict.items()})
    audio, lengths = torch.randn(2, 16000), torch.tensor([16000, 12000])
    assert torch.allclose(model.audio_frontend.eval()(audio, lengths)[0], reference(audio, lengths)[0], atol=1e-6)


def test_an_export_of_another_kind_is_refused_by_name(tmp_path):
    from tests.conftest import save_tiny_vatt_export
    from train.export import ExportError

    vatt_export = save_tiny_vatt_export(tmp_path / "vatt", seed=0, vocab_size=32)
    with pytest.raises(ExportError, match="init.video_frontend_from.*'vatt'"):
        read_avsr_inits(InitConfig(video_frontend_from=str(vatt_export)))


@pytest.mark.parametrize("name", ["moco_speech", "wav2vec2_speech"])
def test_the_front_end_recipes_parse(name):
    import pretrain_frontends
    from train.config import parse_config

    args = ["--config", f"configs/pretrain/{name}.yaml"]
    cfg = parse_config(pretrain_frontends.FrontendPretrainConfig, args)
    pretrain_frontends.check_config(cfg)
    assert cfg.objective == objective_of(args) == name.split("_")[0]

"""train_avsr.py end to end on a tiny synthetic speech corpus: every modality setting, exact resume, VATT
front-end initialisation with freezing, SentencePiece units, SIGTERM, and config errors."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import avsr
from data.files import OUTPUT_MARKER
from eval.lrs2 import load_avsr_export
from tests.conftest import AVSR_TINY, ROOT, run_launcher, run_python, save_tiny_vatt_export, start_python, wait_python
from train.export import read_export, save_export


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(run) if "loss" in r}


@pytest.mark.parametrize(
    "modality", ["a", pytest.param("v", marks=pytest.mark.slow), pytest.param("av", marks=pytest.mark.slow)]
)
def test_each_modality_trains_and_writes_an_export(speech_corpus, tmp_path, modality):
    run = tmp_path / modality
    steps = 6 if modality == "a" else 2  # audio steps are cheap: long enough to see the loss fall
    evals = "[av,a,v]" if modality == "av" else "[]"
    schedule = "optim.schedule=constant" if modality == "a" else "optim.schedule=cosine"
    run_launcher(
        "train_avsr.py",
        [
            *AVSR_TINY,
            f"data.root={speech_corpus}",
            f"model.modalities={modality}",
            f"max_steps={steps}",
            f"eval.modalities={evals}",
            schedule,
            f"output_dir={run}",
        ],
    )
    losses = _losses(run)
    assert sorted(losses) == list(range(1, steps + 1))
    if modality == "a":  # the loss falls; most visibly its CTC term (a sum over frames)
        ctc = {r["step"]: r["loss_ctc"] for r in _records(run) if "loss_ctc" in r}
        assert losses[steps] < 0.9 * losses[1] and ctc[steps] < 0.75 * ctc[1]
    final = json.loads((run / "metrics_final.json").read_text())
    assert final["step"] == steps and 0.0 <= final["val_wer"] and final["val_utterances"] == 2
    if modality == "av":
        assert {"val_wer_av", "val_wer_a", "val_wer_v"} <= set(final) and final["val_wer"] == final["val_wer_av"]
    assert (run / "curves.png").stat().st_size > 0 and (run / "config.yaml").exists()
    model, tokens, export = load_avsr_export(run / "export")
    assert model.cfg.modalities == modality and export.kind == "avsr" and export.extra["step"] == steps
    assert tokens.vocab_size == model.cfg.vocab_size == 40  # LRS2 characters + blank + sos/eos
    assert export.preprocess["crop"] == 16 and export.preprocess["sample_rate"] == 16000
    # The export holds the trained weights: the same as the last training state.
    state = load_file(str(run / "states" / f"step-{steps:08d}" / "model.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k


@pytest.mark.slow
def test_resume_is_exact(speech_corpus, tmp_path):
    # Audio-visual: modality dropout and dropout draw random numbers, so the RNG state must resume too; the
    # training noise is drawn per utterance from the item's seed.
    common = [*AVSR_TINY, f"data.root={speech_corpus}", "model.modalities=av", "eval.modalities=[av]", "max_steps=4"]
    common += ["save_every=2", "keep_states=5", "data.noise.kind=white", "data.noise.prob=1.0"]
    full = tmp_path / "full"
    run_launcher("train_avsr.py", [*common, f"output_dir={full}"])
    reference = _losses(full)
    assert sorted(reference) == [1, 2, 3, 4]
    # A run that stopped after step 2: a directory holding only what existed at that point.
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "states" / "step-00000002", resumed / "states" / "step-00000002")
    for name in ("config.yaml", OUTPUT_MARKER):
        shutil.copy(full / name, resumed / name)
    out = run_launcher("train_avsr.py", [*common, f"output_dir={resumed}"])
    assert "resumed from" in out.stderr
    again = _losses(resumed)
    assert sorted(again) == [3, 4]
    for step in (3, 4):
        assert again[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step


@pytest.fixture(scope="module")
def vatt_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vatt_export(tmp_path_factory.mktemp("vatt") / "export", seed=3, vocab_size=100)


@pytest.mark.slow
def test_vatt_towers_initialise_frozen_front_ends_and_sentencepiece_units(speech_corpus, vatt_export, tmp_path):
    run = tmp_path / "run"
    out = run_launcher(
        "train_avsr.py",
        [
            *AVSR_TINY,
            f"data.root={speech_corpus}",
            "model.modalities=av",
            "eval.modalities=[av]",
            f"init.vatt_export={vatt_export}",
            "init.frontends=av",
            "init.freeze_steps=2",
            "units.kind=sentencepiece",
            "units.vocab_size=40",
            "data.noise.kind=babble",  # from the corpus's own clips, val and test excluded
            f"data.noise.babble_dir={speech_corpus / 'mvlrs_v1' / 'main'}",
            "data.noise.talkers=2",
            "max_steps=3",
            "save_every=2",
            "keep_states=5",
            f"output_dir={run}",
        ],
    )
    towers = read_export(vatt_export).state_dict
    frozen = load_file(str(run / "states" / "step-00000002" / "model.safetensors"))
    model, tokens, export = load_avsr_export(run / "export")
    assert export.overrides["video_frontend"] == export.overrides["audio_frontend"] == "vatt"
    assert export.overrides["vatt_model"] == "vatt_test" and export.overrides["vatt_sample_rate"] == 8000
    pairs = {"video_frontend.tower.": "video_tower.", "audio_frontend.tower.": "audio_tower."}
    checked = changed = 0
    for key, final in model.state_dict().items():
        for ours, theirs in pairs.items():
            if key.startswith(ours) and final.is_floating_point():
                source = towers[theirs + key[len(ours) :]]
                assert torch.equal(frozen[key], source), key  # loaded, and untouched while frozen
                checked += 1
                changed += not torch.equal(final, source)  # trained after step 2
    assert checked > 10 and changed > checked // 2
    # The rest of the model trained from step 1.
    start = {k: v for k, v in frozen.items() if k.startswith("encoder.")}
    assert start and any(not torch.equal(model.state_dict()[k], v) for k, v in start.items())
    assert tokens.kind == "sentencepiece" and export.tokenizer_path is not None and export.tokenizer_path.exists()
    assert model.cfg.vocab_size == tokens.vocab_size
    assert "babble noise from 3 files" in out.stderr  # the training speaker's clips only


def test_random_init_baseline_keeps_the_export_architecture_without_its_weights(vatt_export):
    import train_avsr
    from train.config import parse_config

    export = read_export(vatt_export)
    towers = export.state_dict
    loaded = {}
    for load in (True, False):
        cfg = parse_config(
            train_avsr.TrainAvsrConfig,
            [f"init.vatt_export={vatt_export}", "model.modalities=av", f"init.load_weights={str(load).lower()}"],
        )
        tokens = avsr.TokenSet.characters("abc ")
        model = avsr.create_model("avsr_test", **train_avsr.model_overrides(cfg, tokens, export))
        done = avsr.init.init_frontends(model, cfg.init, cfg.model.modalities, export, {})
        state = model.state_dict()
        same = [
            torch.equal(state[k], towers["video_tower." + k[len("video_frontend.tower.") :]])
            for k in state
            if k.startswith("video_frontend.tower.") and state[k].dim() >= 2  # matrices: randomly initialised
        ]
        loaded[load] = (done, sum(same), len(same))
    assert loaded[True][0] == "va" and loaded[True][1] == loaded[True][2] > 5
    done, equal, total = loaded[False]
    assert done == "" and total == loaded[True][2]  # the same tower, parameter for parameter
    assert equal == 0  # none of the pretrained matrices


def test_audio_visual_model_starts_from_audio_only_and_visual_only_exports(tmp_path):
    import train_avsr
    from data.schema import ConfigError
    from train.config import parse_config

    tokens = avsr.TokenSet.characters("abc ")
    exports = {}
    for m in "av":
        torch.manual_seed(ord(m))
        model = avsr.create_model("avsr_test", vocab_size=tokens.vocab_size, modalities=m)
        exports[m] = save_export(
            tmp_path / m,
            kind="avsr",
            model_name=model.model_name,
            overrides=model.overrides,
            state_dict=model.state_dict(),
            preprocess={},
            extra={"tokens": tokens.to_dict()},
        )
    args = [f"init.avsr_export={exports['a']}", f"init.video_frontend_from={exports['v']}", "model.modalities=av"]
    cfg = parse_config(train_avsr.TrainAvsrConfig, args)
    train_avsr.check_config(cfg)
    inits = train_avsr.read_avsr_inits(cfg.init)
    avsr.init.check_units(inits, tokens)
    with pytest.raises(avsr.init.InitError, match="init.avsr_export: that export's units differ"):
        avsr.init.check_units(inits, avsr.TokenSet.characters("abcd "))
    torch.manual_seed(7)
    model = avsr.create_model("avsr_test", **train_avsr.model_overrides(cfg, tokens, None))
    assert avsr.init.init_frontends(model, cfg.init, cfg.model.modalities, None, inits) == "va"
    audio_only, _, _ = load_avsr_export(exports["a"])
    visual_only, _, _ = load_avsr_export(exports["v"])
    for k, v in visual_only.video_frontend.state_dict().items():
        assert torch.equal(model.video_frontend.state_dict()[k], v), k
    g = torch.Generator().manual_seed(3)
    inputs = {  # two utterances of 4 and 3 frames (640 samples a frame)
        "video": torch.randn(2, 4, 1, 16, 16, generator=g),
        "video_lengths": torch.tensor([4, 3]),
        "audio": 0.1 * torch.randn(2, 4 * 640, generator=g),
        "audio_lengths": torch.tensor([4 * 640, 3 * 640]),
    }
    with torch.no_grad():  # the video columns start at zero: audio-visual == the audio-only model
        ours = model.eval().encode(**inputs)["ctc_log_probs"]
        ref = audio_only.encode(audio=inputs["audio"], audio_lengths=inputs["audio_lengths"])["ctc_log_probs"]
    torch.testing.assert_close(ours[0], ref[0])
    torch.testing.assert_close(ours[1, :3], ref[1, :3])
    # an audio-only export starting a visual-only model gives it no front-end
    lips = parse_config(train_avsr.TrainAvsrConfig, [f"init.avsr_export={exports['a']}", "model.modalities=v"])
    lips_model = avsr.create_model("avsr_test", **train_avsr.model_overrides(lips, tokens, None))
    assert (
        avsr.init.init_frontends(
            lips_model, lips.init, lips.model.modalities, None, train_avsr.read_avsr_inits(lips.init)
        )
        == ""
    )
    bad = parse_config(train_avsr.TrainAvsrConfig, [f"init.video_frontend_from={exports['v']}", "model.modalities=a"])
    with pytest.raises(ConfigError, match="init.video_frontend_from is set but"):
        train_avsr.check_config(bad)


@pytest.mark.slow
def test_sigterm_saves_a_state_and_exits_cleanly(speech_corpus, tmp_path):
    run = tmp_path / "run"
    args = ["train_avsr.py", *AVSR_TINY, f"data.root={speech_corpus}", "model.modalities=a"]
    proc = start_python([*args, "max_steps=100000", f"output_dir={run}"])
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    err = wait_python(proc, timeout=300).stderr
    assert proc.returncode == 0, err[-2000:]
    assert sorted((run / "states").glob("step-*")) and "state saved" in err


@pytest.mark.parametrize(
    "arg, needle",
    [
        ("optim.lrr=0.1", "optim.lrr"),
        ("model.overrides={depht: 2}", "model.overrides.depht"),
        ("model.overrides={vocab_size: 9}", "model.overrides.vocab_size"),
        ("model.modalities=x", "model.modalities"),
        ("eval.modalities=[x]", "eval.modalities"),
        ("init.freeze_steps=5", "init.freeze_steps"),
        ("init.load_weights=maybe", "init.load_weights"),
    ],
)
def test_bad_config_fails_with_one_line_naming_the_key(tmp_path, arg, needle):
    import train_avsr

    with pytest.raises(SystemExit) as err:
        train_avsr.main([arg, f"output_dir={tmp_path / 'run'}"])
    message = str(err.value.code)
    assert message.startswith("train_avsr.py: ") and needle in message and "\n" not in message, message
    assert not (tmp_path / "run").exists()  # stopped before any work


def test_bad_config_key_as_a_process(tmp_path):
    out = run_python(["train_avsr.py", "data.max_frame=10", f"output_dir={tmp_path / 'run'}"], timeout=120)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("train_avsr.py: ") and "data.max_frame" in out.stderr


def test_every_config_parses_and_names_its_launch_command():
    import train_avsr
    from train.config import parse_config

    files = sorted((ROOT / "configs" / "avsr").glob("*.yaml"))
    assert len(files) >= 5
    for f in files:
        head = f.read_text().splitlines()[:2]
        assert head[0].startswith("# accelerate launch ") and "train_avsr.py --config" in " ".join(head), f
        cfg = parse_config(train_avsr.TrainAvsrConfig, ["--config", str(f)])
        cfg.data.root = ""  # the LRS2 recipe's root does not exist here
        train_avsr.check_config(cfg)


@pytest.mark.slow
def test_lrs2_recipe_runs_a_step_at_reduced_size(speech_corpus, tmp_path):
    run = tmp_path / "lrs2"
    reduced = [
        f"data.root={speech_corpus}",
        "data.train_splits=[train]",
        "data.max_frames=200",
        "data.max_length=null",
        "data.num_workers=0",
        f"preprocess.length_cache={tmp_path / 'lengths.json'}",
        "preprocess.resize=20",
        "preprocess.crop=16",
        "model.overrides={depth: 1, decoder_depth: 1}",
        "units.vocab_size=60",
        "eval.max_utterances=1",
        "max_steps=1",
        "log_every=1",
    ]
    run_launcher("train_avsr.py", ["--config", "configs/avsr/lrs2_conformer_base.yaml", *reduced, f"output_dir={run}"])
    model, tokens, export = load_avsr_export(run / "export")
    assert export.model_name == "avsr_conformer_base" and model.cfg.embed_dim == 768 and model.cfg.depth == 1
    assert tokens.kind == "sentencepiece" and sorted(_losses(run)) == [1]


@pytest.mark.slow
def test_save_every_zero_runs_to_the_end_and_tensorboard_gets_the_metrics(speech_corpus, tmp_path):
    run = tmp_path / "run"
    args = [
        *AVSR_TINY,
        f"data.root={speech_corpus}",
        "model.modalities=a",
        "max_steps=3",
        "save_every=0",
        "eval.every=0",
    ]
    run_launcher("train_avsr.py", [*args, "report_to=tensorboard", f"output_dir={run}"])
    assert json.loads((run / "metrics_final.json").read_text())["step"] == 3 and (run / "curves.png").exists()
    assert not (run / "states").exists() or not any((run / "states").iterdir())
    events = list((run / "trackers").rglob("events.out.tfevents*"))
    assert events, sorted(p.name for p in run.rglob("*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert {e.step: e.value for e in acc.Scalars("loss")} == pytest.approx(_losses(run), rel=1e-6)
    assert {e.step for e in acc.Scalars("val_wer")} == {3}

"""eval.lrs2 on a hand-written LRS2 fixture and an export of a (random) ``avsr_test`` model: counts, WER
against eval.wer, hypotheses against decoding each utterance alone, noise, bad media and CLI errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avsr.decoding import beam_search, greedy_ctc
from data.lrs2 import LRS2Config, LRS2Dataset, read_split, read_transcript
from eval import lrs2 as lrs2_eval
from eval.wer import error_rates
from tests.conftest import run_python, save_tiny_avsr_export, write_lrs2_clip

FPS = 25.0  # of the LRS2 clips (tests/conftest.py write_lrs2_clip)

# (split, clip id, frames, text): LRS2 conventions (upper case, apostrophes, digits), varied lengths.
CLIPS = [
    ("train", "6001/00001", 24, "WE'LL SEE"),
    ("train", "6001/00002", 30, "THE 1960S WERE GREAT"),
    ("val", "6002/00001", 20, "HELLO THERE"),
    ("test", "6003/00001", 28, "IT'S 2 O'CLOCK"),
    ("test", "6003/00002", 16, "YES"),
    ("test", "6004/00001", 34, "WHAT HAPPENED TO THE BOAT"),
    ("test", "6004/00002", 22, "NOT MUCH REALLY"),
]


def write_corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    splits: dict[str, list[str]] = {"pretrain": [], "train": [], "val": [], "test": []}
    for split, clip_id, frames, text in CLIPS:
        write_lrs2_clip(root, clip_id, frames, text, rng)
        splits[split].append(clip_id + (" NF" if split == "test" else ""))
    for split, lines in splits.items():
        (root / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("lrs2_eval"))


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_avsr_export(tmp_path_factory.mktemp("avsr_export") / "export")


def run_cli(args: list[str], tmp_path: Path) -> tuple[dict, list[dict]]:
    out_json, out_hyps = tmp_path / "result.json", tmp_path / "hyps.jsonl"
    lrs2_eval.main([*args, "--workers", "0", "--json", str(out_json), "--hyps", str(out_hyps)])
    hyps = [json.loads(line) for line in out_hyps.read_text().splitlines()]
    return json.loads(out_json.read_text()), hyps


def test_whole_split_counts_and_rates_agree_with_eval_wer(corpus, export, tmp_path):
    result, hyps = run_cli(
        ["--root", str(corpus), "--split", "test", "--modality", "av", "--export", str(export), "--greedy"], tmp_path
    )
    split = [e.id for e in read_split(corpus, "test")]
    assert result["utterances"] == len(split) == 4 and result["failed"] == 0
    assert [h["id"] for h in hyps] == split  # split order, whatever the batching order
    refs = [read_transcript(corpus / "mvlrs_v1" / "main" / f"{i}.txt").text for i in split]
    assert [h["ref"] for h in hyps] == refs
    assert any(h["hyp"] for h in hyps)
    expected = error_rates([h["ref"] for h in hyps], [h["hyp"] for h in hyps])
    assert result["wer"] == pytest.approx(expected["wer"]) and result["cer"] == pytest.approx(expected["cer"])
    # Corpus-level: total edits over total reference words, from the per-utterance counts.
    words = sum(h["ref_words"] for h in hyps)
    assert words == sum(len(r.split()) for r in refs)
    assert result["wer"] == pytest.approx(100.0 * sum(h["word_errors"] for h in hyps) / words)
    # Real-time factor: model seconds over the audio duration of the split (frames / 25 fps).
    duration = sum(f for s, _, f, _ in CLIPS if s == "test") / FPS
    assert result["audio_seconds"] == pytest.approx(duration)
    assert result["rtf"] == pytest.approx(result["decode_seconds"] / duration) and result["rtf"] > 0
    assert set(result) >= {"wer", "cer", "rtf", "utterances"}


@pytest.mark.parametrize("modality, greedy", [("av", False), ("v", True), ("a", True)])
def test_hypotheses_equal_decoding_each_utterance_alone(corpus, export, tmp_path, modality, greedy):
    args = ["--root", str(corpus), "--modality", modality, "--export", str(export), "--max-frames", "80"]
    args += ["--greedy"] if greedy else ["--beam", "3", "--ctc-weight", "0.3"]
    _, hyps = run_cli(args, tmp_path)
    model, tokens, exp = lrs2_eval.load_avsr_export(export)
    cfg = LRS2Config(root=str(corpus), **{k: tuple(v) if isinstance(v, list) else v for k, v in exp.preprocess.items()})
    ds = LRS2Dataset(cfg, "test", train=False)
    for i, h in enumerate(hyps):
        item = ds[i]
        inputs = {
            "video": item["video"][None],
            "video_lengths": torch.tensor([item["video_length"]]),
            "audio": item["audio"][None],
            "audio_lengths": torch.tensor([item["audio_length"]]),
        }
        with torch.no_grad():
            enc = model.encode(**inputs, modality=modality)
            if greedy:
                ids = greedy_ctc(enc["ctc_log_probs"], enc["enc_lengths"], eos=model.eos)[0]
            else:
                ids = beam_search(model, enc, beam_size=3, ctc_weight=0.3)[0][0].tokens
        assert h["id"] == item["id"] and h["hyp"] == tokens.decode(ids), i


def test_noise_is_reproducible_and_recorded(corpus, export, tmp_path):
    base = ["--root", str(corpus), "--modality", "a", "--export", str(export), "--greedy"]
    clean, clean_hyps = run_cli(base, tmp_path / "clean")
    noisy, noisy_hyps = run_cli([*base, "--snr", "-10"], tmp_path / "n1")
    again, again_hyps = run_cli([*base, "--snr", "-10"], tmp_path / "n2")
    assert noisy["noise"] == "white" and noisy["snr"] == -10 and clean["snr"] is None
    assert [h["hyp"] for h in noisy_hyps] == [h["hyp"] for h in again_hyps]  # same noise every run
    assert [h["hyp"] for h in noisy_hyps] != [h["hyp"] for h in clean_hyps]
    babble_dir = corpus / "mvlrs_v1" / "main" / "6001"  # training speech, not the test set
    babble, _ = run_cli([*base, "--snr", "0", "--noise", "babble", "--babble-dir", str(babble_dir)], tmp_path / "b")
    assert babble["noise"] == "babble" and babble["utterances"] == 4


def test_undecodable_media_counts_as_an_empty_hypothesis(corpus, export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    (broken / "mvlrs_v1" / "main" / "6004" / "00001.mp4").write_bytes(b"not a video at all")
    result, hyps = run_cli(
        ["--root", str(broken), "--export", str(export), "--greedy", "--modality", "v"], tmp_path / "out"
    )
    assert result["utterances"] == 4 and result["failed"] == 1
    bad = next(h for h in hyps if h["id"] == "6004/00001")
    assert bad["hyp"] == "" and "failed" in bad and bad["word_errors"] == bad["ref_words"] == 5
    assert result["wer"] == pytest.approx(error_rates([h["ref"] for h in hyps], [h["hyp"] for h in hyps])["wer"])


def test_missing_inputs_fail_with_one_line(corpus, export, tmp_path):
    cases = [
        (["--root", str(corpus), "--export", str(tmp_path / "nope")], "nope"),
        (["--root", str(tmp_path / "no_root"), "--export", str(export)], "no_root"),
        (["--root", str(corpus), "--export", str(export), "--snr", "5", "--noise", "babble"], "--babble-dir"),
        (["--root", str(corpus), "--export", str(export), "--split", "pretrain"], "nothing to evaluate"),
    ]
    empty = tmp_path / "no_lists"
    (empty / "mvlrs_v1" / "main").mkdir(parents=True)
    cases.append((["--root", str(empty), "--export", str(export)], "test.txt"))
    for args, needle in cases:
        with pytest.raises(SystemExit) as err:
            lrs2_eval.main(args)
        message = str(err.value.code)
        assert message.startswith("eval.lrs2: ") and needle in message and "\n" not in message, message
    # As a process: exit status 1 and one line on stderr.
    out = run_python(["-m", "eval.lrs2", "--root", str(empty), "--export", str(export)], timeout=120)
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0 and "test.txt" in out.stderr


def test_rerun_replaces_its_own_outputs(corpus, export, tmp_path):
    base = ["--root", str(corpus), "--modality", "a", "--export", str(export), "--greedy"]
    first, _ = run_cli(base, tmp_path)
    again, hyps = run_cli([*base, "--limit", "2"], tmp_path)  # same --json and --hyps paths
    assert first["utterances"] == 4 and again["utterances"] == len(hyps) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hyps.jsonl", "result.json"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--beam", "0"], "--beam must be >= 1, got 0"),
        (["--max-frames", "0"], "--max-frames must be >= 1, got 0"),
        (["--workers", "-1"], "--workers must be >= 0, got -1"),
        (["--limit", "-2"], "--limit must be >= 0, got -2"),
        (["--threads", "-1"], "--threads must be >= 0, got -1"),
        (["--ctc-weight", "1.5"], "--ctc-weight must be in [0, 1], got 1.5"),
        (["--ctc-weight", "nan"], "--ctc-weight must be in [0, 1], got nan"),
        (["--snr", "nan"], "--snr must be a finite number, got nan"),
        (["--length-bonus", "inf"], "--length-bonus must be a finite number, got inf"),
        (["--babble-dir", "{nope}"], "--babble-dir: directory '{nope}' not found"),
        (["--landmarks-dir", "{nope}"], "--landmarks-dir: directory '{nope}' not found"),
    ],
)
def test_bad_arguments_fail_with_one_line_before_any_work(tmp_path, monkeypatch, extra, needle):
    root, export = tmp_path / "root", tmp_path / "export"
    root.mkdir()
    export.mkdir()

    def boom(*args, **kwargs):
        raise AssertionError("the export was loaded although an argument was invalid")

    monkeypatch.setattr(lrs2_eval, "load_avsr_export", boom)
    nope = str(tmp_path / "nope")
    with pytest.raises(SystemExit) as err:
        lrs2_eval.main(["--root", str(root), "--export", str(export), *(a.format(nope=nope) for a in extra)])
    assert str(err.value.code) == f"eval.lrs2: {needle.format(nope=nope)}"


def test_malformed_export_json_is_one_line(corpus, export, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(export, broken)
    (broken / "export.json").write_text('{"kind": "avsr", "model": ')
    with pytest.raises(SystemExit) as err:
        lrs2_eval.main(["--root", str(corpus), "--export", str(broken), "--workers", "0"])
    message = str(err.value.code)
    assert message.startswith(f"eval.lrs2: {broken / 'export.json'}: invalid JSON") and "\n" not in message


def test_cli_input_errors_name_the_flag(corpus, export, tmp_path):
    for args, needle in [
        (
            ["--root", str(corpus), "--export", str(tmp_path / "nope")],
            f"--export: export directory '{tmp_path / 'nope'}' not found",
        ),
        (
            ["--root", str(tmp_path / "no_root"), "--export", str(export)],
            f"--root: directory '{tmp_path / 'no_root'}' not found",
        ),
    ]:
        with pytest.raises(SystemExit) as err:
            lrs2_eval.main(args)
        assert str(err.value.code) == f"eval.lrs2: {needle}"

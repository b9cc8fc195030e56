"""The downstream harness end to end: tasks in, per-seed records, summary, table, PNG and JSON out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.downstream import Example, Task
from eval.downstream import harness, probes, report
from eval.downstream.__main__ import main
from eval.downstream.report import Record
from eval.downstream.towers import load_tower
from tests.conftest import save_tiny_vatt_export
from tests.data.downstream.conftest import write_lrw, write_speech_commands


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vatt_export(tmp_path_factory.mktemp("exp") / "export", seed=0, vocab_size=64)


@pytest.fixture(scope="module")
def sc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_speech_commands(tmp_path_factory.mktemp("sc") / "speech_commands_v0.02", real=True)


def _task(groups: list[str]) -> Task:
    train = [Example(label=i % 2, path=Path(f"{i}.wav"), group=g) for i, g in enumerate(groups)]
    return Task("t", ["a", "b"], {"train": train, "test": train[:2]}, ("audio",))


def test_validation_split_keeps_groups_whole_and_takes_only_training_examples():
    groups = [f"g{i // 3}" for i in range(60)]  # 20 groups of 3
    task = harness.with_val(_task(groups), fraction=0.15, seed=0)
    train, val = task.splits["train"], task.splits["val"]
    assert {ex.group for ex in train}.isdisjoint({ex.group for ex in val})
    by_path = lambda e: str(e.path)  # noqa: E731
    assert sorted(train + val, key=by_path) == sorted(_task(groups).splits["train"], key=by_path)
    assert 9 <= len(val) <= 12  # whole groups of 3 until 15% (9 examples) is reached
    assert harness.with_val(task) is task  # a task with its own validation split keeps it
    assert harness.with_val(_task(groups), seed=1).splits["val"] != val


def test_summary_equals_numpy_and_the_table_shows_both_initialisations():
    values = {"pretrained": [80.0, 82.5, 79.0], "random": [30.0, 35.0, 31.0]}
    records = [
        Record("t", "video", "linear", init, seed, acc, None, 25.0, 10, 20)
        for init, accs in values.items()
        for seed, acc in enumerate(accs)
    ]
    (row,) = report.summarise(records)
    for init, accs in values.items():
        mean, std, n = row.stats[init]
        assert mean == pytest.approx(np.mean(accs)) and std == pytest.approx(np.std(accs, ddof=1)) and n == 3
    assert row.delta() == pytest.approx(np.mean(values["pretrained"]) - np.mean(values["random"]))
    table = report.markdown([row])
    assert "| t | video | linear | 25.0 | 80.5 ± 1.8 | 32.0 ± 2.6 | +48.5 |" in table


def test_cli_on_a_speech_commands_layout_reports_every_protocol_and_initialisation(export, sc_root, tmp_path):
    out = tmp_path / "results"
    main(["--export", str(export), "--task", "speech_commands", "--root", str(sc_root), "--seeds", "2",
          "--shots", "1", "--out", str(out), "--quiet"])  # fmt: skip
    data = json.loads((out / "results.json").read_text())
    protocols = {r["protocol"] for r in data["records"]}
    assert protocols == {"linear", "1-shot", "knn"}  # no zero-shot for audio, no text prompts
    assert len(data["records"]) == 3 * 2 * 2  # protocols x initialisations x seeds
    assert {(s["protocol"], s["pretrained"]["seeds"], s["random"]["seeds"]) for s in data["summary"]} == {
        ("linear", 2, 2), ("1-shot", 2, 2), ("knn", 2, 2)
    }  # fmt: skip
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| speech_commands | audio | linear |" in (out / "results.md").read_text()
    assert data["meta"]["tasks"]["speech_commands"] == {"classes": 4, "train": 9, "val": 4, "test": 4}

    # the k-NN figure equals a brute-force vote on the tower's own features
    from data.downstream.registry import read_task

    task = read_task("speech_commands", sc_root)
    tower = load_tower(export, "audio")
    feats = {s: tower.clip_features(task.splits[s], progress=False).features for s in ("train", "val", "test")}
    labels = {s: torch.tensor([ex.label for ex in task.splits[s]]) for s in ("train", "val", "test")}
    knn = [r for r in data["records"] if r["protocol"] == "knn" and r["init"] == "pretrained"][0]
    k = knn["params"]["k"]
    sims = (
        torch.nn.functional.normalize(feats["test"].double(), dim=1)
        @ torch.nn.functional.normalize(feats["train"].double(), dim=1).T
    )
    right = 0
    for i in range(len(labels["test"])):
        order = sims[i].argsort(descending=True)[:k]
        votes = torch.zeros(4, dtype=torch.float64).index_add_(0, labels["train"][order], sims[i, order])
        best = votes.max()
        tied = (votes == best).nonzero().flatten().tolist()
        guess = tied[0] if len(tied) == 1 else int(labels["train"][order[0]])
        right += int(guess == labels["test"][i])
    assert knn["accuracy"] == pytest.approx(100.0 * right / len(labels["test"]))
    assert probes.accuracy(torch.tensor([0, 1]), torch.tensor([0, 0])) == 50.0


def test_lrw_layout_runs_with_the_video_tower_and_with_the_audio_tower(export, tmp_path):
    root = write_lrw(tmp_path / "lipread_mp4", real=True)
    for tower in ("video", "audio"):
        out = tmp_path / f"r-{tower}.json"
        main(["--export", str(export), "--task", "lrw", "--root", str(root), "--tower", tower, "--seeds", "1",
              "--protocol", "linear", "--init", "pretrained", "--json", str(out), "--quiet"])  # fmt: skip
        (rec,) = json.loads(out.read_text())["records"]
        assert rec["tower"] == tower and rec["num_test"] == 6 and 0.0 <= rec["accuracy"] <= 100.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "esc50"], "--task esc50: needs --root"),
        (["--task", "nosuch"], "unknown task 'nosuch'"),
        (["--task", "esc50", "--root", "/nonexistent", "--seeds", "0"], "--seeds must be >= 1"),
        ([], "name at least one --task or --suite"),
    ],
)
def test_bad_arguments_end_with_one_line(export, args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--export", str(export), *args, "--quiet"])
    text = str(exc.value.code)
    assert message in text and "\n" not in text


def test_an_existing_folder_at_an_output_file_path_is_refused_and_kept(export, sc_root, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        main(["--export", str(export), "--task", "speech_commands", "--root", str(sc_root), "--json", str(folder)])
    assert "--json" in str(exc.value.code)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_finetune_trains_the_tower_in_a_run_directory(export, sc_root, tmp_path):
    out = tmp_path / "ft.json"
    runs = tmp_path / "runs"
    main(["--export", str(export), "--task", "speech_commands", "--root", str(sc_root), "--protocol", "finetune",
          "--init", "pretrained", "--seeds", "1", "--finetune-dir", str(runs), "--finetune", "max_steps=4",
          "batch_size=4", "log_every=1", "--json", str(out), "--quiet"])  # fmt: skip
    (rec,) = json.loads(out.read_text())["records"]
    run = Path(rec["params"]["run_dir"])
    assert run.parent == runs and (run / "config.yaml").is_file() and (run / "curves.png").is_file()
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4]
    final = [r for r in logged if "test_accuracy" in r][-1]
    assert final["test_accuracy"] == pytest.approx(rec["accuracy"])

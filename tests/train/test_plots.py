"""curves.png: the curated panels of a run's metrics log, the same for both launchers."""

from __future__ import annotations

from train.plots import curated_panels, plot_curves, series


def _records(eval_keys: dict[str, float]) -> list[dict]:
    train = [
        {"step": s, "loss": 3.0 / s, "nce": 2.0 / s, "lr": 1e-3 * s, "steps_per_s": 2.0, "clips_per_s": 100.0 + s}
        for s in range(1, 6)
    ]
    return [*train, {"step": 5, **eval_keys}, {"step": 5, "skipped_clips": 0, "attempted_clips": 320}]


def test_pretraining_panels_hold_losses_lr_throughput_and_recall():
    records = _records({"t2v/R@1": 40.0, "t2v/R@10": 90.0, "t2v/MedR": 2.0, "v2a/R@1": 30.0, "v2a/num_queries": 256})
    panels = dict(curated_panels(records))
    assert list(panels) == ["loss terms", "learning rate", "throughput (per s)", "retrieval R@1 / R@10 (%)"]
    assert [k for k, _ in panels["loss terms"]] == ["loss", "nce"]
    assert [k for k, _ in panels["throughput (per s)"]] == ["clips_per_s"]
    assert [k for k, _ in panels["retrieval R@1 / R@10 (%)"]] == ["t2v/R@1", "t2v/R@10", "v2a/R@1"]
    assert dict(panels["loss terms"])["loss"] == {s: 3.0 / s for s in range(1, 6)}


def test_speech_panels_hold_wer_and_no_counts(tmp_path):
    records = _records({"val_wer": 50.0, "val_wer_av": 50.0, "val_wer_a": 40.0, "val_cer_av": 20.0})
    panels = dict(curated_panels(records))
    assert [k for k, _ in panels["WER (%)"]] == ["val_wer_a", "val_wer_av"]
    assert not any("skipped" in k or "attempted" in k for lines in panels.values() for k, _ in lines)
    png = plot_curves(records, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_series_skips_records_without_the_key_and_torn_values():
    recs = [{"step": 1, "a": 1.0}, {"step": 2}, {"step": 3, "a": float("nan")}, {"step": 4, "a": True}, {"a": 2.0}]
    assert series(recs, "a") == {1: 1.0}

"""eval.curves: several runs' metrics in one PNG, and the numbers behind it."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from eval.curves import common_table, main, read_series


def _run(tmp_path, name, records):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def test_series_table_and_png(tmp_path, capsys):
    a = _run(tmp_path, "a", [{"step": 10, "loss": 3.0}, {"step": 100, "val_wer": 80.0}, {"step": 200, "val_wer": 40.0}])
    b = _run(
        tmp_path, "b", [{"step": 100, "val_wer": 90.0}, {"step": 150, "val_wer": 70.0}, {"step": 200, "val_wer": 65.5}]
    )
    assert read_series(a, "val_wer") == {100: 80.0, 200: 40.0}
    assert common_table([read_series(a, "val_wer"), read_series(b, "val_wer")]) == [
        (100, [80.0, 90.0]),
        (200, [40.0, 65.5]),
    ]
    out = tmp_path / "cmp.png"
    main([str(a), str(b), "--labels", "pre", "rand", "--keys", "val_wer", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "200 | 40.00 | 65.50 | +25.50" in printed and "150" not in printed
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_missing_run_or_key_is_one_line(tmp_path):
    a = _run(tmp_path, "a", [{"step": 1, "loss": 1.0}])
    with pytest.raises(SystemExit, match=r"eval.curves: .*no metrics log"):
        main([str(tmp_path / "nope"), "--keys", "loss", "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match=r"eval.curves: no logged values for .*a:val_wer"):
        main([str(a), "--keys", "val_wer", "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


def test_bad_inputs_are_one_line_naming_the_file_or_flag(tmp_path):
    out = str(tmp_path / "x.png")
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "gone"), "--keys", "loss", "--out", out])
    assert str(err.value.code) == f"eval.curves: {tmp_path / 'gone'}: no metrics log (no such run directory)"
    a = _run(tmp_path, "a", [{"step": 1, "loss": 1.0}])
    with pytest.raises(SystemExit) as err:
        main([str(a), "--labels", "x", "y", "--keys", "loss", "--out", out])
    assert str(err.value.code) == "eval.curves: --labels: 2 labels for 1 runs"
    # lines that are not JSON objects, or whose step is not a number, give no values (and no traceback)
    for content in (
        b'{"step": 1\n',
        b"\xff\n",
        b"[1, 2]\n",
        b'{"step": "one", "loss": 1}\n',
        b'{"step": NaN, "loss": 1}\n',
    ):
        (a / "metrics.jsonl").write_bytes(content)
        with pytest.raises(SystemExit) as err:
            main([str(a), "--keys", "loss", "--out", out])
        assert str(err.value.code) == f"eval.curves: no logged values for {a}:loss"
    assert not (tmp_path / "x.png").exists()

"""``python -m vatt.summary`` prints sizes beside the paper's numbers and rejects bad arguments."""

from tests.conftest import run_python
from vatt.summary import main, summarize


def test_summary_counts_and_flops_for_the_test_model():
    s = summarize("vatt_test")
    assert s.tokens == {"video": (4, 4), "audio": (10, 10), "text": (8, 8)}
    assert s.total == s.video + s.audio + s.text + s.word_table + s.head
    # by hand, 2 FLOPs per multiply-add: voxel conv (4 tokens of 3*4*16*16 values -> 32) + 2 blocks at width 32
    # on 4 + 1 tokens (24*N*D^2 for qkv, proj and MLP; 4*N^2*D for attention) + head (32->24->24->16)
    n, d = 5, 32
    conv = 2 * (3 * 4 * 16 * 16) * d * 4
    blocks = 2 * (24 * n * d * d + 4 * n * n * d)
    head = 2 * (32 * 24 + 24 * 24 + 24 * 16)
    assert round(s.gflops_eval["video"] * 1e9) == conv + blocks + head


def test_summary_cli(capsys):
    assert main(["vatt_test", "-o", "num_frames=8"]) == 0
    out = capsys.readouterr().out
    assert "Table 7" in out and "vatt_test" in out and "Base" in out
    bad = run_python(["-m", "vatt.summary", "no_such"])
    assert bad.returncode != 0 and "no_such" in bad.stderr
    bad = run_python(["-m", "vatt.summary", "-o", "bogus=1"])
    assert bad.returncode != 0 and "bogus" in bad.stderr

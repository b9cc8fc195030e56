"""2 processes x B clips (CPU, gloo) == 1 process x 2B clips: embeddings, loss terms, gradients, BN statistics.

Masks drop different numbers of clips on the two processes, so the global normalisation is exercised. In
float64 everything must agree to 1e-5 (it agrees to ~1e-12), with gradients averaged by hand or by
DistributedDataParallel; float32 is checked relative to the gradient scale, since the head's batch norm
amplifies rounding.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("dist_worker.py")
B = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    jobs = [(1, 0, 2 * B), (2, 0, B), (2, 1, B)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), f"--rank={r}", f"--world={w}", f"--batch={b}"]
            + [f"--init-file={out / f'store{w}'}", f"--out={out}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w, r, b in jobs
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    return {(w, r): torch.load(out / f"rank{r}_world{w}.pt") for w, r, _ in jobs}


@pytest.mark.parametrize("dtype", ["torch.float64", "torch.float32", "ddp"])
def test_two_processes_equal_one_process_with_the_whole_batch(runs, dtype):
    one = runs[(1, 0)]["torch.float64" if dtype == "ddp" else dtype]
    two = [runs[(2, r)][dtype] for r in range(2)]
    for key, full in one["outputs"].items():  # each process holds its rows of the global batch
        torch.testing.assert_close(torch.cat([two[0]["outputs"][key], two[1]["outputs"][key]]), full, rtol=0, atol=1e-5)
    for key in ("loss", "loss_nce", "loss_milnce"):
        for r in range(2):  # every process reports the global value
            assert abs(two[r]["losses"][key] - one["losses"][key]) < 1e-5, (key, r)
    assert one["losses"]["loss_nce"] > 0 and one["losses"]["loss_milnce"] > 0

    assert one["grads"].keys() == two[0]["grads"].keys()
    scale = max(g.abs().max().item() for g in one["grads"].values())
    assert scale > 1e-3  # gradients are not trivially zero
    tol = 1e-4 * scale if dtype == "torch.float32" else 1e-5
    worst = max((two[r]["grads"][n] - g).abs().max().item() for n, g in one["grads"].items() for r in range(2))
    assert worst < tol, (worst, tol)

    # cross-process batch norm: running statistics as if one process had seen all 2B clips
    assert any("running_mean" in n for n in one["buffers"])
    for name, buf in one["buffers"].items():
        if buf.is_floating_point():
            torch.testing.assert_close(two[0]["buffers"][name], buf, rtol=0, atol=1e-5)

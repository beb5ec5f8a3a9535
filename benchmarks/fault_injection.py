"""Fault injection over whole `transferkit fit` runs: kills, signals, damaged checkpoints, busy and
foreign folders, full disks. Prints one row per fault: trials, work lost, data lost, wrong results.

    python benchmarks/fault_injection.py --kill-trials 50 [--json-out benchmarks/results/faults_cpu.json]

Every trial runs the real CLI in a subprocess on a tiny random-init timm CNN (3 classes x 14
images at 32 px, 3 epochs of 8 steps, CPU, one thread), so a run takes a few seconds:
- "wrong result": the final weights or the per-step loss trace (steps.jsonl) differ from an
  uninterrupted run with the same options, or a run reported success it did not have;
- "data lost": a file the user had (or a finished run's model) changed or disappeared without
  --overwrite, or a temporary was left behind;
- "work lost": optimiser steps redone after a resume (at most the steps since the last checkpoint).
The disk-full rows mount a small tmpfs (needs root; skipped otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))


def make_data(root: Path) -> Path:
    import numpy as np
    from conftest import draw_tiny_image

    rng = np.random.default_rng(0)
    for cls in ("circle", "square", "triangle"):
        for i in range(14):
            draw_tiny_image(root / "images" / cls / f"{i}.png", cls, rng)
    return root / "images"


def make_weights(path: Path) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(timm.create_model("test_efficientnet", num_classes=0).state_dict(), str(path))
    return path


class Bench:
    def __init__(self, work: Path):
        self.work = work
        self.images = make_data(work)
        self.weights = make_weights(work / "w.safetensors")
        self.env = {**os.environ, "TRANSFERKIT_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.n = 0
        ref = self.fresh()
        assert self.cli(self.args(ref)).returncode == 0
        self.ref = self.result(ref)

    def fresh(self) -> Path:
        self.n += 1
        return self.work / f"run{self.n}"

    def args(self, out: Path, *extra: str) -> list[str]:
        return ["fit", str(self.images), "--backbone", "timm/test_efficientnet", "--backbone-weights", str(self.weights),
                "--image-size", "32", "--epochs", "3", "--batch-size", "4", "--no-progress", "--patience", "0", "--out", str(out), *extra]

    def resume_args(self, out: Path) -> list[str]:
        return ["fit", str(self.images), "--resume", str(out), "--no-progress"]

    def cli(self, args, worker: list[str] | None = None, wait=True):
        cmd = [sys.executable, *(worker or [str(TESTS / "resume_worker.py"), "0"]), "--", *args]
        if wait:
            return subprocess.run(cmd, env=self.env, capture_output=True, text=True, cwd=str(TESTS), timeout=600)
        return subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(TESTS))

    @staticmethod
    def result(run: Path):
        if not (run / "model" / "model.safetensors").is_file():
            return None
        return (run / "model" / "model.safetensors").read_bytes(), (run / "steps.jsonl").read_text()

    def same_as_ref(self, run: Path) -> bool:
        """Weights bit for bit and the per-step trace (safetensors bytes include the same header)."""
        from safetensors.torch import load, load_file

        got = self.result(run)
        if got is None:
            return False
        a, b = load_file(str(run / "model" / "model.safetensors")), load(self.ref[0])
        import torch

        return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a) and got[1] == self.ref[1]

    @staticmethod
    def steps_done(run: Path) -> int:
        p = run / "steps.jsonl"
        return len(p.read_text().splitlines()) if p.is_file() else 0

    @staticmethod
    def temporaries(folder: Path) -> list[Path]:
        return [p for p in folder.rglob(".*") if p.name.endswith(".tmp") or ".old." in p.name]


def wait_steps(run: Path, k: int, proc, timeout=120.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if Bench.steps_done(run) >= k:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill-trials", type=int, default=50)
    ap.add_argument("--term-trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="tk-faults-"))
    b = Bench(work)
    rows: dict[str, dict] = {}

    def add(name, trials):
        rows[name] = {"trials": len(trials), "work_lost_max_steps": max((t.get("work_lost", 0) for t in trials), default=0),
                      "data_lost": sum(bool(t.get("data_lost")) for t in trials), "wrong": sum(bool(t.get("wrong")) for t in trials),
                      "failed": sum(not t.get("ok", True) for t in trials)}
        r = rows[name]
        print(f"{name:<62} {r['trials']:>3} trials  work lost <= {r['work_lost_max_steps']} steps  data lost {r['data_lost']}  "
              f"wrong {r['wrong']}  failed {r['failed']}", flush=True)

    # 1-2. kills and signals at random points, then resume
    for name, sig, n in (("SIGKILL at a random step/checkpoint write, then resume", signal.SIGKILL, args.kill_trials),
                         ("SIGTERM at a random step, then resume", signal.SIGTERM, args.term_trials)):
        trials = []
        for _ in range(n):
            run_before = b.n + 1
            t = _kill_and_resume(b, rng, sig)
            trials.append(t)
            shutil.rmtree(work / f"run{run_before}", ignore_errors=True)
        add(name, trials)

    # 3. an old finished run, then a new run into the same folder (refused; with --overwrite, killed and resumed)
    trials = []
    for _ in range(3):
        run = b.fresh()
        assert b.cli(b.args(run, "--checkpoint-every", "1steps", "--seed", "5", "--lr", "0.001")).returncode == 0
        old = (run / "model" / "model.safetensors").read_bytes()
        refused = b.cli(b.args(run)).returncode == 2 and (run / "model" / "model.safetensors").read_bytes() == old
        p = b.cli(b.args(run, "--checkpoint-every", "1steps", "--overwrite"), [str(TESTS / "resume_worker.py"), "0.02"], wait=False)
        t0 = time.time()
        while time.time() - t0 < 60 and p.poll() is None:
            try:
                if json.loads((run / "run.json").read_text()).get("pid") == p.pid and b.steps_done(run) >= rng.randint(2, 20):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
        ok = b.cli(b.resume_args(run)).returncode == 0
        trials.append({"ok": refused and ok, "wrong": not b.same_as_ref(run), "data_lost": bool(b.temporaries(run))})
    add("finished run in OUT, new run (refused; --overwrite, SIGKILL, resume)", trials)

    # 4. a second run into a busy folder
    trials = []
    for _ in range(3):
        run = b.fresh()
        p = b.cli(b.args(run, "--checkpoint-every", "1steps"), [str(TESTS / "resume_worker.py"), "0.02"], wait=False)
        wait_steps(run, 2, p)
        second = b.cli(b.args(run, "--overwrite"))
        refused = second.returncode == 2 and "in use by another transferkit run" in second.stderr
        p.wait()
        trials.append({"ok": refused and p.returncode == 0, "wrong": not b.same_as_ref(run), "data_lost": bool(b.temporaries(run))})
    add("second run into a folder a run is using", trials)

    # 5. a signal while loading data / in the last validation / in the final evaluation
    trials = []
    for where, k in (("load", 1), ("val", 3), ("evaluate", 1), ("val", 1)):
        run = b.fresh()
        res = b.cli(b.args(run), [str(TESTS / "signal_worker.py"), where, str(k)])
        if where == "load":
            ok, wrong = res.returncode == 75 and not run.exists(), False
        elif (where, k) == ("val", 1):
            ok = res.returncode == 75 and b.cli(b.resume_args(run)).returncode == 0
            wrong = not b.same_as_ref(run)
        else:
            ok, wrong = res.returncode == 75, not b.same_as_ref(run)
        trials.append({"ok": ok, "wrong": wrong, "data_lost": run.exists() and bool(b.temporaries(run))})
    add("SIGTERM while loading data / in validation / in final evaluation", trials)

    # 6. the newest checkpoint unreadable although its checksum matches
    from transferkit._cache import file_digest

    trials = []
    for _ in range(3):
        run = b.fresh()
        p = b.cli(b.args(run, "--checkpoint-every", "1steps", "--keep-checkpoints", "3"), [str(TESTS / "resume_worker.py"), "0.02"], wait=False)
        wait_steps(run, rng.randint(4, 20), p)
        p.send_signal(signal.SIGKILL)
        p.wait()
        root = run / "checkpoints"
        newest = root / (root / "latest").read_text().strip()
        (newest / "model.safetensors").write_bytes(b"garbage" * 50)
        st = json.loads((newest / "state.json").read_text())
        st["checksums"]["model.safetensors"] = file_digest(newest / "model.safetensors")
        (newest / "state.json").write_text(json.dumps(st))
        ok = b.cli(b.resume_args(run)).returncode == 0
        trials.append({"ok": ok, "wrong": not b.same_as_ref(run), "data_lost": bool(b.temporaries(run))})
    add("newest checkpoint not safetensors (checksum matches), resume", trials)

    # 7. user files at --out / --save
    trials = []
    for target in ("out-user-folder", "out-file", "save-user-folder", "out-model-user-folder"):
        d = work / target
        if target == "out-file":
            d.write_text("precious")
        elif target == "out-model-user-folder":
            (d / "model").mkdir(parents=True)
            (d / "model" / "thesis.tex").write_text("precious")
        else:
            (d / "sub").mkdir(parents=True)
            (d / "notes.txt").write_text("precious")
        before = sorted((p.name, p.read_bytes() if p.is_file() else b"") for p in ([d] if d.is_file() else d.rglob("*")))
        if target.startswith("save"):
            cmd = ["fewshot", str(next(b.images.rglob("*.png"))), "--support", str(b.images), "--backbone", "timm/test_efficientnet",
                   "--backbone-weights", str(b.weights), "--image-size", "32", "--save", str(d), "--overwrite"]
        else:
            cmd = b.args(d, "--overwrite")
        res = b.cli(cmd)
        after = sorted((p.name, p.read_bytes() if p.is_file() else b"") for p in ([d] if d.is_file() else d.rglob("*")))
        trials.append({"ok": res.returncode == 2, "data_lost": before != after, "wrong": False})
    add("user file/folder at --out/--save (with --overwrite)", trials)

    # 8. a full disk: a small tmpfs as the run folder's filesystem, and as the cache
    trials = []
    mnt = work / "small"
    mnt.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)]).returncode == 0:
        try:
            res = b.cli(b.args(mnt / "run"))
            trials.append({"ok": res.returncode == 74 and "space" in res.stderr and not (mnt / "run").exists(),
                           "data_lost": bool(list(mnt.rglob("*"))), "wrong": False})
            env = dict(b.env)
            b.env = {**env, "TRANSFERKIT_CACHE": str(mnt / "cache")}
            res = b.cli(b.args(b.fresh()))
            b.env = env
            trials.append({"ok": res.returncode in (0, 74) and res.returncode != -7 and "Traceback" not in res.stderr,
                           "data_lost": bool([p for p in mnt.rglob("*") if p.name.endswith(".tmp")]), "wrong": False})
        finally:
            subprocess.run(["umount", str(mnt)])
    add("disk full (tmpfs): run folder; cache", trials)

    shutil.rmtree(work, ignore_errors=True)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(rows, indent=2) + "\n")


def _kill_and_resume(b: Bench, rng: random.Random, sig: int) -> dict:
    run = b.fresh()
    p = b.cli(b.args(run, "--checkpoint-every", "1steps"), [str(TESTS / "resume_worker.py"), "0.02"], wait=False)
    wait_steps(run, rng.randint(1, 23), p)
    time.sleep(rng.random() * 0.03)  # somewhere inside a step or a checkpoint write
    p.send_signal(sig)
    rc = p.wait()
    done_before = Bench.steps_done(run)
    expected = (-signal.SIGKILL,) if sig == signal.SIGKILL else (75, 0)
    if rc == 0:  # the run finished before the signal landed
        return {"ok": True, "wrong": not b.same_as_ref(run), "data_lost": bool(b.temporaries(run)), "work_lost": 0}
    root = run / "checkpoints"
    at = 0
    if (root / "latest").is_file():
        import transferkit.training.checkpoint as ck

        try:
            at = ck.load(run).state["step"]
        except Exception:
            at = 0
    res = b.cli(b.resume_args(run)) if at else b.cli(b.args(run, "--checkpoint-every", "1steps", "--overwrite"))
    return {"ok": rc in expected and res.returncode == 0, "wrong": not b.same_as_ref(run), "data_lost": bool(b.temporaries(run)),
            "work_lost": max(0, done_before - at)}


if __name__ == "__main__":
    main()

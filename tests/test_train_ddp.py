"""Two CPU processes under torchrun (gloo) train to the same weights as one process with the same global batch."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from vitlab.train.config import load_config
from vitlab.train.trainer import train

# No stochastic depth or dropout: their masks come from each process's own RNG.
OVERRIDES = ["model.overrides={embed_dim = 32, depth = 2, num_heads = 2, mlp_dim = 64}", "data.batch_size=32",
             "max_steps=6", "ckpt_every_steps=100", "data.auto_augment=\"trivial\"", "data.mixup_alpha=0.2"]


def test_two_processes_match_one(tmp_path):
    single = tmp_path / "single"
    train(load_config("demo", overrides=OVERRIDES), run_dir=single, progress=False)

    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vitlab",
           "train", "--recipe", "demo", "--out", str(tmp_path), "--name", "ddp", "--no-progress"]
    for o in OVERRIDES:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    a, b = load_file(str(single / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert a["head.weight"].abs().sum() > 0  # trained: the zero-initialised head moved
    for k in a:
        # Gradient all-reduce sums in another order than one process does: equal up to float rounding.
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)


def test_two_processes_stop_together_at_the_end_of_a_budget(tmp_path):
    """Each process measures its own time; they agree on the slowest clock, so none waits for a step the other
    never takes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vitlab",
           "train", "--recipe", "demo", "--out", str(tmp_path), "--name", "budget", "--no-progress",
           "--set", OVERRIDES[0], "--set", "data.batch_size=32", "--set", "budget_minutes=0.05",
           "--set", "epochs=1000", "--set", "ckpt_every_steps=100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "budget" / "model.safetensors").is_file()

"""Two CPU processes under torchrun (gloo) stop together at the end of a wall-clock budget, and train to the same
weights as one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_train import write_shapes_folder

from vitlab.train.config import load_config
from vitlab.train.trainer import train

# No stochastic depth or dropout: their masks come from each process's own RNG. Warmup outlasts the run: the lr is
# then a function of the step alone (not of the time spent), so one process can repeat the schedule step by step.
OVERRIDES = ["model.overrides={embed_dim = 32, depth = 2, num_heads = 2, mlp_dim = 64}", "data.batch_size=32",
             "data.auto_augment=\"trivial\"", "data.mixup_alpha=0.2", "optim.warmup_steps=100000",
             "ckpt_every_steps=100000"]
BUDGET_MINUTES = 0.01


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small `shapes` set as image folders: 192 training images, 6 steps of 32."""
    return write_shapes_folder(tmp_path_factory.mktemp("shapes"))


@pytest.mark.slow  # torchrun starts three Python processes
def test_two_processes_stop_together_at_the_end_of_a_budget_and_match_one(data, tmp_path):
    """Each process measures its own time; they agree on the slowest clock, so none waits for a step the other
    never takes. The weights are those of one process that takes as many steps."""
    overrides = [*OVERRIDES, f"data.dataset='folder:{data}'"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vitlab",
           "train", "--recipe", "demo", "--out", str(tmp_path), "--name", "ddp", "--no-progress",
           "--set", f"budget_minutes={BUDGET_MINUTES}", "--set", "epochs=1000"]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["train_seconds"] >= BUDGET_MINUTES * 60  # the budget ended the run, on the real clock

    single = tmp_path / "single"
    result = train(load_config("demo", overrides=[*overrides, f"max_steps={last['step']}"]), run_dir=single,
                   progress=False)
    assert result.step == last["step"] >= 1
    a, b = load_file(str(single / "model.safetensors")), load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert a["head.weight"].abs().sum() > 0  # trained: the zero-initialised head moved
    for k in a:
        # Gradient all-reduce sums in another order than one process does: equal up to float rounding.
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)

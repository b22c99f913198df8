"""The trainer never loses work: exact resume after SIGKILL, after a kill mid-write, after SIGTERM;
a non-finite loss stops with the last good checkpoint intact.

The runs read a small `shapes` set written as image folders (192 training images: 6 steps of 32 per epoch, so the
8-step runs cross an epoch boundary and its evaluation); a folder data set reads the same in this process, in a
child process and under torchrun."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import randomize_
from safetensors.torch import load_file

import vitlab
from vitlab.data.shapes import CLASS_NAMES, make_shapes
from vitlab.train.config import ConfigError, TrainingError, load_config
from vitlab.train.state import latest_state, list_checkpoints
from vitlab.train.trainer import _check_progressive, train

# A tiny model; drop_path uses the global RNG, so its state must be restored on resume.
TINY = ["model.overrides={embed_dim = 32, depth = 2, num_heads = 2, mlp_dim = 64, drop_path_rate = 0.1}",
        "data.batch_size=32", "max_steps=8", "ckpt_every_steps=4", "log_every_steps=1", "keep_last=3",
        "data.auto_augment=\"trivial\"", "data.mixup_alpha=0.2", "data.cutmix_alpha=1.0", "data.random_erasing=0.25"]
SPLIT_SIZES = {"train": 192, "val": 60, "test": 120}


def write_shapes_folder(root, sizes=SPLIT_SIZES):
    """``sizes[split]`` images of each split of `shapes`, written as ``root/<split>/<class>/<i>.png``."""
    from PIL import Image

    for split, n in sizes.items():
        data = make_shapes(split, size=n)
        for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
            folder = root / split / data.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")  # (H, W, 3) uint8
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_shapes_folder(tmp_path_factory.mktemp("shapes"))


def tiny_overrides(data):
    return [*TINY, f"data.dataset='folder:{data}'"]


def tiny_config(data, *extra):
    return load_config("demo", overrides=tiny_overrides(data) + list(extra))


def run_script(code: str, data, run_dir, timeout=300) -> subprocess.CompletedProcess:
    """Train in a child process; ``code`` runs first (to inject a fault)."""
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        from vitlab.train.config import load_config
        from vitlab.train.trainer import train
        cfg = load_config("demo", overrides={tiny_overrides(data)!r})
        train(cfg, run_dir={str(run_dir)!r}, progress=False)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as in this process (one_thread): the same float sums
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("straight")
    result = train(tiny_config(data), run_dir=run_dir, progress=False)
    assert result.step == 8 and result.epoch == 1 and not result.interrupted
    return run_dir


def final_weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_run_folder_is_complete(straight):
    assert {"config.json", "environment.json", "metrics.jsonl", "model.safetensors", "best.safetensors"} <= {
        p.name for p in straight.iterdir()}
    env = json.loads((straight / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and "git" in env
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))
    assert [r["step"] for r in records if "val_acc" in r] == [6, 8]  # the end of epoch 0, the end of the run
    model = vitlab.load(straight / "model.safetensors")
    assert model.class_names and len(model.class_names) == model.config.num_classes
    assert [p.name for p in list_checkpoints(straight)] == ["ckpt-step00000008.pt", "ckpt-step00000004.pt"]


@pytest.mark.slow  # a child Python process: about 5 s of imports
def test_sigkill_then_resume_gives_identical_weights(straight, data, tmp_path):
    run_dir = tmp_path / "killed"
    proc = run_script("""
        import os, signal
        import vitlab.train.trainer as T
        real = T.save_state
        def save_then_die(run_dir, state, keep_last):
            path = real(run_dir, state, keep_last)
            if state["step"] == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return path
        T.save_state = save_then_die
    """, data, run_dir)
    assert proc.returncode == -9, proc.stderr
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-step00000004.pt"]
    assert not (run_dir / "model.safetensors").exists()
    result = train(tiny_config(data), run_dir=run_dir, resume=True, progress=False)
    assert result.step == 8
    assert_same_weights(straight, run_dir)


@pytest.mark.slow  # a child Python process: about 5 s of imports
def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(straight, data, tmp_path):
    run_dir = tmp_path / "torn"
    proc = run_script("""
        import os, signal
        import vitlab.train.state as S
        real = S.torch.save
        def torn_save(obj, f):
            if obj["step"] == 8:
                with open(f, "wb") as out:
                    out.write(b"half a checkpoint")
                os.kill(os.getpid(), signal.SIGKILL)
            real(obj, f)
        S.torch.save = torn_save
    """, data, run_dir)
    assert proc.returncode == -9, proc.stderr
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-step00000004.pt"]  # the torn one never landed
    path, state = latest_state(run_dir)
    assert state["step"] == 4
    train(tiny_config(data), run_dir=run_dir, resume=True, progress=False)
    assert_same_weights(straight, run_dir)


def test_sigterm_writes_a_checkpoint_and_returns(straight, data, tmp_path, monkeypatch, capsys):
    """SIGTERM (sent by this process to itself during step 3) ends the step, writes its checkpoint and returns."""
    import vitlab.train.trainer as T

    real = T.set_lr

    def set_lr_then_term(opt, cfg, step, total, *args):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(opt, cfg, step, total, *args)

    run_dir = tmp_path / "term"
    monkeypatch.setattr(T, "set_lr", set_lr_then_term)
    result = train(tiny_config(data), run_dir=run_dir, progress=False)
    assert result.interrupted and result.step == 3
    err = capsys.readouterr().err
    assert "stopped by signal" in err and "--resume" in err
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-step00000003.pt"]
    assert not (run_dir / "model.safetensors").exists()
    monkeypatch.setattr(T, "set_lr", real)
    train(tiny_config(data), run_dir=run_dir, resume=True, progress=False)
    assert_same_weights(straight, run_dir)


def test_non_finite_loss_stops_with_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    import vitlab.train.trainer as T

    real, calls = T.F.cross_entropy, []

    def poisoned(logits, target, *a, **k):
        calls.append(1)
        loss = real(logits, target, *a, **k)
        return loss * float("nan") if len(calls) == 6 else loss

    monkeypatch.setattr(T.F, "cross_entropy", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss .* at step 5 .*last good checkpoint"):
        train(tiny_config(data), run_dir=tmp_path, progress=False)
    path, state = latest_state(tmp_path)
    assert state["step"] == 4 and path.name == "ckpt-step00000004.pt"


def test_resume_needs_a_checkpoint(data, tmp_path):
    with pytest.raises(TrainingError, match="no readable checkpoint"):
        train(tiny_config(data), run_dir=tmp_path, resume=True, progress=False)


def _finetune_config(init, data, *overrides: str):
    """The finetune recipe for two steps of batch 32 on the test data, from the checkpoint ``init``."""
    return load_config("finetune", overrides=["data.batch_size=32", "max_steps=2", "ckpt_every_steps=100",
                                              f"model.init={str(init)!r}", "optim.warmup_steps=1",
                                              f"data.dataset='folder:{data}'", *overrides])


def test_finetune_from_a_checkpoint_at_another_resolution_and_class_count(data, tmp_path):
    init = vitlab.create_model("Ti/4@32", img_size=16, num_classes=10, embed_dim=32, depth=2, num_heads=2, mlp_dim=64)
    path = vitlab.save(init, tmp_path / "init.safetensors", class_names=[f"c{i}" for i in range(10)])
    cfg = _finetune_config(path, data)
    with pytest.warns(UserWarning, match="10 classes, 6 were asked for"):
        result = train(cfg, run_dir=tmp_path / "ft", progress=False)
    model = vitlab.load(tmp_path / "ft" / "model.safetensors")
    assert model.config.img_size == (32, 32) and model.config.num_classes == 6 and result.step == 2
    assert model.class_names == sorted(CLASS_NAMES)  # the data's (a folder's classes are sorted)
    assert model.pos_embed.shape == (1, 1 + 64, 32)  # resampled from the 4x4 grid to 8x8


@pytest.mark.slow  # a short run each (about 2 s)
@pytest.mark.parametrize("options", [
    dict(distill_token=True, pool="distill", num_register_tokens=1),  # DeiT: both heads are fresh
    dict(class_token=False, pool="map", mlp_act="gelu_tanh", pos_resample="bicubic"),  # SigLIP
    dict(layer_scale_init=1e-5, pool="token_gap", pos_resample="bicubic_offset"),  # DINOv2's probe head
    dict(norm_pre=True, patch_bias=False, mlp_act="quick_gelu", no_embed_class=True),  # CLIP
    dict(layer_scale_init=1e-5, pos_embed="none", rope="dinov3", num_register_tokens=2, mlp_layer="swiglu",
         pool="gap"),  # DINOv3 (_plus)
    dict(rope="axial", rope_axes="yx", rope_ref_grid=(4, 4), mlp_layer="swiglu", mlp_inner_norm=True,
         attn_inner_norm=True),  # EVA-02
    dict(rope="mixed", rope_theta=10.0, pos_embed="none", layer_scale_init=1e-5),  # RoPE-Mixed
    dict(norm_layer="rmsnorm", patch_norm=True, mlp_layer="swiglu", class_token=False, pool="map",
         attn_pool_mlp=False, pos_embed="sincos2d_mae", res_post_norm=True),  # AIMv2's parts, post-norm blocks
], ids=["deit", "siglip", "dinov2", "clip", "dinov3", "eva02", "rope_mixed", "aimv2_post_norm"])
def test_finetune_a_family_checkpoint(data, tmp_path, options):
    init = vitlab.create_model("Ti/4@32", img_size=16, num_classes=10, embed_dim=32, depth=2, num_heads=2, mlp_dim=64,
                               **options)
    path = vitlab.save(init, tmp_path / "init.safetensors")
    cfg = _finetune_config(path, data)
    with pytest.warns(UserWarning, match="10 classes, 6 were asked for"):
        result = train(cfg, run_dir=tmp_path / "ft", progress=False)
    model = vitlab.load(tmp_path / "ft" / "model.safetensors")
    assert model.config == init.config.replace(img_size=(32, 32), num_classes=6) and result.step == 2
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


@pytest.mark.slow  # a short run (about 2 s)
def test_finetune_with_frozen_blocks_trains_only_the_rest(data, tmp_path):
    init = vitlab.create_model("Ti/4@32", num_classes=6, embed_dim=32, depth=3, num_heads=2, mlp_dim=64)
    path = vitlab.save(randomize_(init), tmp_path / "init.safetensors", class_names=sorted(CLASS_NAMES))
    cfg = _finetune_config(path, data, "model.freeze_blocks=2")
    train(cfg, run_dir=tmp_path / "ft", progress=False)
    tuned = vitlab.load(tmp_path / "ft" / "model.safetensors").state_dict()
    before = init.state_dict()
    for name, value in tuned.items():
        frozen = name.startswith(("patch_embed", "pos_embed", "cls_token", "blocks.0.", "blocks.1."))
        assert torch.equal(value, before[name]) == frozen, name
    with pytest.raises(ConfigError, match="freeze_blocks"):
        load_config("finetune", overrides=["model.freeze_blocks=-1"])


def test_bf16_autocast_and_gradient_accumulation(data, tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_NATIVE_BF16", "1")  # bf16 asked for on purpose: no "emulated, slow" warning here
    cfg = tiny_config(data, "amp=\"bf16\"", "optim.accum_steps=2", "max_steps=3")
    result = train(cfg, run_dir=tmp_path, progress=False)
    assert result.step == 3 and 0.0 <= result.val_acc <= 1.0
    assert all(torch.isfinite(t).all() for t in final_weights(tmp_path).values())


def test_progressive_resizing_trains_small_first_then_at_full_size(data, tmp_path, monkeypatch):
    sides, forward = [], vitlab.VisionTransformer.forward
    def spy(self, x):
        sides.append((self.training, x.shape[-2], x.shape[-1]))
        return forward(self, x)
    monkeypatch.setattr(vitlab.VisionTransformer, "forward", spy)
    cfg = tiny_config(data, "data.progressive_min_size=16", "data.progressive_until=0.5")  # 8 steps, patch 4
    result = train(cfg, run_dir=tmp_path, progress=False)
    trained = [s for training, s, _ in sides if training]
    assert trained == [16, 20, 24, 28, 32, 32, 32, 32]  # linear over the first half of the steps, in whole patches
    assert all(h == w == 32 for training, h, w in sides if not training)  # evaluation at the full size
    assert result.step == 8 and all(torch.isfinite(t).all() for t in final_weights(tmp_path).values())
    for bad in (18, 32):
        why = f"progressive_min_size={bad}: .* below the model's 32 px .* patch size 4"
        with pytest.raises(ConfigError, match=why):
            train(tiny_config(data, f"data.progressive_min_size={bad}"), run_dir=tmp_path / str(bad), progress=False)
        assert not (tmp_path / str(bad)).exists()  # refused before the run folder is made
    cnn = load_config("cifar10-resnet20", overrides=["data.progressive_min_size=18"])
    assert _check_progressive(cnn, vitlab.create_model("resnet20", num_classes=10)) == 1  # a CNN: any side


def one_class_teacher(path, label, num_classes=6, **preprocessing):  # shapes has 6 classes
    """A saved ResNet-20 that gives class ``label`` for every image (head: zero weights, a bias for it)."""
    teacher = vitlab.create_model("resnet20", num_classes=num_classes)
    torch.nn.init.zeros_(teacher.head.weight)
    with torch.no_grad():
        teacher.head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(label), num_classes) * 10.0)
    pre = teacher.preprocessing.replace(**preprocessing)
    names = sorted(CLASS_NAMES)[:num_classes] if num_classes <= len(CLASS_NAMES) else None
    return vitlab.save(teacher, path, preprocessing=pre, class_names=names)


def test_hard_distillation_teaches_a_deit_students_distillation_head_only(data, tmp_path):
    star = sorted(CLASS_NAMES).index("star")
    teacher = one_class_teacher(tmp_path / "teacher.safetensors", star)
    deit = "model.overrides={embed_dim = 32, depth = 2, num_heads = 2, mlp_dim = 64, distill_token = true, " \
           "pool = \"distill\"}"
    cfg = tiny_config(data, deit, f"distill.teacher='{teacher}'", "distill.alpha=1.0", "optim.lr=1e-2",
                      "optim.warmup_steps=1", "data.mixup_alpha=0.0", "data.cutmix_alpha=0.0")
    train(cfg, run_dir=tmp_path / "run", progress=False)
    student = vitlab.load(tmp_path / "run" / "model.safetensors").eval()
    assert student.head.weight.abs().sum() == 0 and student.head.bias.abs().sum() == 0  # alpha 1: no label loss
    images = make_shapes("val", size=24).images.float().div(255).sub(0.5).div(0.5)  # the student's normalisation
    with torch.no_grad():
        assert torch.all(student(images).argmax(-1) == star)  # the distillation head learned the teacher


def test_a_teacher_gets_the_batch_in_its_own_normalisation_and_the_loss_has_both_kinds(tmp_path):
    from vitlab.train.trainer import _teacher, distillation_loss

    path = one_class_teacher(tmp_path / "t.safetensors", 0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    student = vitlab.create_model("vit_tiny_patch4_32", num_classes=len(CLASS_NAMES))
    student.class_names = sorted(CLASS_NAMES)
    _, to_teacher = _teacher(load_config("demo", overrides=[f"distill.teacher='{path}'"]), student, torch.device("cpu"))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(to_teacher(x), x * 0.5 + 0.5)  # student: (p - 0.5) / 0.5, teacher: p
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(distillation_loss(s, t, "hard"), torch.nn.functional.cross_entropy(s, t.argmax(-1)))
    p_t, log_p_s = (t / 2).softmax(-1), (s / 2).log_softmax(-1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    torch.testing.assert_close(distillation_loss(s, t, "soft", tau=2.0), kl * 2.0**2)
    assert distillation_loss(t, t, "soft", tau=3.0).abs() < 1e-6


def test_a_missing_or_mismatched_teacher_is_a_config_error(data, tmp_path):
    with pytest.raises(ConfigError, match="distill.teacher=.*not found"):
        train(tiny_config(data, f"distill.teacher='{tmp_path / 'none.safetensors'}'"), run_dir=tmp_path / "a",
              progress=False)
    other = one_class_teacher(tmp_path / "ten.safetensors", 0, num_classes=10)
    with pytest.raises(ConfigError, match="predicts 10 classes .* student 6 .* same classes, in the same order"):
        train(tiny_config(data, f"distill.teacher='{other}'"), run_dir=tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="distill.kind='mean'"):
        tiny_config(data, "distill.kind=mean")


def test_eval_command_writes_json_and_confusion(straight, data, tmp_path, capsys):
    from vitlab.cli import main

    assert main(["eval", "--checkpoint", str(straight / "model.safetensors"), "--data", f"folder:{data}",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    n = SPLIT_SIZES["test"]
    assert result["num_images"] == n and 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert len(result["confusion"]) == 6 and sum(map(sum, result["confusion"])) == n
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    assert "top-1" in capsys.readouterr().out


def test_fewshot_command(straight, data, capsys):
    from vitlab.cli import main

    assert main(["fewshot", "--checkpoint", str(straight / "model.safetensors"), "--data", f"folder:{data}",
                 "--shots", "1,5", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "  1-shot" in out and "  5-shot" in out and "chance 0.167" in out
    drawn = int(out.split("features of the ")[1].split()[0])
    assert 30 <= drawn <= 2 * (1 + 5) * 6  # only the images some subset draws: at most seeds x shots x classes


def test_probe_command(straight, data, tmp_path, capsys):
    import json

    from vitlab.cli import main

    assert main(["probe", "--checkpoint", str(straight / "model.safetensors"), "--data", f"folder:{data}",
                 "--features", "cls+mean", "--img-size", "48", "--dtype", "bfloat16", "--train-images", "100",
                 "--out", str(tmp_path / "probe.json")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "probe.json").read_text())
    assert result["train_images"] == 100 and result["img_size"] == [48, 48] and result["features"] == "cls+mean"
    assert 0.0 <= result["top1"] <= 1.0 and f"linear probe top-1 {result['top1']:.4f}" in out
    assert "(the budget); test features" in out


def test_large_images_stream_through_the_trainer_and_eval(tmp_path):
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("val", 4)):
        for c, colour in enumerate(((200, 40, 40), (40, 40, 200))):
            folder = tmp_path / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                noise = torch.randint(0, 40, (96, 112, 3), generator=rng, dtype=torch.uint8)
                img = (torch.tensor(colour, dtype=torch.uint8) + noise).numpy()
                Image.fromarray(img).save(folder / f"{i}.png")
    cfg = load_config("demo", overrides=[
        f"data.dataset='folder:{tmp_path / 'data'}'", "data.img_size=96", "data.batch_size=8", "max_steps=2",
        "data.num_workers=0", "model.name='vit_tiny_patch16_224'",
        "model.overrides={embed_dim = 32, depth = 1, num_heads = 2, mlp_dim = 32}"])
    # 96 px > 64 px: the images are streamed through a DataLoader, not held in memory
    result = train(cfg, run_dir=tmp_path / "run", progress=False)
    assert result.step == 2 and 0.0 <= result.val_acc <= 1.0
    model = vitlab.load(tmp_path / "run" / "model.safetensors")
    assert model.config.img_size == (96, 96) and model.class_names == ["class0", "class1"]
    from vitlab.data import StreamingDataset, load_dataset
    from vitlab.evaluate import evaluate_model

    val = load_dataset(f"folder:{tmp_path / 'data'}", "val", img_size=96)
    assert isinstance(val, StreamingDataset)
    assert evaluate_model(model, val, batch_size=4).num_images == 8


def test_tensorboard_events_in_a_run_folder_named_by_the_config(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(data, "tensorboard=true", "max_steps=2", f"out_dir={str(tmp_path)!r}", "run_name='tb'")
    result = train(cfg, progress=False)  # no run_dir: <out_dir>/<run_name>
    assert result.run_dir == tmp_path / "tb"
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "train_lr", "val_acc"} <= tags
    assert [e.step for e in events.Scalars("train_loss")] == [1, 2]


@pytest.mark.slow
def test_torch_compile_trains_like_eager(data, tmp_path):
    """torch.compile (inductor, C++ on the CPU): about 30 s of compilation on 2 cores."""
    overrides = ["model.overrides={embed_dim = 32, depth = 1, num_heads = 2, mlp_dim = 64}", "data.batch_size=32",
                 "max_steps=4", "ckpt_every_steps=100", f"data.dataset='folder:{data}'"]
    train(load_config("demo", overrides=overrides + ["compile=true"]), run_dir=tmp_path / "compiled", progress=False)
    train(load_config("demo", overrides=overrides), run_dir=tmp_path / "eager", progress=False)
    compiled, eager = final_weights(tmp_path / "compiled"), final_weights(tmp_path / "eager")
    assert compiled["head.weight"].abs().sum() > 0
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], atol=1e-5, rtol=1e-4, msg=k)


def test_cli_resume_continues_a_run_folder_with_its_own_config(straight, tmp_path, capsys):
    import shutil

    from vitlab.cli import main

    run = tmp_path / "r"
    shutil.copytree(straight, run)
    (run / "ckpt-step00000008.pt").unlink()  # as if stopped after step 4
    (run / "model.safetensors").unlink()
    assert main(["train", "--resume", str(run), "--set", "epochs=1"]) == 2  # a resume takes no new config
    assert "drop --recipe, --config and --set" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert_same_weights(straight, run)
    assert main(["train", "--recipe", "demo", "--out", str(tmp_path), "--name", "r"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(straight, tmp_path):
    import shutil

    run = tmp_path / "r"
    shutil.copytree(straight, run)
    (run / "ckpt-step00000008.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="skipping ckpt-step00000008.pt"):
        path, state = latest_state(run)
    assert path.name == "ckpt-step00000004.pt" and state["step"] == 4


def test_a_wall_clock_budget_ends_the_run_and_its_schedule(data, tmp_path, monkeypatch):
    """On a clock that moves 0.125 s per reading (the budget reads it once per step), a 3 s budget is 24 steps,
    whatever the machine's speed. Under torchrun, the real clock: test_train_ddp.py."""
    import functools
    import itertools

    import vitlab.train.trainer as T
    from vitlab.train.budget import Budget

    readings = itertools.count(0.0, 0.125)
    monkeypatch.setattr(T, "Budget", functools.partial(Budget, clock=lambda: next(readings)))
    cfg = load_config("demo", overrides=[TINY[0], f"data.dataset='folder:{data}'", "data.batch_size=32",
                                         "budget_minutes=0.05", "epochs=1000", "log_every_steps=1",
                                         "ckpt_every_steps=100000", "optim.warmup_steps=3"])
    result = train(cfg, run_dir=tmp_path, progress=False)
    assert result.train_seconds == 3.0 and result.step == 24 and result.epoch == 4  # 6 steps per epoch
    assert result.val_acc is not None and not result.interrupted
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert len(lrs) == result.step
    assert lrs[2] == pytest.approx(cfg.optim.lr)  # the end of warmup
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))  # then only down
    assert lrs[-1] < 0.2 * cfg.optim.lr  # ... to near zero at the end of the budget
    _, state = latest_state(tmp_path)
    assert state["train_seconds"] == result.train_seconds  # a resume continues the budget ...
    assert state["warmup_seconds"] == 3 * 0.125  # ... and its schedule

"""RepBlend's projection-head mode (model.trainable: heads) on a slice of the real Tux Paint data with the real
offline encoders (32 px): the parameter layout, what trains, resume, exact = unroll with gradients reaching the
pixels, and buffers of the other mode refused with a message saying which is which."""
import copy
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from artefacts.distilled import load_distilled
from common.config import ConfigError, Schema, load_config, resolve
from conftest import killed_at
from evaluation.students import train_students
from methods import method_keys
from methods.loop import Distillation
from methods.matching import initial_set
from methods.matching.metagrad import InnerLoop, meta_gradient
from methods.registry import resolve_method
from networks.encoders import ProjectionHead
from training.context import RunContext
from training.experts import expert_students, fit_expert, run_buffer
from training.losses import get_loss
from training.trajectories import TrajectoryError, expert_path, load_expert, read_snapshots, save_expert

ROOT = Path(__file__).resolve().parents[1]
TUXPAINT = ROOT / "datasets" / "tuxpaint"
HEADS_TO_FULL = r"holds projection heads only \(model.trainable: heads\) but this run trains full towers"
FULL_TO_HEADS = r"holds full towers \(model.trainable: full\) but this run trains projection heads only"


def _quiet(_msg):
    pass


def _tiny(cfg, tux_slice, shared_cache, buffer_dir, **buffer):
    """`cfg` on the 32 px Tux Paint slice, CPU, its buffer in `buffer_dir`."""
    cfg["data"].update(name="tuxslice", annotations=str(tux_slice), image_root=str(TUXPAINT / "images"),
                       image_size=32)
    cfg["buffer"].update(out_dir=str(buffer_dir), eval_every=0, batch_size=8, **buffer)
    cfg["evaluate"].update(students=1, epochs=2)
    cfg.update(cache_dir=str(shared_cache), device="cpu")
    return cfg


@pytest.fixture(scope="module")
def heads_cfg(tux_slice, shared_cache, tmp_path_factory):
    """configs/tuxpaint/repblend.yaml shrunk to seconds, its heads buffer (2 experts × 2 epochs) trained once."""
    cfg = _tiny(load_config(ROOT / "configs" / "tuxpaint" / "repblend.yaml"), tux_slice, shared_cache,
                tmp_path_factory.mktemp("heads") / "buffer", num_experts=2, epochs=2)
    cfg["distill"].update(budget=6, syn_steps=2, mini_batch_size=3, iterations=3, checkpoint_every=1,
                          max_start_epoch=1, expert_epochs=1, lr_sim=0.1)
    assert cfg["model"]["trainable"] == "heads"
    assert sorted(run_buffer(cfg, log=_quiet)) == [0, 1]
    return cfg


@pytest.fixture(scope="module")
def full_cfg(tux_slice, shared_cache, tmp_path_factory):
    """The full-tower demo config with a one-expert, one-epoch buffer."""
    cfg = _tiny(load_config(ROOT / "configs" / "tuxpaint" / "buffer.yaml"), tux_slice, shared_cache,
                tmp_path_factory.mktemp("full") / "buffer", num_experts=1, epochs=1)
    run_buffer(cfg, log=_quiet)
    return cfg


@pytest.fixture(scope="module")
def heads_ctx(heads_cfg):
    return RunContext(heads_cfg, splits=("train",), log=_quiet)


def _distill_cfg(heads_cfg, out_dir, **distill):
    cfg = copy.deepcopy(heads_cfg)
    cfg["distill"].update(out_dir=str(out_dir), **distill)
    return cfg


# ---- the layout: the image tower's θ is the projection head; the backbone never trains -------------------------

def test_heads_layout_and_frozen_backbone(heads_cfg, heads_ctx, full_cfg):
    student = heads_ctx.new_student(0)
    head_size = sum(p.numel() for p in ProjectionHead(1280, 1280).parameters())
    layout = student.layouts()["image"]
    assert layout[0] == ["head.proj.weight", [1280, 1280]] and all(name.startswith("head.") for name, _ in layout)
    assert student.flat["image"].numel == head_size
    assert not any(p.requires_grad for p in student.image.backbone.parameters())
    assert not student.train().image.backbone.training  # frozen: eval mode even in a training student

    fresh = heads_ctx.new_student(0)
    trained = fit_expert(heads_ctx, 0, lambda *_: None, log=_quiet)
    for (name, before), after in zip(fresh.image.backbone.state_dict().items(),
                                     trained.image.backbone.state_dict().values()):
        assert torch.equal(before, after), name  # weights and BN statistics unchanged after 2 epochs
    for tower in ("image", "text"):
        assert not torch.equal(fresh.flatten()[tower], trained.flatten()[tower])  # both heads trained

    heads_file = expert_path(heads_cfg["buffer"]["out_dir"], 0)
    full_file = expert_path(full_cfg["buffer"]["out_dir"], 0)
    with safe_open(str(heads_file), framework="pt") as f:
        heads_shapes = {t: f.get_slice(t).get_shape() for t in f.keys()}
    with safe_open(str(full_file), framework="pt") as f:
        full_shapes = {t: f.get_slice(t).get_shape() for t in f.keys()}
    assert heads_shapes["image"] == [3, head_size] and heads_shapes["text"][1] == full_shapes["text"][1]
    assert full_shapes["image"][1] == sum(p.numel() for p in fresh.image.backbone.parameters()) != head_size
    # per snapshot the file stores exactly these vectors (fp32): EfficientNet-Lite0's backbone and its 1280 → 1280
    # head are nearly the same size; with NFNet-l0 + BERT-base heads-only snapshots are 2.25× smaller than full ones (docs/distillation.md)
    per_snapshot = {name: sum(s[1] for s in shapes.values()) * 4
                    for name, shapes in (("heads", heads_shapes), ("full", full_shapes))}
    assert per_snapshot["heads"] < per_snapshot["full"]
    assert heads_file.stat().st_size == pytest.approx(3 * per_snapshot["heads"], rel=1e-3)


def test_students_train_the_heads_only(heads_ctx):
    dset = initial_set(heads_ctx, resolve_method(heads_ctx.cfg["distill"], "heads"), 5)
    fresh = heads_ctx.new_student(0)
    student, = train_students(heads_ctx, dset, heads_ctx.cfg["evaluate"], [0])
    assert all(torch.equal(a, b) for a, b in zip(fresh.image.backbone.state_dict().values(),
                                                  student.image.backbone.state_dict().values()))
    assert not torch.equal(fresh.flatten()["image"], student.flatten()["image"])


# ---- distillation: resume, exact = unroll, pixels get gradients -----------------------------------------------------

def test_killed_heads_distillation_resumes_bit_identical(heads_cfg, heads_ctx, tmp_path):
    whole = Distillation.from_context(heads_ctx, _distill_cfg(heads_cfg, tmp_path / "A"), log=_quiet).run()
    assert whole.meta["method"] == "repblend" and len(whole) == 5  # one pair pays for S
    cfg = _distill_cfg(heads_cfg, tmp_path / "B")
    with killed_at(2):
        Distillation.from_context(heads_ctx, cfg, log=_quiet).run()
    assert load_distilled(tmp_path / "B" / "checkpoint.safetensors").meta["iteration"] == 2
    logged = []
    Distillation.from_context(heads_ctx, cfg, log=logged.append).run()
    assert any("at iteration 2" in line for line in logged)  # resumed, not redone
    finals = [tmp_path / run / "distilled.safetensors" for run in "AB"]
    tensors = []
    for path in finals:
        with safe_open(str(path), framework="pt") as f:
            tensors.append({k: f.get_tensor(k) for k in f.keys()})
    assert sorted(tensors[0]) == sorted(tensors[1])
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
    a, b = (load_distilled(path) for path in finals)
    assert a.lrs == b.lrs and a.meta["losses"] == b.meta["losses"] and len(a.meta["losses"]) == 3


def test_exact_equals_unroll_and_pixels_get_gradients(heads_cfg, heads_ctx):
    d = resolve_method(heads_cfg["distill"], "heads")
    assert d["blend"] and d["loss"] == "wbce" and d["sim_type"] == "lowrank"
    dset = initial_set(heads_ctx, d, 5)
    dset.similarity.params["sim_right"] = 0.3 * torch.randn(dset.similarity.params["sim_right"].shape,
                                                            generator=torch.Generator().manual_seed(0))
    snapshots = read_snapshots(expert_path(heads_cfg["buffer"]["out_dir"], 0), [0, 2])
    start, target = ({t: v[k] for t, v in snapshots.items()} for k in (0, 1))
    student, steps = heads_ctx.new_student(0).train(), 4
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randperm(5, generator=gen)[:3] for _ in range(steps)]
    seeds = torch.randint(2 ** 31, (steps,), generator=gen)
    results = {}
    for mode in ("unroll", "exact"):
        syn = {"images": dset.images, "texts": dset.text_features, **dset.similarity.params}
        syn = {k: v.clone().requires_grad_(True) for k, v in syn.items()}
        lrs = {t: torch.tensor(0.5, requires_grad=True) for t in ("image", "text")}
        inner = InnerLoop(student, get_loss(d["loss"]), dset.similarity, batches, seeds, blend=True)
        loss, syn_grads, lr_grads = meta_gradient(mode, inner, start, target, lrs, syn, num_steps=steps)
        results[mode] = loss, {**syn_grads, **{f"lr_{t}": g for t, g in lr_grads.items()}}
    assert results["exact"][0].item() == pytest.approx(results["unroll"][0].item(), rel=1e-5)
    for name, g in results["unroll"][1].items():
        assert g.abs().sum() > 0, name  # the pixels too: through the frozen backbone
        error = ((results["exact"][1][name] - g).norm() / g.norm()).item()
        assert error < 1e-4, (name, error)
    assert all(p.grad is None for p in student.image.backbone.parameters())


# ---- refused: the other mode's buffer, RepBlend without heads ------------------------------------------------------

def test_buffer_of_the_other_mode_is_refused_saying_which(heads_cfg, heads_ctx, full_cfg, tmp_path):
    full_ctx = RunContext(full_cfg, splits=("train",), log=_quiet)
    heads_buffer, full_buffer = heads_cfg["buffer"]["out_dir"], full_cfg["buffer"]["out_dir"]
    lors = _distill_cfg(full_cfg | {"distill": heads_cfg["distill"]}, tmp_path / "lors", method="lors")
    lors["buffer"]["out_dir"] = heads_buffer
    with pytest.raises(TrajectoryError, match=r"expert_000\.safetensors holds projection heads only .*" +
                       "set model.trainable: heads"):
        Distillation.from_context(full_ctx, lors, log=_quiet)
    with pytest.raises(TrajectoryError, match=HEADS_TO_FULL):
        expert_students(full_ctx, expert_path(heads_buffer, 0))
    with pytest.raises(TrajectoryError, match=HEADS_TO_FULL):
        run_buffer({**lors, "buffer": {**full_cfg["buffer"], "out_dir": heads_buffer}}, log=_quiet)

    reverse = _distill_cfg(heads_cfg, tmp_path / "repblend")
    reverse["buffer"]["out_dir"] = full_buffer
    with pytest.raises(TrajectoryError, match=FULL_TO_HEADS + r" .*buffer_heads\.yaml makes one"):
        Distillation.from_context(heads_ctx, reverse, log=_quiet)
    with pytest.raises(TrajectoryError, match=FULL_TO_HEADS):
        run_buffer(reverse, log=_quiet)
    assert not (tmp_path / "lors").exists() and not (tmp_path / "repblend").exists()

    # a buffer written before model.trainable existed holds full towers: accepted as such, refused in heads mode
    snapshots, meta = load_expert(expert_path(full_buffer, 0))
    old = tmp_path / "old"
    save_expert(expert_path(old, 0), {t: list(v) for t, v in snapshots.items()},
                {k: v for k, v in meta.items() if k not in ("trainable", "shapes", "format", "dtype")})
    assert "trainable" not in load_expert(expert_path(old, 0))[1]
    assert len(expert_students(full_ctx, expert_path(old, 0))[0]) == 2
    with pytest.raises(TrajectoryError, match=FULL_TO_HEADS):
        expert_students(heads_ctx, expert_path(old, 0))


def test_repblend_needs_projection_heads(heads_cfg, full_cfg, tmp_path):
    with pytest.raises(ValueError, match=r"distill\.method repblend .* needs model\.trainable: heads, but this run "
                                         r"has model\.trainable: full"):
        resolve_method(heads_cfg["distill"])
    cfg = copy.deepcopy(heads_cfg)
    cfg["model"]["trainable"] = "full"
    cfg["distill"]["out_dir"] = str(tmp_path / "out")
    with pytest.raises(ValueError, match=r"needs model\.trainable: heads"):
        Distillation.from_context(RunContext(full_cfg, splits=("train",), log=_quiet), cfg, log=_quiet)
    assert not (tmp_path / "out").exists()
    cfg["model"]["trainable"] = "backbone"
    with pytest.raises(ConfigError, match="model.trainable must be one of full, heads, not 'backbone'"):
        resolve(cfg, Schema(method_keys()))
    lors = resolve_method({**heads_cfg["distill"], "method": "lors", "blend": None}, "heads")  # any method can
    assert lors["blend"] is False and lors["loss"] == "wbce"

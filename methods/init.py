"""How a distillation's set starts (`distill.init`), for every method: `real` random real pairs, `noise`, or `kmeans`
(MDM's; docs/methods.md §4b): the real pair nearest each of N k-means centroids of the teacher's joint
features of every training pair."""
import torch

from artefacts.pairs import random_pairs, real_pairs
from methods.coresets import joint_embeddings, kmeans


def initial_pairs(ctx, d, n, teacher=None, log=print):
    """The N pairs a run starts from (test transform, or with distill.init_augment the train transform drawn from the
    seed), S and lrs left to the method; `teacher`: the student whose joint features `kmeans` clusters."""
    train, augment = ctx.splits["train"], d["init_augment"]
    if d["init"] == "kmeans":
        log(f"distill.init kmeans: {n} clusters of the {len(train.captions)} training pairs' joint features")
        picks = kmeans(joint_embeddings(ctx, teacher), n, d["seed"])
    else:
        picks = random_pairs(train, n, d["seed"])
    meta = {**ctx.artefact_identity(), "budget": d["budget"], "seed": d["seed"], "init": d["init"],
            "init_augment": augment}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(d["seed"])
        dset = real_pairs(train, ctx.features["train"], ctx.train_transform if augment else ctx.test_transform,
                          picks, meta)
    if d["init"] == "noise":
        gen = torch.Generator().manual_seed(d["seed"])
        dset.images = torch.randn(dset.images.shape, generator=gen)
        feats = ctx.features["train"]
        dset.text_features = feats.mean(0) + feats.std(0) * torch.randn(dset.text_features.shape, generator=gen)
    return dset


def kmeans_teacher(ctx, d, buffer_dir=None, epoch=None):
    """The student whose features `kmeans` clusters: expert 0 at `epoch` of the buffer in `buffer_dir`, or without
    one the pretrained image tower and a text head from the seed."""
    if buffer_dir is None:
        return ctx.new_student(d["seed"]).eval()
    from training.experts import expert_students
    from training.trajectories import expert_path
    (_, student), = expert_students(ctx, expert_path(buffer_dir, 0), [epoch])[0]
    return student

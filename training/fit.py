"""Training and evaluating a student on real pairs: the loops shared by experts and evaluation."""
import math

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.errors import ConfigError, DivergedError, InputError
from data.image_cache import cached_images
from data.images import SplitImages
from training.losses import infonce
from training.metrics import retrieval_recall


def student_optimizer(student, lr_image, lr_text, momentum=0.0, weight_decay=0.0):
    """SGD with one parameter group per tower, each with its own learning rate."""
    return tower_optimizer([p for p in student.image.parameters() if p.requires_grad],
                           list(student.text.parameters()), lr_image, lr_text, momentum, weight_decay)


def tower_lrs(value, key):
    """{tower: lr} from one number for both towers or {image: .., text: ..}; `key` names the setting in errors."""
    if isinstance(value, dict):
        if set(value) != {"image", "text"}:
            raise ConfigError(f"{key} must be a number or {{image: .., text: ..}}, not {value}")
        return {t: float(value[t]) for t in ("image", "text")}
    return {"image": float(value), "text": float(value)}


def tower_optimizer(image_params, text_params, lr_image, lr_text, momentum=0.0, weight_decay=0.0):
    groups = [{"params": image_params, "lr": lr_image}, {"params": text_params, "lr": lr_text}]
    return torch.optim.SGD(groups, lr=lr_image, momentum=momentum, weight_decay=weight_decay)


def split_images(split, transform, per_caption, image_cache=None, num_workers=0):
    """SplitImages of `split`; with `image_cache` (a cache folder: data.image_cache) the images are read decoded from
    the cache there, built first if missing or stale (data/image_cache.py says what is exact and what is not)."""
    stored = cached_images(split, transform, image_cache, num_workers) if image_cache else None
    return SplitImages(split, transform, per_caption, stored)


def pair_loader(split, transform, batch_size, seed, num_workers=0, drop_last=False, image_cache=None):
    """Shuffled train view (one item per caption), in an order fixed by `seed`; `drop_last`: without the short
    last batch; `image_cache`: as split_images."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(split_images(split, transform, True, image_cache, num_workers), batch_size=batch_size,
                      shuffle=True, generator=generator, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), drop_last=drop_last)


def train_epoch(student, loader, text_source, optimizer, device, desc="train", on_batch=None):
    """One epoch of symmetric InfoNCE; `text_source(caption_indices)` gives the batch's text features;
    `on_batch(caption_indices, logits)` sees every batch (e.g. to count forgetting events).

    Returns the mean training loss (summed on the device: no synchronisation per step).
    """
    student.train()
    total, count = torch.zeros((), device=device), 0
    for images, captions in tqdm(loader, desc=desc, leave=False):
        logits = student(images.to(device, non_blocking=True), text_source(captions))
        loss = infonce(logits)
        if on_batch is not None:
            on_batch(captions, logits.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(captions)
        count += len(captions)
    if count == 0:
        raise InputError(f"{desc}: the training loader yielded no batches")
    mean = (total / count).item()
    if not math.isfinite(mean):
        raise DivergedError(f"{desc}: training loss became {mean}; lower the learning rate")
    return mean


def cached_text_source(features, device):
    """Look a batch's caption features up in the cache (moved to `device` once)."""
    features = features.to(device)
    return lambda caption_indices: features[caption_indices.to(device)]


def sampled_text_source(samples, device, seed):
    """Look a batch's caption features up in (M, n_captions, h) cached encodings: each use of a caption draws one of
    its M, from a generator of its own seeded with `seed` (dropout and augmentation keep their streams)."""
    samples, generator = samples.to(device), torch.Generator().manual_seed(seed)

    def source(caption_indices):
        draw = torch.randint(samples.shape[0], (len(caption_indices),), generator=generator)
        return samples[draw.to(device), caption_indices.to(device)]
    return source


@torch.no_grad()
def encode_split(student, split, text_features, transform, device, batch_size=256, num_workers=0, image_cache=None):
    """(image embeddings, one per image; caption embeddings, one per caption) of `split`, normalised;
    `image_cache`: as split_images."""
    student.eval()
    # its own generator: a DataLoader without one draws from the global RNG, so scoring a student
    # mid-training would change the dropout and augmentation of the rest of its training
    loader = DataLoader(split_images(split, transform, False, image_cache, num_workers), batch_size=batch_size,
                        num_workers=num_workers, generator=torch.Generator())
    images = torch.cat([student.encode_image(x.to(device)) for x, _ in loader])
    texts = torch.cat([student.encode_text(chunk.to(device)) for chunk in text_features.split(batch_size)])
    return images, texts


def evaluate_retrieval(student, split, text_features, transform, device, batch_size=256, num_workers=0,
                       image_cache=None):
    """TR/IR recall of `student` on `split`, with all of its captions; `image_cache`: as split_images."""
    images, texts = encode_split(student, split, text_features, transform, device, batch_size, num_workers,
                                 image_cache)
    return retrieval_recall(images @ texts.t(), split.caption_image)

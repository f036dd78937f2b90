"""Sets of real training pairs (S = I): a distillation's initial set, the random coreset, an export folder's pairs,
and the nearest real caption of a learned text feature."""
import torch

from artefacts.distilled import DistilledSet
from data.images import SplitImages
from training.similarity import Similarity


def random_pairs(split, n, seed):
    """Caption indices of `n` training pairs drawn at random (reproducibly from `seed`)."""
    return torch.randperm(len(split.captions), generator=torch.Generator().manual_seed(seed))[:n]


def real_pairs(split, features, transform, caption_indices, meta):
    """A set of real training pairs (one image and one caption each), S = I: the initialisation of a
    synthetic set, and the random-coreset baseline."""
    images = SplitImages(split, transform, per_caption=True)
    pixels = torch.stack([images[int(c)][0] for c in caption_indices])
    captions = [split.captions[int(c)] for c in caption_indices]
    return DistilledSet(pixels, features[caption_indices].clone(), Similarity("identity", len(pixels)), None,
                        {**meta, "captions": captions, "source_captions": [int(c) for c in caption_indices]})


def encoded_pairs(split, text_encoder, transform, meta, folder, method, why):
    """An export folder's pairs as a coreset: one per caption, captions encoded by the frozen `text_encoder`,
    S = I; `why` says where the text features come from (recorded in the set's metadata)."""
    return real_pairs(split, text_encoder.encode(list(split.captions)), transform, torch.arange(len(split.captions)),
                      {"method": method or "folder", "budget": len(split.captions), "loss": "infonce", **meta,
                       "source": str(folder), "text_features": f"encoded captions ({why})"})


def nearest_captions(text_features, reference_features, reference_captions):
    """For each (learned) text feature, the real caption whose frozen-encoder feature is most similar."""
    a = torch.nn.functional.normalize(text_features.float(), dim=-1)
    b = torch.nn.functional.normalize(reference_features.float(), dim=-1)
    return [reference_captions[i] for i in (a @ b.t()).argmax(dim=1).tolist()]

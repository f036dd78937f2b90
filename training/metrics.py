"""Image–text retrieval recall (docs/methods.md §7), for images with any number of captions.

TR@K (image→text): an image is a hit if any of its captions ranks in the top K.
IR@K (text→image): a caption is a hit if its own image ranks in the top K.
Ties count against the query (a wrong item scoring equal to the right one ranks first), so a collapsed
model whose scores are all equal gets chance-level recall, not 100%.
"""
import torch

from data.chance import KS


def retrieval_ranks(sims, caption_image):
    """0-based ranks: per image, of its best caption; per caption, of its own image.

    sims: (n_images, n_captions) similarity matrix; caption_image: (n_captions,) image index of each caption.
    """
    sims = sims.float()
    caption_image = torch.as_tensor(caption_image, device=sims.device)
    n_images = sims.shape[0]
    own = caption_image.unsqueeze(0) == torch.arange(n_images, device=sims.device).unsqueeze(1)
    best_own = sims.masked_fill(~own, float("-inf")).max(dim=1, keepdim=True).values
    image_rank = ((sims >= best_own) & ~own).sum(dim=1)
    own_score = sims.gather(0, caption_image.unsqueeze(0))
    caption_rank = (sims >= own_score).sum(dim=0) - 1
    return image_rank, caption_rank


def retrieval_recall(sims, caption_image, ks=KS):
    """{'tr@1': %, ..., 'ir@1': %, ..., 'mean': %}: percentages, as the papers report them."""
    image_rank, caption_rank = retrieval_ranks(sims, caption_image)
    out = {f"tr@{k}": 100.0 * (image_rank < k).float().mean().item() for k in ks}
    out.update({f"ir@{k}": 100.0 * (caption_rank < k).float().mean().item() for k in ks})
    out["mean"] = sum(out.values()) / len(out)
    return out


def format_table(rows, ks=KS):
    """Markdown table; rows = [(label, {metric: % or (mean, std)})], in the papers' column order (IR then TR)."""
    cols = [f"ir@{k}" for k in ks] + [f"tr@{k}" for k in ks] + ["mean"]
    head = "| model | " + " | ".join(c.upper() for c in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    cell = lambda v: f"{v[0]:.1f} ± {v[1]:.1f}" if isinstance(v, (tuple, list)) else f"{v:.1f}"  # noqa: E731
    body = ["| " + label + " | " + " | ".join(cell(r[c]) for c in cols) + " |" for label, r in rows]
    return "\n".join([head, sep, *body])

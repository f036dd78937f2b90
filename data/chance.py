"""What recall a random ranking gets on a split (docs/methods.md §7), to flag evaluation splits too small to tell
models apart; the data layer's, so that data.prepare can say it before anything trains."""
from math import comb

KS = (1, 5, 10)  # the recall cut-offs every table reports
SMALL_SPLIT = 10  # images: an evaluation split this small makes R@5 and R@10 all but certain


def chance_recall(captions_per_image, ks=KS):
    """The expected recall (%) of a random ranking over a split whose images have these caption counts: IR@K =
    K/N over N images; TR@K = 1 − C(M−c, K)/C(M, K) for an image with c of the M captions, averaged over images."""
    n, m = len(captions_per_image), sum(captions_per_image)
    out = {f"ir@{k}": 100.0 * min(k, n) / n for k in ks}
    top = {k: min(k, m) for k in ks}  # a top K longer than the list holds all of it
    out.update({f"tr@{k}": 100.0 * sum(1 - comb(m - c, top[k]) / comb(m, top[k]) for c in captions_per_image) / n
                for k in ks})
    return out


def small_split_warning(split, captions_per_image, ks=KS):
    """A line saying that recall over a split of ≤ SMALL_SPLIT images says little, with chance levels; or None."""
    if len(captions_per_image) > SMALL_SPLIT:
        return None
    chance = chance_recall(captions_per_image, ks)
    levels = ", ".join(f"{key.upper()} {value:.0f}%" for key, value in chance.items())
    return (f"warning: the {split} split has only {len(captions_per_image)} images, so recall over it says little: "
            f"a random ranking scores {levels}")

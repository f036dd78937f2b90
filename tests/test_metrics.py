from math import comb

import pytest
import torch

from data.chance import chance_recall, small_split_warning
from training.metrics import format_table, retrieval_ranks, retrieval_recall


def test_image_whose_second_caption_is_the_hit():
    # 3 images; image 0 has captions 0,1; image 1 has caption 2; image 2 has captions 3,4.
    caption_image = [0, 0, 1, 2, 2]
    sims = torch.tensor([
        [0.1, 0.9, 0.8, 0.0, 0.2],   # image 0: its 2nd caption (col 1) ranks first -> TR@1 hit
        [0.7, 0.1, 0.5, 0.6, 0.0],   # image 1: own caption (0.5) ranks 3rd
        [0.0, 0.3, 0.2, 0.1, 0.4],   # image 2: own captions best 0.4 ranks first
    ])
    image_rank, caption_rank = retrieval_ranks(sims, caption_image)
    assert image_rank.tolist() == [0, 2, 0]
    # caption ranks over images (columns): col0 own img0 0.1 vs 0.7,0.0 -> rank 1; col1 0.9 -> 0;
    # col2 own img1 0.5 vs 0.8 -> 1; col3 own img2 0.1 vs 0.0,0.6 -> 1; col4 own img2 0.4 -> 0
    assert caption_rank.tolist() == [1, 0, 1, 1, 0]
    r = retrieval_recall(sims, caption_image, ks=(1, 2))
    assert r["tr@1"] == pytest.approx(200 / 3)
    assert r["tr@2"] == pytest.approx(200 / 3)
    assert r["ir@1"] == pytest.approx(40.0)
    assert r["ir@2"] == pytest.approx(100.0)
    assert r["mean"] == pytest.approx((200 / 3 * 2 + 40 + 100) / 4)


def test_perfect_and_collapsed_models():
    caption_image = torch.arange(4).repeat_interleave(2)
    perfect = (caption_image.unsqueeze(0) == torch.arange(4).unsqueeze(1)).float()
    assert retrieval_recall(perfect, caption_image, ks=(1,))["mean"] == 100.0
    # all scores equal: ties count against the query, so a collapsed model scores zero at K=1
    collapsed = torch.ones(4, 8)
    r = retrieval_recall(collapsed, caption_image, ks=(1, 10))
    assert r["tr@1"] == 0.0 and r["ir@1"] == 0.0
    assert r["tr@10"] == 100.0 and r["ir@10"] == 100.0  # K beyond the candidate count


def test_recall_is_percentage_of_queries_hit_within_k():
    torch.manual_seed(0)
    sims = torch.randn(6, 6)
    caption_image = torch.arange(6)
    r = retrieval_recall(sims, caption_image, ks=(1, 3))
    order = sims.argsort(dim=1, descending=True)
    expected_tr3 = 100 * sum(i in order[i, :3].tolist() for i in range(6)) / 6
    assert r["tr@3"] == pytest.approx(expected_tr3)
    order_t = sims.t().argsort(dim=1, descending=True)
    expected_ir1 = 100 * sum(order_t[j, 0].item() == j for j in range(6)) / 6
    assert r["ir@1"] == pytest.approx(expected_ir1)


def test_table_shows_mean_and_std_over_students():
    row = {k: (10.0, 1.25) for k in ("ir@1", "ir@5", "ir@10", "tr@1", "tr@5", "tr@10", "mean")}
    line = format_table([("lors", row)]).splitlines()[2]
    assert line.startswith("| lors | 10.0 ± 1.2 |") and line.count("±") == 7


def test_chance_recall_on_hand_made_splits():
    """2 images of 1 caption: IR@1 = TR@1 = 50%; 6 images of 2 captions each: TR@1 = 2/12, TR@5 = 1 − C(10,5)/C(12,5)."""
    assert chance_recall([1, 1], ks=(1,)) == {"ir@1": 50.0, "tr@1": 50.0}
    chance = chance_recall([2] * 6)
    assert chance["ir@1"] == pytest.approx(100 / 6) and chance["ir@10"] == 100.0
    assert chance["tr@1"] == pytest.approx(100 * 2 / 12)
    assert chance["tr@5"] == pytest.approx(100 * (1 - comb(10, 5) / comb(12, 5)))


def test_chance_recall_matches_random_rankings():
    counts = [1, 2, 3, 1, 2]
    caption_image = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)])
    generator = torch.Generator().manual_seed(0)
    runs = [retrieval_recall(torch.rand(5, 9, generator=generator), caption_image, ks=(1, 2)) for _ in range(4000)]
    for key, value in chance_recall(counts, ks=(1, 2)).items():
        assert sum(r[key] for r in runs) / len(runs) == pytest.approx(value, abs=1.0)


def test_only_small_splits_are_warned_about():
    assert small_split_warning("test", [5] * 11) is None
    assert small_split_warning("test", [1] * 6) == (
        "warning: the test split has only 6 images, so recall over it says little: a random ranking scores IR@1 17%, "
        "IR@5 83%, IR@10 100%, TR@1 17%, TR@5 83%, TR@10 100%")

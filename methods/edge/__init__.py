"""EDGE, generative distillation (docs/methods.md §5): fine-tune a diffusion model (finetune.py), sample
and caption a set (generation.py); generate.py runs the steps and exports the set."""
EDGE = "edge"  # the method name its sets carry

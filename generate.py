"""EDGE generative distillation (docs/methods.md §5): finetune → sample → caption → export; each step resumable.

    python generate.py finetune --config configs/tuxpaint/edge.yaml    # torchrun --nproc-per-node G … for DDP
    python generate.py sample   --config configs/tuxpaint/edge.yaml
    python generate.py caption  --config configs/tuxpaint/edge.yaml
    python generate.py export   --config configs/tuxpaint/edge.yaml    # → the distilled-set artefact
    python generate.py all      --config configs/tuxpaint/edge.yaml    # the four in turn

Outputs go to edge.out_dir: finetune.safetensors (the trained denoiser parameters, shared by every budget) and
budget_<N>/ (images/, prompts.json, dataset.json, and distilled.safetensors, which `evaluate.py --distilled` reads).
"""
from pathlib import Path

from common.cli import run
from common.config import parse_args, save_config
from common.io import check_out_dir, run_lock
from data.annotations import annotation_files
from methods import method_keys

STEPS = ("finetune", "sample", "caption", "export")


def _flags(parser):
    parser.add_argument("step", choices=(*STEPS, "all"), help="which step to run (all: the four in turn)")


def main(argv=None):
    cfg, args = parse_args(argv, description=__doc__.split("\n")[0], extra=_flags,
                           reads=("data", "model", "edge"), method_keys=method_keys())
    from methods.edge.generation import set_folder
    out_dir = Path(check_out_dir(cfg["edge"]["out_dir"], "generate.py", "edge.out_dir", annotation_files(cfg["data"])))
    finetuned, folder = out_dir / "finetune.safetensors", set_folder(cfg["edge"])
    with run_lock(out_dir):
        save_config(cfg, out_dir / f"config_{args.step}.yaml")
        run_steps(cfg, args.step, finetuned, folder)


def run_steps(cfg, which, finetuned, folder):
    for step in STEPS if which == "all" else (which,):
        if step == "finetune":
            from methods.edge.finetune import finetune
            finetune(cfg)
        elif step == "sample":
            from methods.edge.generation import sample
            sample(cfg, finetuned, folder)
        elif step == "caption":
            from common.distributed import pick_device
            from methods.edge.generation import caption
            from networks.captioner import load_captioner
            ecfg = cfg["edge"]
            captioner = None if ecfg["cpi"] == 1 else load_captioner(  # one caption per image: the prompt
                ecfg["captioner_kind"], ecfg["captioner"], ecfg["instruction"], pick_device(cfg["device"]),
                ecfg["max_new_tokens"])
            caption(cfg, folder, captioner)
        else:
            from methods.edge.generation import export
            export(cfg, folder, folder / "distilled.safetensors")


if __name__ == "__main__":
    run(main)

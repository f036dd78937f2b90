"""EDGE generative distillation (METHOD §5): finetune → sample → caption → export; each step resumable.

    python generate.py finetune --config configs/tuxpaint/edge.yaml    # torchrun --nproc-per-node G … for DDP
    python generate.py sample   --config configs/tuxpaint/edge.yaml
    python generate.py caption  --config configs/tuxpaint/edge.yaml
    python generate.py export   --config configs/tuxpaint/edge.yaml    # → the distilled-set artefact
    python generate.py all      --config configs/tuxpaint/edge.yaml    # the four in turn

Outputs go to edge.out_dir: finetune.safetensors (the trained denoiser parameters, shared by every budget) and
budget_<N>/ (images/, prompts.json, dataset.json, and distilled.safetensors, which `evaluate.py --distilled` reads).
"""
from pathlib import Path

from utils.cli import run
from utils.config import parse_args, save_config
from utils.io import run_lock

STEPS = ("finetune", "sample", "caption", "export")


def _flags(parser):
    parser.add_argument("step", choices=(*STEPS, "all"), help="which step to run (all: the four in turn)")


def export(cfg, folder, out, log=print):
    from data.distilled import read_folder, save_distilled
    from utils.context import RunContext
    ctx = RunContext(cfg, splits=(), log=log)
    dset = read_folder(folder, ctx.text_encoder, ctx.test_transform,
                       {**ctx.artefact_identity(), "method": "edge", "seed": cfg["edge"]["seed"],
                        "cpi": cfg["edge"]["cpi"], "config": cfg})
    save_distilled(out, dset)
    log(f"EDGE set of {len(dset)} pairs written to {out}")
    return out


def main(argv=None):
    cfg, args = parse_args(argv, description=__doc__.split("\n")[0], extra=_flags)
    from utils.generation import set_folder
    out_dir = Path(cfg["edge"]["out_dir"])
    finetuned, folder = out_dir / "finetune.safetensors", set_folder(cfg["edge"])
    with run_lock(out_dir):
        save_config(cfg, out_dir / f"config_{args.step}.yaml")
        run_steps(cfg, args.step, finetuned, folder)


def run_steps(cfg, which, finetuned, folder):
    for step in STEPS if which == "all" else (which,):
        if step == "finetune":
            from utils.edge import finetune
            finetune(cfg)
        elif step == "sample":
            from utils.generation import sample
            sample(cfg, finetuned, folder)
        elif step == "caption":
            from networks.captioner import load_captioner
            from utils.generation import caption
            from utils.training import pick_device
            ecfg = cfg["edge"]
            captioner = None if ecfg["cpi"] == 1 else load_captioner(  # one caption per image: the prompt
                ecfg["captioner_kind"], ecfg["captioner"], ecfg["instruction"], pick_device(cfg.get("device", "auto")),
                ecfg["max_new_tokens"])
            caption(cfg, folder, captioner)
        else:
            export(cfg, folder, folder / "distilled.safetensors")


if __name__ == "__main__":
    run(main)

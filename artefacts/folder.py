"""What both export formats share (Karpathy: `artefacts.export`; Hugging Face imagefolder: `artefacts.imagefolder`):
the files each writes, the marker of a previous export, the checks before anything is written, the PNGs, and the safe
build-and-swap of the folder."""
import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from artefacts.distilled import DistilledSetError
from common.io import LOCK_FILE, atomic_path, read_tensor_file, require_folder

EXPORT_FORMAT = "mmdd-export-v1"  # in an export's marker file: marks a folder that a re-export may replace
FEATURES_FILE, METADATA_FILE, CARD_FILE = "features.safetensors", "metadata.jsonl", "README.md"  # imagefolder's
EXPORT_FILES = {"karpathy": ("images", "dataset.json"),
                "imagefolder": ("images", METADATA_FILE, CARD_FILE, FEATURES_FILE)}


def check_exportable(dset, folder):
    """Refuse, before anything is written, a set without a caption per pair or with non-finite pixels."""
    captions = dset.meta.get("captions")
    if not captions or len(captions) != len(dset):
        raise DistilledSetError(f"cannot export to {folder}: this distilled set has no caption per pair to export")
    if not torch.isfinite(dset.images).all():
        raise DistilledSetError(f"cannot export to {folder}: the set's images hold NaN or Inf values (the "
                                f"distillation diverged); nothing was written")


def write_pngs(dset, folder):
    """`folder/0000.png …`: the set's images as 8-bit RGB (pixels outside [0, 1] clipped); their names."""
    from PIL import Image

    from common.visuals import to_uint8
    folder.mkdir()
    names = [f"{i:04d}.png" for i in range(len(dset))]
    for name, pixels in zip(names, to_uint8(dset.images, dset.meta["mean"], dset.meta["std"])):
        with atomic_path(folder / name) as tmp:  # a full disk names the file
            Image.fromarray(pixels).save(tmp, format="PNG")
    return names


@contextmanager
def export_build(folder, fmt, overwrite):
    """Yield a fresh folder beside `folder` to build an export of format `fmt` (EXPORT_FILES) in; on success its
    files replace those of the same names in `folder`, and a previous export's (of either format). So a failed
    export leaves the folder as it was, and a re-export leaves none of the old files. A non-empty folder other than
    a previous export is refused unless `overwrite` (then only the files this export writes are replaced)."""
    folder = Path(folder)
    _check_export_target(folder, fmt, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=folder.parent, prefix=_build_prefix(folder)))
    try:
        yield build
        _move_export_in(build, folder, fmt)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _build_prefix(folder):
    return f".{folder.name}.export-"


def remove_stale_builds(folder):
    """Delete the build folders of exports to `folder` that were killed (call it holding the folder's lock, so that
    no export to it is running)."""
    folder = Path(folder)
    for stale in folder.parent.glob(_build_prefix(folder) + "*"):
        shutil.rmtree(stale, ignore_errors=True)


def _previous_export(folder):
    """The format of the export in `folder` (its marker file holds EXPORT_FORMAT), or None."""
    try:
        if json.loads((folder / "dataset.json").read_text()).get("format") == EXPORT_FORMAT:
            return "karpathy"
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return "imagefolder" if read_tensor_file(folder / FEATURES_FILE)[0].get("format") == EXPORT_FORMAT else None
    except (OSError, ValueError, AttributeError, SafetensorError):
        return None


def _listed(names):
    names = [f"{n}/" if n == "images" else n for n in names]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _check_export_target(folder, fmt, overwrite):
    require_folder(folder, f"export folder {folder}")
    if overwrite or not folder.is_dir() or _previous_export(folder):
        return
    entries = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)
    if entries:
        shown = ", ".join(entries[:5]) + (", …" if len(entries) > 5 else "")
        raise DistilledSetError(f"export folder {folder} is not empty ({shown}) and is not a previous export; "
                                f"choose a new or empty folder, or pass --overwrite (overwrite=True) to replace "
                                f"its {_listed(EXPORT_FILES[fmt])}")


def _move_export_in(build, folder, fmt):
    """Move the files of a previous export in `folder` and those the new one replaces into `build/.old` (deleted
    with it), the marker first, then the new export's files in, the marker last; put the old ones back if a move
    fails."""
    folder.mkdir(exist_ok=True)
    previous = _previous_export(folder)
    replaced = dict.fromkeys([*reversed(EXPORT_FILES[previous] if previous else ()), *reversed(EXPORT_FILES[fmt])])
    aside, moved, placed = build / ".old", [], []
    aside.mkdir()
    try:
        for name in replaced:
            if (folder / name).exists():
                (folder / name).rename(aside / name)
                moved.append(name)
        for name in EXPORT_FILES[fmt]:
            (build / name).rename(folder / name)
            placed.append(name)
    except OSError:
        for name in placed:
            (folder / name).rename(build / name)
        for name in moved:
            (aside / name).rename(folder / name)
        raise

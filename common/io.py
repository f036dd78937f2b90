"""File output that is never half-written, and content hashes used to tie artefacts to their inputs."""
import hashlib
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.errors import BusyError, OutputError


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp's temporaries are 0600


LOCK_FILE = ".lock"  # in a folder a run is writing into (folder_lock)


class FolderInUseError(BusyError):
    pass


@contextmanager
def atomic_path(path):
    """Yield a temporary path in the destination folder; rename it onto `path` only on success (with the mode a
    new file gets under the umask)."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}{_free_space(path.parent)}; "
                          f"the file is as it was before") from err
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


def _free_space(folder):
    """', N MiB free on its disk' for a message about a failed write, or '' when the disk cannot be asked."""
    try:
        return f", {shutil.disk_usage(folder).free / 2**20:,.0f} MiB free on its disk"
    except OSError:
        return ""


@contextmanager
def folder_lock(folder, log=print):
    """Hold `folder/.lock` (pid and host) while a run writes into `folder`: a second run gets a FolderInUseError
    naming the holder. A lock whose holder has died on this host is taken over, with a note."""
    folder, me = Path(folder), {"pid": os.getpid(), "host": socket.gethostname()}
    require_folder(folder, str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
            break
        except FileExistsError:
            holder = _lock_holder(path)
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                log(f"{folder}: taking over the lock of process {holder['pid']}, which is no longer running")
                path.unlink(missing_ok=True)
                continue
            raise FolderInUseError(
                f"{folder} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')} ({path}); wait "
                f"for that run to finish or write elsewhere; if it is gone (e.g. on another machine), delete {path}")
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    try:
        yield
    finally:
        if _lock_holder(path) == me:
            path.unlink(missing_ok=True)


def run_lock(folder, log=print):
    """`folder_lock` held by a plain run, or by rank 0 of a torchrun job for all its ranks."""
    return folder_lock(folder, log) if int(os.environ.get("RANK", 0)) == 0 else nullcontext()


def _lock_holder(path):
    try:
        holder = json.loads(Path(path).read_text())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):  # being written this instant, or damaged: treated as held
        return {}


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def check_output(out, inputs=(), flag="--out", overwrite=True):
    """Before anything runs: refuse an output that would destroy an input of the run (the input itself, a folder
    holding it, or a path inside an input folder); with `overwrite` False, refuse an existing file too."""
    target = Path(out).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise OutputError(f"{flag} {out} would overwrite {source}, an input of this run: choose another path")
    if not overwrite and target.exists():
        raise OutputError(f"{flag} {out} exists: choose another path, or give --overwrite to replace it")
    return out


# The files that mark a folder as a tool's output: (pattern, what the folder is, the tool that writes it), the first
# match naming it (an EDGE set holds prompts.json before its distilled.safetensors).
TOOL_FOLDERS = (("prompts.json", "an EDGE set of generate.py", "generate.py"),
                ("config_*.yaml", "an EDGE run of generate.py", "generate.py"),
                ("expert_*.safetensors", "a buffer of buffer.py", "buffer.py"),
                ("checkpoint.safetensors", "a distillation of distill.py", "distill.py"),
                ("distilled.safetensors", "a distillation of distill.py", "distill.py"),
                ("features.safetensors", "an export of artefacts.export", "artefacts.export"),
                ("dataset*.json", "a dataset or an export (its dataset*.json)", "data"))


def tool_folder(folder):
    """(what `folder` is, the tool that writes it) by TOOL_FOLDERS, or None for a folder no tool owns."""
    for pattern, kind, tool in TOOL_FOLDERS:
        if any(Path(folder).glob(pattern)):
            return kind, tool
    return None


def require_folder(path, label):
    """Refuse an output folder that exists as a file; `label` names it as the user gave it."""
    if Path(path).exists() and not Path(path).is_dir():
        raise OutputError(f"{label} is a file, not a folder: choose a new or empty folder")


def check_out_dir(out_dir, tool, flag, inputs=()):
    """Before anything runs: refuse an output folder of `tool` that would replace one of the run's `inputs`
    (check_output), or that is, or holds (two levels down), another tool's folder, so that no run writes into, or
    mixes its files with, another's results. A folder of `tool` itself is fine: the run resumes or adds to it."""
    check_output(out_dir, inputs, flag)
    root = Path(out_dir)
    require_folder(root, f"{flag} {out_dir}")
    for folder in (root, *root.glob("*/"), *root.glob("*/*/")):
        found = tool_folder(folder)
        if found and found[1] != tool:
            where = "is" if folder == root else f"holds {folder},"
            raise OutputError(f"{flag} {out_dir} {where} {found[0]}, not a folder for {tool}'s output: choose a "
                              "new folder")
    return out_dir


def atomic_write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def save_tensors(path, tensors, metadata):
    """safetensors file, written atomically; every metadata value is stored JSON-encoded. The same tensors and
    metadata give the same bytes in every process (`_sort_header`)."""
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        _sort_header(tmp)


def _sort_header(path):
    """Rewrite a safetensors header with its keys sorted, in place: the writer orders them per process (a hash map),
    so two saves of one set had different sha256s. Compact JSON of the same keys has the header's length; the data
    offsets are relative to the data, so only the header changes."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        ordered = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(ordered) > size:
            raise RuntimeError(f"{path}: the sorted safetensors header is longer than the written one")
        f.seek(8)
        f.write(ordered.ljust(size))  # the writer pads with spaces too


def read_tensor_file(path):
    """(metadata decoded, {name: shape}) of a safetensors file written by `save_tensors`; raises on damage."""
    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    return meta, shapes


def remove_stale_temporaries(folder):
    """Delete temporaries left by a killed writer (they are never valid outputs)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def hash_strings(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def hash_state(module):
    """Hash of a module's parameters and buffers: identifies the weights whatever file they came from."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]

"""The whole-pipeline cost of each distillation method in one benchmark folder (sh/benchmark_tuxpaint.sh), from the
GNU time files it writes: experts (when the method needs them) + distillation (its initialisation included).

    python bench/pipeline_cost.py results/tuxpaint/split1 [--split 1]

Prints a markdown table: wall and CPU seconds summed over the parts, the peak memory of the largest part, and the
wall and CPU ratio to LoRS's pipeline at the same budget (LoRS from k-means where plain LoRS was not timed). A part
without a time file (experts made before the benchmark ran) leaves its row marked incomplete rather than cheaper than
it was. Asserts nothing.
"""
import argparse
import re
import sys
from pathlib import Path

# method → the experts' folder it needs (None: none); the benchmark's names of its distillations
NEEDS = {"covmatch": None, "mdm": "buffer", "mtt-vl": "buffer", "tesla-vl": "buffer", "lors": "buffer",
         "lors-kmeans": "buffer", "mtt-vl-kmeans": "buffer", "repblend": "buffer_heads"}
TIME = re.compile(r"([\d.]+) s wall, ([\d.]+)\+([\d.]+) s CPU, (\d+) KB peak")


def read_time(path):
    """(wall s, CPU s, peak MiB), or None when the file is missing or the command failed."""
    if not path.is_file():
        return None
    text = path.read_text()
    match = TIME.search(text)
    if not match or "non-zero status" in text:
        return None
    wall, user, system, peak = match.groups()
    return float(wall), float(user) + float(system), int(peak) / 1024


def pipelines(folder):
    """[(method, budget, parts, (wall, cpu, peak) or None)] for every timed distillation in `folder`."""
    rows = []
    for path in sorted(folder.glob("*.time")):
        method, _, budget = path.stem.rpartition("_")
        if method not in NEEDS or not budget.isdigit():
            continue
        parts = [path] + ([folder / f"{NEEDS[method]}.time"] if NEEDS[method] else [])
        times = [read_time(p) for p in parts]
        total = None if None in times else (sum(t[0] for t in times), sum(t[1] for t in times),
                                            max(t[2] for t in times))
        rows.append((method, int(budget), [p.stem for p in parts], total))
    return sorted(rows, key=lambda r: (r[1], r[0]))


def lors_reference(rows):
    """{budget: (LoRS's pipeline cost, its name)}: plain LoRS, or where it was not timed LoRS from k-means (the same
    experts and iterations, plus its k-means, so a ratio against it errs on LoRS's side)."""
    timed = {(method, budget): total for method, budget, _, total in rows if total}
    return {budget: (timed[name, budget], name) for name in ("lors-kmeans", "lors")  # plain LoRS last: it wins
            for method, budget in timed if method == name}


def table(rows, split):
    reference = lors_reference(rows)
    lors = {budget: total for budget, (total, _) in reference.items()}
    lines = [f"Whole-pipeline cost, split {split} (GNU time; experts + distillation, initialisation included)", "",
             "| method | budget | parts | wall s | CPU s | peak MiB | wall / LoRS | CPU / LoRS |",
             "|---|---|---|---|---|---|---|---|"]
    for method, budget, parts, total in rows:
        if total is None:
            lines.append(f"| {method} | {budget} | {' + '.join(parts)} | incomplete: a part was not timed or failed "
                         f"| | | | |")
            continue
        wall, cpu, peak = total
        ratio = (f"{wall / lors[budget][0]:.3f} | {cpu / lors[budget][1]:.3f}" if budget in lors else "– | –")
        lines.append(f"| {method} | {budget} | {' + '.join(parts)} | {wall:.0f} | {cpu:.0f} | {peak:.0f} | {ratio} |")
    if reference:
        lines += ["", "LoRS: " + ", ".join(f"{name} at budget {b}" for b, (_, name) in sorted(reference.items()))]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--split", default="?", help="the split seed, for the title")
    args = parser.parse_args(argv)
    print(table(pipelines(args.folder), args.split))


if __name__ == "__main__":
    sys.exit(main())

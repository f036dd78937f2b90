"""Results table: gather evaluate.py result files into one table per dataset and budget, with the published
reference numbers of METHOD §8 alongside (marked as published, with the protocol they were reported under).

    python -m utils.report runs/tuxpaint/bench/*.json [--protocol val-selected|last epoch|as published|all] [--out report.md]
        [--plot report.png]

Full-data rows (no budget) appear in every table of their dataset. --plot draws mean recall (± std) against budget,
one line per method, one panel per dataset and protocol, full data as horizontal lines and the published numbers as
hollow markers; a distillation's starting points (controls) are left to the tables.
"""
import argparse
import json
from pathlib import Path

from utils.cli import run
from utils.evaluation import PROTOCOLS
from utils.io import atomic_write_text
from utils.metrics import format_table
from utils.visuals import save_budget_plot

# METHOD §8: NFNet-l0 + BERT, "IR@1/5/10 · TR@1/5/10" per (dataset, budget); budget None = full data
PUBLISHED = {
    ("flickr30k", 100): {"random": "1.0/4.0/6.5 · 1.3/5.9/10.1", "mtt-vl": "4.7/15.7/24.6 · 9.9/28.3/39.1",
                         "lors": "8.3/24.1/35.1 · 11.8/35.8/49.2", "repblend": "11.5/32.0/44.5 · 16.2/41.7/55.5"},
    ("flickr30k", 200): {"random": "1.1/4.8/9.2 · 2.1/8.7/13.2", "mtt-vl": "4.6/16.0/25.5 · 10.2/28.7/41.9",
                         "lors": "8.6/25.3/36.6 · 14.5/38.7/53.4", "repblend": "12.7/34.7/47.6 · 18.6/46.0/60.0"},
    ("flickr30k", 500): {"random": "2.4/10.5/17.4 · 5.2/18.3/25.7", "mtt-vl": "6.6/20.2/30.0 · 13.3/32.8/46.8",
                         "lors": "10.0/28.9/41.6 · 15.5/39.8/53.7", "repblend": "17.0/42.5/55.9 · 22.5/53.2/66.7"},
    ("flickr30k", 1000): {"random": "3.8/11.8/19.9 · 5.2/15.6/21.4", "mtt-vl": "7.9/21.2/34.4 · 13.3/31.5/43.7"},
    ("flickr30k", None): {"full data": "23.2/54.0/66.6 · 33.8/65.7/76.9"},
    ("coco", 100): {"random": "0.3/1.3/2.7 · 0.8/3.0/5.0", "mtt-vl": "1.3/5.4/9.5 · 2.5/10.0/15.7",
                    "lors": "1.8/7.1/12.2 · 3.3/12.2/19.6", "repblend": "4.1/13.9/22.3 · 5.2/17.9/28.0"},
    ("coco", 200): {"random": "0.6/2.3/4.4 · 1.0/4.0/7.2", "mtt-vl": "1.7/6.5/12.3 · 3.3/11.9/19.4",
                    "lors": "2.4/9.3/15.5 · 4.3/14.2/22.6", "repblend": "6.1/19.3/29.8 · 6.9/21.8/32.3"},
    ("coco", 500): {"random": "1.1/5.0/8.7 · 1.9/7.5/12.5", "mtt-vl": "2.5/8.9/15.8 · 5.0/17.2/26.0",
                    "lors": "2.8/9.9/16.5 · 5.3/18.3/27.9", "repblend": "6.2/19.9/30.6 · 7.0/22.0/32.9"},
    ("coco", 1000): {"random": "1.5/5.6/9.6 · 1.9/7.6/12.7", "mtt-vl": "3.3/11.9/22.1 · 6.8/21.9/31.0"},
    ("coco", None): {"full data": "14.6/38.9/53.2 · 20.6/46.8/61.3"},
}
# the protocol each published column was reported under (METHOD §7)
PUBLISHED_PROTOCOL = {"random": "last epoch", "mtt-vl": "last epoch", "lors": "test-selected",
                      "repblend": "test-selected", "full data": "last epoch"}
METHOD_ORDER = ("random", "herding", "k-center", "forgetting", "mtt-vl", "tesla-vl", "lors", "repblend", "edge")
CONTROL = "iteration 0"  # evaluate.describe's metagrad for a distillation's starting point


def parse_published(text):
    """'1/2/3 · 4/5/6' -> {ir@1 … tr@10, mean}."""
    ir, tr = ([float(x) for x in half.split("/")] for half in text.split("·"))
    row = {**{f"ir@{k}": v for k, v in zip((1, 5, 10), ir)}, **{f"tr@{k}": v for k, v in zip((1, 5, 10), tr)}}
    row["mean"] = sum(row.values()) / 6
    return row


def read_results(paths):
    """Every result entry of the files, tagged with its dataset."""
    entries = []
    for path in paths:
        try:
            content = json.loads(Path(path).read_text())
            results = [{**e, "dataset": content["dataset"]} for e in content["results"] if "protocols" in e]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise SystemExit(f"{path} is not a result file of evaluate.py (--distilled or --full-data): {err}")
        entries += results
    if not entries:
        raise SystemExit("no distilled-set or full-data results in the given files")
    return entries


def _order(entry):
    method = entry["method"]
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (method == "full data", rank, method, entry.get("metagrad") or "", entry["model"])


def tables(entries, protocols):
    """Markdown: per dataset and budget (and protocol), measured rows then published ones."""
    full = [e for e in entries if e["budget"] is None]
    groups = []
    for dataset in sorted({e["dataset"] for e in entries}):  # a dataset with full data only gets a table too
        budgets = sorted({e["budget"] for e in entries if e["dataset"] == dataset and e["budget"] is not None})
        groups += [(dataset, b) for b in budgets or [None]]
    out = []
    for dataset, budget in groups:
        rows = sorted([e for e in entries if e["dataset"] == dataset and e["budget"] == budget] +
                      [e for e in full if e["dataset"] == dataset and budget is not None], key=_order)
        published = {**PUBLISHED.get((dataset, budget), {}), **PUBLISHED.get((dataset, None), {})}
        for protocol in protocols:
            title = f"{dataset}, budget {budget}" if budget is not None else f"{dataset}, full data"
            measured = [(f"{e['model']}, {e['students']} student{'s' * (e['students'] > 1)}", e["protocols"][protocol])
                        for e in rows if protocol in e["protocols"]]
            reference = [(f"*published* {method} ({PUBLISHED_PROTOCOL[method]})", parse_published(text))
                         for method, text in published.items()]
            out += [f"## {title}: test recall (%), {protocol}, mean ± std over students", "",
                    format_table(measured + reference), ""]
    return "\n".join(out)


def _line(entry):
    return f"{entry['method']} · {entry['metagrad']}" if entry.get("metagrad") else entry["method"]


def plot(entries, protocols, path):
    """Draw the PNG (visuals.save_budget_plot) and return its Figure. Controls stay out: each budget has two per
    method (lr chosen on val, and the learned lrs), which one line per method cannot show."""
    sized = sorted((e for e in entries if e["budget"] is not None and e.get("metagrad") != CONTROL), key=_order)
    if not sized:
        raise ValueError("--plot: none of the results has a budget (full data and a distillation's starting point are "
                         "not plotted against one); add evaluate.py files of distilled sets or coresets")
    seen = {}
    for e in sized:
        key = (e["dataset"], _line(e), e["budget"])
        if key in seen:
            raise ValueError(f"--plot: two results for {key[1]} at budget {key[2]} on {key[0]} ({seen[key]['model']} "
                             f"of {seen[key]['source']}, and {e['model']} of {e['source']}); pass only one of them")
        seen[key] = e
    panels, datasets = [], sorted({e["dataset"] for e in sized})
    for dataset in datasets:
        full = sorted((e for e in entries if e["dataset"] == dataset and e["budget"] is None), key=_order)
        published_full = PUBLISHED.get((dataset, None), {}).get("full data") if full else None
        for protocol in protocols:
            rows = [e for e in sized if e["dataset"] == dataset and protocol in e["protocols"]]
            lines = []
            for label in dict.fromkeys(map(_line, rows)):  # in METHOD_ORDER
                mine = sorted((e for e in rows if _line(e) == label), key=lambda e: e["budget"])
                means, stds = zip(*(e["protocols"][protocol]["mean"] for e in mine))
                lines.append((label, [e["budget"] for e in mine], list(means), list(stds)))
            published = []
            for method in dict.fromkeys(e["method"] for e in rows):  # markers in the colour of its first line
                budgets = sorted({e["budget"] for e in rows if e["method"] == method})
                texts = [(b, PUBLISHED[dataset, b][method]) for b in budgets
                         if method in PUBLISHED.get((dataset, b), {})]
                if texts:
                    published.append((f"{method}, published ({PUBLISHED_PROTOCOL[method]})",
                                      next(_line(e) for e in rows if e["method"] == method),
                                      [b for b, _ in texts], [parse_published(t)["mean"] for _, t in texts]))
            lines_full = [(e["model"], *e["protocols"][protocol]["mean"]) for e in full if protocol in e["protocols"]]
            if published_full:
                lines_full.append((f"full data, published ({PUBLISHED_PROTOCOL['full data']})",
                                   parse_published(published_full)["mean"], None))
            panels.append((f"{dataset}, {protocol}", lines, published, lines_full))
    try:
        return save_budget_plot(path, panels, len(protocols),
                                f"{', '.join(datasets)}: test recall against budget, mean ± std over students")
    except OSError as err:
        raise OSError(f"--plot {path}: cannot write the picture there ({err}); choose another path") from err


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="JSON files written by evaluate.py")
    parser.add_argument("--protocol", default="val-selected", choices=(*PROTOCOLS, "all"))
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    parser.add_argument("--plot", type=Path, help="also draw mean recall against budget into this PNG")
    args = parser.parse_args(argv)
    if args.plot and args.plot.suffix.lower() != ".png":
        raise ValueError(f"--plot {args.plot}: the picture is a PNG; give a path that ends in .png")
    protocols = PROTOCOLS if args.protocol == "all" else (args.protocol,)
    entries = read_results(args.results)
    text = tables(entries, protocols)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    if args.plot:
        plot(entries, protocols, args.plot)
    return text


if __name__ == "__main__":
    run(main)

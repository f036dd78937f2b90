"""The one results renderer: the row label of a result entry, the tables of one evaluate.py run, the tables and the
plot over many runs (report.py), with the published reference numbers of docs/methods.md §8 alongside,
marked as published with the protocol they were reported under.

Full-data rows (no budget) appear in every table of their dataset. The plot draws mean recall (± std) against budget,
one line per method, one panel per dataset and protocol, full data as horizontal lines and the published numbers as
hollow markers; a distillation's starting points (controls) are left to the tables. The methods' order and published
numbers come from the registry above this layer, as a `Reference` (methods.reference()).
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import InputError, OutputError
from common.visuals import save_budget_plot
from evaluation.students import PROTOCOLS
from training.metrics import format_table

# docs/methods.md §8: NFNet-l0 + BERT, "IR@1/5/10 · TR@1/5/10" of a student on the whole training split (each method's own
# published numbers are kept with the method: MethodSpec.published, methods/coresets.py)
FULL_DATA = "full data"
PUBLISHED_FULL_DATA = ("last epoch", {"flickr30k": {None: "23.2/54.0/66.6 · 33.8/65.7/76.9"},
                                      "coco": {None: "14.6/38.9/53.2 · 20.6/46.8/61.3"}})


@dataclass(frozen=True)
class Reference:
    """What the renderer knows of the methods, from the registry above it (methods.reference()): their order in the
    tables, and their published numbers {(dataset, budget): {method: text}} with the protocol each was reported under
    (docs/methods.md §7)."""
    order: tuple = ()
    published: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)

    @classmethod
    def of(cls, order, methods):
        """From [(method, protocol, {dataset: {budget: "IR@1/5/10 · TR@1/5/10"}})], full data added."""
        published, protocol = {}, {}
        for method, reported_under, numbers in [*methods, (FULL_DATA, *PUBLISHED_FULL_DATA)]:
            protocol[method] = reported_under
            for dataset, by_budget in numbers.items():
                for budget, text in by_budget.items():
                    published.setdefault((dataset, budget), {})[method] = text
        return cls(tuple(order), published, protocol)


CONTROL = "iteration 0"  # the metagrad label of a distillation's starting point (evaluation.entries.describe)


def parse_published(text):
    """'1/2/3 · 4/5/6' -> {ir@1 … tr@10, mean}."""
    ir, tr = ([float(x) for x in half.split("/")] for half in text.split("·"))
    row = {**{f"ir@{k}": v for k, v in zip((1, 5, 10), ir)}, **{f"tr@{k}": v for k, v in zip((1, 5, 10), tr)}}
    row["mean"] = sum(row.values()) / 6
    return row


ENTRY_KEYS = ("model", "method", "budget", "students", "protocols")  # what the tables and the plot read


def read_results(paths, by_folder=False):
    """Every result entry of the files, tagged with its dataset; `by_folder`: with the name of its file's folder too
    ('tuxpaint · split1'), so that runs on different data of one name (split seeds) keep tables, controls, full data
    and plot panels of their own."""
    entries = []
    for path in paths:
        try:
            content = json.loads(Path(path).read_text())
            results = [e for e in content["results"] if "protocols" in e]  # an expert file (--expert) has none
            if results:
                folder = f" · {Path(path).resolve().parent.name}" if by_folder else ""
                results = [{**e, "dataset": content["dataset"] + folder} for e in results]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise InputError(f"{path} is not a result file of evaluate.py (--distilled or --full-data): {err}")
        for index, e in enumerate(results):
            missing = [key for key in ENTRY_KEYS if key not in e]
            if missing:
                raise InputError(f"{path}: result {index} ({e.get('model', 'unnamed')}) has no {', '.join(missing)}; "
                                 f"the file was edited or is damaged: rerun evaluate.py")
        entries += results
    if not entries:
        raise InputError("no distilled-set or full-data results in the given files")
    return entries


def row_label(entry):
    """What a table calls a result: its model label and how many students it is the mean of."""
    return f"{entry['model']}, {entry['students']} student{'s' * (entry['students'] > 1)}"


def run_tables(dataset, images, captions, entries):
    """The results of one evaluate.py run in the papers' layout (IR@1/5/10, TR@1/5/10, mean), one table per
    protocol."""
    lines = [f"# {dataset}: test retrieval (%, {images} images, {captions} captions), mean ± std over students"]
    for protocol in PROTOCOLS:
        rows = [(row_label(e), e["protocols"][protocol]) for e in entries if protocol in e["protocols"]]
        note = " (checkpoint chosen on test: for comparison with the LoRS tables only)" \
            if protocol == "as published" else ""
        lines += ["", f"## {protocol}{note}", "", format_table(rows)]
    return "\n".join(lines) + "\n"


def expert_table(dataset, images, rows):
    """[(label, recall)] of expert snapshots (evaluate.py --expert)."""
    return f"\n{dataset} test retrieval (%, {images} images)\n{format_table(rows)}"


def _order(order):
    def key(entry):
        method = entry["method"]
        rank = order.index(method) if method in order else len(order)
        return (method == "full data", rank, method, entry.get("metagrad") or "", entry["model"])
    return key


def tables(entries, protocols, reference=Reference()):
    """Markdown: per dataset and budget (and protocol), measured rows then published ones."""
    full = [e for e in entries if e["budget"] is None]
    groups = []
    for dataset in sorted({e["dataset"] for e in entries}):  # a dataset with full data only gets a table too
        budgets = sorted({e["budget"] for e in entries if e["dataset"] == dataset and e["budget"] is not None})
        groups += [(dataset, b) for b in budgets or [None]]
    out = []
    for dataset, budget in groups:
        rows = sorted([e for e in entries if e["dataset"] == dataset and e["budget"] == budget] +
                      [e for e in full if e["dataset"] == dataset and budget is not None], key=_order(reference.order))
        known = reference.published
        published = {**known.get((dataset, budget), {}), **known.get((dataset, None), {})}
        for protocol in protocols:
            title = f"{dataset}, budget {budget}" if budget is not None else f"{dataset}, full data"
            measured = [(row_label(e), e["protocols"][protocol]) for e in rows if protocol in e["protocols"]]
            quoted = [(f"*published* {method} ({reference.protocol[method]})", parse_published(text))
                      for method, text in published.items()]
            out += [f"## {title}: test recall (%), {protocol}, mean ± std over students", "",
                    format_table(measured + quoted), ""]
    return "\n".join(out)


def _line(entry):
    """A plot line: a method (· meta-gradient) and its variant (init, students' tower, …), across budgets."""
    name = f"{entry['method']} · {entry['metagrad']}" if entry.get("metagrad") else entry["method"]
    return name + entry.get("variant", "")


def _better_start(entries, e, protocol):
    """The better (higher mean) of the starting points (controls) evaluated for the distilled set `e`: same dataset,
    method, budget and variant; None for a control itself, a set without one or one not scored under `protocol`."""
    key = lambda x: (x["dataset"], x["method"], x["budget"], x.get("variant", ""))  # noqa: E731
    starts = [c for c in entries if c.get("metagrad") == CONTROL and protocol in c["protocols"] and key(c) == key(e)]
    if not starts or e.get("metagrad") == CONTROL or protocol not in e["protocols"]:
        return None
    return max(starts, key=lambda c: c["protocols"][protocol]["mean"][0])


def _controls(entries, rows, protocol):
    """[(line, budget, mean of the better starting point)] of the distilled sets in `rows` that have one."""
    starts = [(e, _better_start(entries, e, protocol)) for e in rows]
    return [(_line(e), e["budget"], c["protocols"][protocol]["mean"][0]) for e, c in starts if c]


def _gain_rows(entries, protocol):
    """[(set, its better start)] of every distilled set with a start scored under `protocol`, in table order, and
    {dataset: its best full-data mean}."""
    full = {}  # dataset: its best full-data mean
    for f in entries:
        if f["budget"] is None and protocol in f["protocols"]:
            full[f["dataset"]] = max(full.get(f["dataset"], 0.0), f["protocols"][protocol]["mean"][0])
    rows = []
    for e in sorted(entries, key=lambda x: (x["dataset"], x["budget"] or 0, _line(x))):
        start = _better_start(entries, e, protocol)
        if start is not None:
            rows.append((e, start))
    return rows, full


def _apart(e, start, protocol):
    """The set's spread lies above its start's: mean − std above the start's mean + std."""
    (mean, std), (start_mean, start_std) = e["protocols"][protocol]["mean"], start["protocols"][protocol]["mean"]
    return mean - std > start_mean + start_std


def gains(entries, protocols):
    """Markdown: each distilled set's mean recall against the better of its starting points, the gain, whether the
    spreads are apart, and its share of the best full-data mean; over several datasets (split seeds: --by-folder)
    also the same sets side by side, one column per dataset."""
    out = []
    for protocol in protocols:
        rows, full = _gain_rows(entries, protocol)
        lines = []
        for e, start in rows:
            (mean, std), (start_mean, start_std) = e["protocols"][protocol]["mean"], start["protocols"][protocol]["mean"]
            share = f"{100 * mean / full[e['dataset']]:.1f}%" if full.get(e["dataset"]) else "–"
            apart = "yes" if _apart(e, start, protocol) else "no"
            lines.append(f"| {e['dataset']} | {e['budget']} | {_line(e)} | {mean:.1f} ± {std:.1f} | {start_mean:.1f} ± "
                         f"{start_std:.1f} ({start['model']}) | {mean - start_mean:+.1f} | {apart} | {share} |")
        if lines:
            out += [f"## gain over the better starting point: test MEAN recall (%), {protocol}", "",
                    "| dataset | budget | method | mean | better start | gain | spreads apart | of full data |",
                    "|---|---:|---|---:|---|---:|---|---:|", *lines, ""]
        if len({e["dataset"] for e, _ in rows}) > 1:
            out += _side_by_side(rows, full, protocol)
    return "\n".join(out)


def _side_by_side(rows, full, protocol):
    """The gain table's sets, one column per dataset: 'mean ± std (gain)', bold where the set's spread lies above its
    start's (`_apart`); the last row each dataset's full data."""
    datasets = sorted({e["dataset"] for e, _ in rows})
    cells = {}
    for e, start in rows:
        mean, std = e["protocols"][protocol]["mean"]
        figure = f"{mean:.1f} ± {std:.1f}"
        gain = mean - start["protocols"][protocol]["mean"][0]
        cells.setdefault((e["budget"], _line(e)), {})[e["dataset"]] = \
            f"{f'**{figure}**' if _apart(e, start, protocol) else figure} ({gain:+.1f})"
    lines = [f"| {budget} | {line} | " + " | ".join(by.get(d, "–") for d in datasets) + " |"
             for (budget, line), by in sorted(cells.items())]
    return [f"## gain over the better starting point, side by side: test MEAN recall (%), {protocol}", "",
            "mean ± std over students (gain over the better start); bold: its spread lies above its start's", "",
            "| budget | method | " + " | ".join(datasets) + " |", "|---:|---|" + "---:|" * len(datasets), *lines,
            "| | full data | " + " | ".join(f"{full[d]:.1f}" if d in full else "–" for d in datasets) + " |", ""]


def plot(entries, protocols, path, reference=Reference()):
    """Draw the PNG (visuals.save_budget_plot) and return its Figure. A distillation whose starting point was
    evaluated too (a control: `metagrad` iteration 0, same method, variant and budget) gets an arrow from it; of
    several controls (lr chosen on val, the learned lrs) the better one, so the arrow is the smaller gain."""
    sized = sorted((e for e in entries if e["budget"] is not None and e.get("metagrad") != CONTROL),
                   key=_order(reference.order))
    if not sized:
        raise InputError("--plot: none of the results has a budget (full data and a distillation's starting point are "
                         "not plotted against one); add evaluate.py files of distilled sets or coresets")
    seen = {}
    for e in sized:
        key = (e["dataset"], _line(e), e["budget"])
        if key in seen:
            raise InputError(f"--plot: two results for {key[1]} at budget {key[2]} on {key[0]} ({seen[key]['model']} "
                             f"of {seen[key]['source']}, and {e['model']} of {e['source']}); pass only one of them")
        seen[key] = e
    panels, datasets = [], sorted({e["dataset"] for e in sized})
    for dataset in datasets:
        full = sorted((e for e in entries if e["dataset"] == dataset and e["budget"] is None),
                      key=_order(reference.order))
        published_full = reference.published.get((dataset, None), {}).get(FULL_DATA) if full else None
        for protocol in protocols:
            rows = [e for e in sized if e["dataset"] == dataset and protocol in e["protocols"]]
            lines = []
            for label in dict.fromkeys(map(_line, rows)):  # in table order
                mine = sorted((e for e in rows if _line(e) == label), key=lambda e: e["budget"])
                means, stds = zip(*(e["protocols"][protocol]["mean"] for e in mine))
                lines.append((label, [e["budget"] for e in mine], list(means), list(stds)))
            published = []
            for method in dict.fromkeys(e["method"] for e in rows):  # markers in the colour of its first line
                budgets = sorted({e["budget"] for e in rows if e["method"] == method})
                texts = [(b, reference.published[dataset, b][method]) for b in budgets
                         if method in reference.published.get((dataset, b), {})]
                if texts:
                    published.append((f"{method}, published ({reference.protocol[method]})",
                                      next(_line(e) for e in rows if e["method"] == method),
                                      [b for b, _ in texts], [parse_published(t)["mean"] for _, t in texts]))
            lines_full = [(e["model"], *e["protocols"][protocol]["mean"]) for e in full if protocol in e["protocols"]]
            if published_full:
                lines_full.append((f"full data, published ({reference.protocol[FULL_DATA]})",
                                   parse_published(published_full)["mean"], None))
            panels.append((f"{dataset}, {protocol}", lines, published, lines_full, _controls(entries, rows, protocol)))
    columns = len(protocols) if len(protocols) > 1 else min(len(datasets), 3)  # one protocol: datasets side by side
    title = "test recall against budget, mean ± std over students"  # the panels name their dataset
    try:
        return save_budget_plot(path, panels, columns, f"{datasets[0]}: {title}" if len(datasets) == 1 else title)
    except OSError as err:
        raise OutputError(f"--plot {path}: cannot write the picture there ({err}); choose another path") from err

"""Results report (evaluation/report.py): published numbers, per-budget tables from evaluate.py files, bad input."""
import json

import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from common.errors import InputError
from common.visuals import CONTROL_LABEL, OFFSET_STEP
from evaluation import report
from evaluation.report import parse_published, read_results
from methods import reference
from report import main


def plot(entries, protocols, path):
    """The plot with the registry's order and published numbers, as report.py draws it."""
    return report.plot(entries, protocols, path, reference())

METRICS = ("ir@1", "ir@5", "ir@10", "tr@1", "tr@5", "tr@10")
# per protocol: (added to an entry's level, std), so each protocol shows different numbers
SHIFT = {"last epoch": (0.0, 0.1), "val-selected": (1.0, 0.2), "as published": (2.0, 0.3)}


def recall(level, std):
    """ir@1 = level, ir@5 = level + 1, …, tr@10 = level + 5, mean = level + 2.5, all with the same std."""
    row = {m: [level + i, std] for i, m in enumerate(METRICS)}
    row["mean"] = [level + 2.5, std]
    return row


def entry(model, method, budget, level, students=3):
    return {"model": model, "method": method, "metagrad": None, "budget": budget, "pairs": budget or 1000,
            "source": "x", "students": students,
            "protocols": {p: recall(level + shift, std) for p, (shift, std) in SHIFT.items()},
            "epochs": {p: [1] * students for p in SHIFT}, "curves": []}


def write(path, dataset, *entries):
    path.write_text(json.dumps({"dataset": dataset, "split": "test", "results": list(entries), "config": {}}))
    return str(path)


@pytest.fixture
def flickr(tmp_path):
    """Three files as evaluate.py writes them: budget 100, budget 200, full data."""
    return [write(tmp_path / "b100.json", "flickr30k", entry("random (100 pairs)", "random", 100, 10)),
            write(tmp_path / "b200.json", "flickr30k", entry("herding (200 pairs)", "herding", 200, 20)),
            write(tmp_path / "full.json", "flickr30k",
                  entry("full data (1000 pairs)", "full data", None, 50, students=1))]


def sections(text):
    """{heading: [table lines]} of the markdown."""
    out, heading = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:]
            out[heading] = []
        elif line:
            out[heading].append(line)
    return out


def heading(budget, protocol):
    return f"flickr30k, budget {budget}: test recall (%), {protocol}, mean ± std over students"


HEAD = ["| model | IR@1 | IR@5 | IR@10 | TR@1 | TR@5 | TR@10 | MEAN |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
# published means by hand: random 28.8/6 = 4.8, mtt-vl 122.3/6 = 20.38, lors 164.3/6 = 27.38,
# repblend 201.4/6 = 33.57, full data 320.2/6 = 53.37
PUBLISHED_100 = ["| *published* random (last epoch) | 1.0 | 4.0 | 6.5 | 1.3 | 5.9 | 10.1 | 4.8 |",
                 "| *published* mtt-vl (last epoch) | 4.7 | 15.7 | 24.6 | 9.9 | 28.3 | 39.1 | 20.4 |",
                 "| *published* lors (test-selected) | 8.3 | 24.1 | 35.1 | 11.8 | 35.8 | 49.2 | 27.4 |",
                 "| *published* repblend (test-selected) | 11.5 | 32.0 | 44.5 | 16.2 | 41.7 | 55.5 | 33.6 |",
                 "| *published* full data (last epoch) | 23.2 | 54.0 | 66.6 | 33.8 | 65.7 | 76.9 | 53.4 |"]
RANDOM_VAL = "| random (100 pairs), 3 students | 11.0 ± 0.2 | 12.0 ± 0.2 | 13.0 ± 0.2 | 14.0 ± 0.2 | 15.0 ± 0.2 " \
             "| 16.0 ± 0.2 | 13.5 ± 0.2 |"
FULL_VAL = "| full data (1000 pairs), 1 student | 51.0 ± 0.2 | 52.0 ± 0.2 | 53.0 ± 0.2 | 54.0 ± 0.2 | 55.0 ± 0.2 " \
           "| 56.0 ± 0.2 | 53.5 ± 0.2 |"


def test_parse_published():
    row = parse_published("1.0/4.0/6.5 · 1.3/5.9/10.1")
    assert set(row) == {*METRICS, "mean"}
    assert [row[m] for m in METRICS] == [1.0, 4.0, 6.5, 1.3, 5.9, 10.1]
    assert row["mean"] == pytest.approx(28.8 / 6)


def test_one_table_per_budget_with_published_rows(flickr, tmp_path):
    md = tmp_path / "report.md"
    text = main([*flickr, "--out", str(md)])
    assert md.read_text() == text
    tables = sections(text)
    assert list(tables) == [heading(100, "val-selected"), heading(200, "val-selected")]
    assert tables[heading(100, "val-selected")] == [*HEAD, RANDOM_VAL, FULL_VAL, *PUBLISHED_100]
    budget_200 = tables[heading(200, "val-selected")]
    assert budget_200[2] == "| herding (200 pairs), 3 students | 21.0 ± 0.2 | 22.0 ± 0.2 | 23.0 ± 0.2 " \
                            "| 24.0 ± 0.2 | 25.0 ± 0.2 | 26.0 ± 0.2 | 23.5 ± 0.2 |"
    assert budget_200[3] == FULL_VAL
    # lors at 200: 177.1/6 = 29.52
    assert "| *published* lors (test-selected) | 8.6 | 25.3 | 36.6 | 14.5 | 38.7 | 53.4 | 29.5 |" in budget_200
    assert budget_200[-1] == PUBLISHED_100[-1]
    assert not any("random" in line for line in budget_200[:4])  # no budget-100 row measured here


def test_last_epoch_protocol_picks_the_other_numbers(flickr):
    table = sections(main([*flickr, "--protocol", "last epoch"]))[heading(100, "last epoch")]
    assert table[2] == "| random (100 pairs), 3 students | 10.0 ± 0.1 | 11.0 ± 0.1 | 12.0 ± 0.1 | 13.0 ± 0.1 " \
                       "| 14.0 ± 0.1 | 15.0 ± 0.1 | 12.5 ± 0.1 |"
    assert table[3].startswith("| full data (1000 pairs), 1 student | 50.0 ± 0.1 |")
    assert table[4:] == PUBLISHED_100  # the published numbers do not depend on the protocol asked for


def test_all_protocols_gives_three_tables_per_budget(flickr):
    tables = sections(main([*flickr, "--protocol", "all"]))
    assert list(tables) == [heading(b, p) for b in (100, 200) for p in ("last epoch", "val-selected", "as published")]
    assert tables[heading(100, "as published")][2].startswith("| random (100 pairs), 3 students | 12.0 ± 0.3 |")
    assert tables[heading(100, "val-selected")][2] == RANDOM_VAL


def test_dataset_without_published_numbers(tmp_path):
    path = write(tmp_path / "tux.json", "tuxpaint", entry("k-center (10 pairs)", "k-center", 10, 30))
    text = main([path])
    assert "*published*" not in text
    assert sections(text) == {"tuxpaint, budget 10: test recall (%), val-selected, mean ± std over students": [
        *HEAD, "| k-center (10 pairs), 3 students | 31.0 ± 0.2 | 32.0 ± 0.2 | 33.0 ± 0.2 | 34.0 ± 0.2 "
               "| 35.0 ± 0.2 | 36.0 ± 0.2 | 33.5 ± 0.2 |"]}


def test_invalid_json_names_the_file(tmp_path, flickr):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="broken.json is not a result file"):
        main([*flickr, str(bad)])


def test_expert_evaluation_file_is_refused(tmp_path):
    # evaluate.py --expert writes rows of plain recall, without "dataset" or "protocols"
    expert = {"split": "test", "results": [{"model": "expert 0, epoch 1", **{m: 1.0 for m in METRICS}}],
              "config": {}}
    (tmp_path / "expert.json").write_text(json.dumps(expert))
    with pytest.raises(InputError, match="no distilled-set or full-data results"):
        main([str(tmp_path / "expert.json")])


def test_an_entry_without_its_budget_names_the_file_and_the_entry(tmp_path):
    edited = entry("random (100 pairs)", "random", 100, 10)
    del edited["budget"]
    path = write(tmp_path / "edited.json", "flickr30k", entry("herding (100 pairs)", "herding", 100, 10), edited)
    with pytest.raises(InputError, match=r"edited.json: result 1 \(random \(100 pairs\)\) has no budget; the file "
                                         r"was edited or is damaged"):
        main([path])


def test_result_file_without_dataset_names_the_file(tmp_path):
    path = tmp_path / "nodataset.json"
    path.write_text(json.dumps({"split": "test", "results": [entry("random (100 pairs)", "random", 100, 10)]}))
    with pytest.raises(InputError, match="nodataset.json is not a result file"):
        main([str(path)])


def test_a_dataset_with_full_data_only_gets_its_own_table(flickr, tmp_path):
    coco = write(tmp_path / "coco_full.json", "coco", entry("full data (5000 pairs)", "full data", None, 30, 1))
    found = sections(main([flickr[0], coco]))
    assert list(found) == ["coco, full data: test recall (%), val-selected, mean ± std over students",
                           heading(100, "val-selected")]
    assert found[list(found)[0]][2].startswith("| full data (5000 pairs), 1 student | 31.0 ± 0.2 |")
    assert found[list(found)[0]][3].startswith("| *published* full data (last epoch) | 14.6 |")


# --plot: mean recall (val-selected unless said) against budget


def flickr_curve(tmp_path):
    """random at 100 and 200, herding at 200 only, lors (exact) at 100 with its starting point, full data."""
    lors, start = entry("lors · exact (99 pairs)", "lors", 100, 30), entry("lors at iteration 0", "lors", 100, 0)
    lors["metagrad"], start["metagrad"] = "exact", "iteration 0"
    return [write(tmp_path / "random.json", "flickr30k", entry("random (100 pairs)", "random", 100, 10),
                  entry("random (200 pairs)", "random", 200, 12)),
            write(tmp_path / "herding.json", "flickr30k", entry("herding (200 pairs)", "herding", 200, 20)),
            write(tmp_path / "lors.json", "flickr30k", lors, start),
            write(tmp_path / "full.json", "flickr30k", entry("full data (1000 pairs)", "full data", None, 50, 1))]


def drawn(ax):
    """{label: artist} of one panel: error-bar containers, published markers and full-data lines."""
    return {a.get_label(): a for a in [*ax.containers, *ax.lines] if not a.get_label().startswith("_")}


def bar_extents(container):
    """low, high of the first error bar, low, high of the second, …"""
    return [y for (_, low), (_, high) in container.lines[2][0].get_segments() for y in (low, high)]


def test_plot_draws_lines_error_bars_full_data_and_published_markers(tmp_path):
    png = tmp_path / "plots" / "report.png"
    fig = plot(read_results(flickr_curve(tmp_path)), ("val-selected",), png)
    [ax] = fig.axes
    artists = drawn(ax)
    assert set(artists) == {"random", "herding", "lors · exact", "random, published (last epoch)",
                            "lors, published (test-selected)", "full data (1000 pairs)",
                            "full data, published (last epoch)", CONTROL_LABEL}  # no line for the starting point
    # the three lines sit side by side around each budget, in table order
    left, right = 1 / OFFSET_STEP, OFFSET_STEP
    random = artists["random"]
    assert list(random.lines[0].get_xdata()) == pytest.approx([100 * left, 200 * left])
    assert list(random.lines[0].get_ydata()) == [13.5, 15.5]  # level + 1 (val-selected) + 2.5
    assert bar_extents(random) == pytest.approx([13.3, 13.7, 15.3, 15.7])  # ± std 0.2
    herding = artists["herding"].lines[0]  # a single budget is still drawn: one point
    assert (list(herding.get_xdata()), list(herding.get_ydata())) == ([200], [23.5])
    lors = artists["lors · exact"].lines[0]
    assert (list(lors.get_xdata()), list(lors.get_ydata())) == (pytest.approx([100 * right]), [33.5])
    # its starting point (level 0: 3.5) is a hollow square in its colour, with an arrow up to it and the gain
    control = artists[CONTROL_LABEL]
    assert (list(control.get_xdata()), list(control.get_ydata())) == (pytest.approx([100 * right]), [3.5])
    assert to_rgba(control.get_markeredgecolor()) == to_rgba(lors.get_color()) and control.get_marker() == "s"
    arrow, gain = ax.texts
    assert (arrow.xy, arrow.xyann) == ((pytest.approx(100 * right), 33.5), (pytest.approx(100 * right), 3.5))
    assert gain.get_text() == "+30.0"
    # published: hollow markers in the method's colour, at the budgets measured (lors has 200 too, not drawn)
    for label, method, xs, ys in (("random, published (last epoch)", "random", [100 * left, 200 * left],
                                   [28.8 / 6, 39.1 / 6]),
                                  ("lors, published (test-selected)", "lors · exact", [100 * right], [164.3 / 6])):
        marks = artists[label]
        assert list(marks.get_xdata()) == pytest.approx(xs) and list(marks.get_ydata()) == pytest.approx(ys)
        assert marks.get_linestyle() == "None" and marks.get_markerfacecolor() == "none"
        assert to_rgba(marks.get_markeredgecolor()) == to_rgba(artists[method].lines[0].get_color())
    full = artists["full data (1000 pairs)"]
    assert list(full.get_ydata()) == [53.5, 53.5] and full.get_linestyle() == "-"
    [band] = ax.patches
    assert (band.get_bbox().y0, band.get_bbox().y1) == pytest.approx((53.3, 53.7))
    published_full = artists["full data, published (last epoch)"]
    assert published_full.get_ydata()[0] == pytest.approx(320.2 / 6) and published_full.get_linestyle() == ":"
    assert ax.get_xscale() == "log" and list(ax.get_xticks()) == [100, 200]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "200"]
    assert ax.get_xlabel() == "budget (pairs in the distilled set)"
    assert ax.get_ylabel() == "mean recall (TR/IR@1/5/10)"
    assert ax.get_title() == "flickr30k, val-selected"
    assert fig._suptitle.get_text().startswith("flickr30k: test recall against budget")
    with Image.open(png) as image:
        assert (image.format, image.size) == ("PNG", (750, 500))
    assert [p.name for p in png.parent.iterdir()] == ["report.png"]  # no temporary file left behind


def test_plot_of_all_protocols_from_the_command_line(tmp_path):
    png = tmp_path / "report.png"
    main([*flickr_curve(tmp_path), "--protocol", "all", "--plot", str(png)])
    with Image.open(png) as image:
        assert (image.format, image.size) == ("PNG", (1750, 500))  # three panels side by side
    fig = plot(read_results(flickr_curve(tmp_path)), ("last epoch", "val-selected", "as published"), png)
    assert [ax.get_title() for ax in fig.axes] == ["flickr30k, last epoch", "flickr30k, val-selected",
                                                   "flickr30k, as published"]
    random = [drawn(ax)["random"] for ax in fig.axes]
    assert [list(c.lines[0].get_ydata()) for c in random] == [[12.5, 14.5], [13.5, 15.5], [14.5, 16.5]]
    assert [bar_extents(c)[:2] for c in random] == [pytest.approx(b) for b in ([12.4, 12.6], [13.3, 13.7],
                                                                              [14.2, 14.8])]
    assert len({c.lines[0].get_color() for c in random}) == 1  # a method keeps its colour in every panel
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["random", "herding", "lors · exact", "random, published (last epoch)",
                      "lors, published (test-selected)", CONTROL_LABEL, "full data (1000 pairs)",
                      "full data, published (last epoch)"]


def test_plot_without_published_numbers_or_full_data(tmp_path):
    path = write(tmp_path / "tux.json", "tuxpaint", entry("k-center (10 pairs)", "k-center", 10, 30),
                 entry("k-center (50 pairs)", "k-center", 50, 40))
    [ax] = plot(read_results([path]), ("last epoch",), tmp_path / "tux.png").axes
    assert list(drawn(ax)) == ["k-center"] and not ax.patches
    assert list(drawn(ax)["k-center"].lines[0].get_ydata()) == [32.5, 42.5]


def test_plot_tells_twelve_lines_apart(tmp_path):
    """Ten colours come round again: past the tenth line, marker and dash tell two lines of one colour apart."""
    path = write(tmp_path / "many.json", "tuxpaint", *(entry(f"m{i} (10 pairs)", f"m{i}", 10, i) for i in range(12)))
    [ax] = plot(read_results([path]), ("last epoch",), tmp_path / "many.png").axes
    lines = [c.lines[0] for c in ax.containers]
    looks = [(to_rgba(line.get_color()), line.get_marker(), line.get_linestyle()) for line in lines]
    assert len(looks) == 12 and len(set(looks)) == 12
    assert looks[10][0] == looks[0][0] and looks[10][1:] == ("^", "--")  # the 11th: C0 again, triangles, dashed


def test_plot_refusals(tmp_path, flickr):
    full = write(tmp_path / "only_full.json", "flickr30k", entry("full data (1000 pairs)", "full data", None, 50, 1))
    with pytest.raises(ValueError, match="--plot: none of the results has a budget"):
        main([full, "--plot", str(tmp_path / "p.png")])
    with pytest.raises(ValueError, match=r"--plot .*report.pdf: the picture is a PNG"):
        main([*flickr, "--plot", str(tmp_path / "report.pdf")])
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match=r"--plot .*a_file/p.png: cannot write the picture there"):
        main([*flickr, "--plot", str(tmp_path / "a_file" / "p.png")])
    again = write(tmp_path / "again.json", "flickr30k", entry("random (100 pairs), lr 0.1", "random", 100, 11))
    with pytest.raises(ValueError, match=r"two results for random at budget 100 on flickr30k .*pass only one"):
        main([*flickr, again, "--plot", str(tmp_path / "p.png")])
    assert not (tmp_path / "p.png").exists()


def test_variants_of_one_method_are_lines_of_their_own(tmp_path):
    """LoRS from random real pairs and from k-means, or its sets under another students' tower, are told apart."""
    kmeans = {**entry("lors · exact, kmeans init (49 pairs)", "lors", 50, 20), "variant": ", kmeans init"}
    lite1 = {**entry("lors · exact (49 pairs) → tf_efficientnet_lite1 student", "lors", 50, 10),
             "variant": " → tf_efficientnet_lite1 student"}
    path = write(tmp_path / "tux.json", "tuxpaint", entry("lors · exact (49 pairs)", "lors", 50, 30), kmeans, lite1)
    [ax] = plot(read_results([path]), ("last epoch",), tmp_path / "tux.png").axes
    lines = drawn(ax)
    assert set(lines) == {"lors", "lors, kmeans init", "lors → tf_efficientnet_lite1 student"}
    assert {k: list(line.lines[0].get_ydata()) for k, line in lines.items()} == {
        "lors": [32.5], "lors, kmeans init": [22.5], "lors → tf_efficientnet_lite1 student": [12.5]}


def test_a_gain_arrow_starts_at_the_better_control_of_its_own_variant(tmp_path):
    """Two controls at one budget (lr chosen on val, the learned lrs): the arrow starts at the better; a k-means
    LoRS is measured against its own k-means start, not the random one's."""
    def distilled(model, level, variant="", metagrad="exact"):
        return {**entry(model, "lors", 50, level), "metagrad": metagrad, "variant": variant}
    path = write(tmp_path / "tux.json", "tuxpaint", distilled("lors · exact (49 pairs)", 20),
                 distilled("lors at iteration 0, lr 0.01 chosen on val", 10, metagrad="iteration 0"),
                 distilled("lors at iteration 0, learned lrs", 14, metagrad="iteration 0"),
                 distilled("lors · exact, kmeans init (49 pairs)", 30, ", kmeans init"),
                 distilled("lors at iteration 0, kmeans init", 29, ", kmeans init", metagrad="iteration 0"))
    [ax] = plot(read_results([path]), ("last epoch",), tmp_path / "tux.png").axes
    gains = sorted(t.get_text() for t in ax.texts if t.get_text())
    assert gains == ["+1.0", "+6.0"]  # 22.5 − 16.5 (the better control, not 12.5), and 32.5 − 31.5


def test_gain_table_measures_each_set_against_its_better_start_and_full_data(tmp_path):
    """val-selected means (level + 3.5, std 0.2): set 20 → 23.5, starts 14 and 16 → 17.5 and 19.5, full data 46 →
    49.5; a set whose spread reaches its start's is not 'apart'; a set without a start gets no row."""
    def distilled(model, level, metagrad="exact", budget=50):
        return {**entry(model, "lors", budget, level), "metagrad": metagrad}
    close = distilled("lors · exact (9 pairs)", 16.1, budget=10)
    close["protocols"]["val-selected"]["mean"] = [20.0, 1.0]  # start 19.5 ± 0.2: 19 < 19.7
    path = write(tmp_path / "tux.json", "tuxpaint", distilled("lors · exact (49 pairs)", 20),
                 distilled("lors at iteration 0, lr 0.01 chosen on val", 14, "iteration 0"),
                 distilled("lors at iteration 0, learned lrs", 16, "iteration 0"), close,
                 distilled("lors at iteration 0 (9 pairs)", 16, "iteration 0", budget=10),
                 entry("random (50 pairs)", "random", 50, 30),
                 entry("full data (689 pairs)", "full data", None, 46, students=1))
    table = sections(report.gains(read_results([path]), ("val-selected",)))
    rows = table["gain over the better starting point: test MEAN recall (%), val-selected"][2:]
    assert rows == [
        "| tuxpaint | 10 | lors · exact | 20.0 ± 1.0 | 19.5 ± 0.2 (lors at iteration 0 (9 pairs)) | +0.5 | no | 40.4% |",
        "| tuxpaint | 50 | lors · exact | 23.5 ± 0.2 | 19.5 ± 0.2 (lors at iteration 0, learned lrs) | +4.0 | yes | 47.5% |"]


def test_by_folder_keeps_two_split_seeds_apart_with_their_own_starts_and_full_data(tmp_path):
    """One dataset name in two folders: together, the better start of both splits would serve each set; by folder,
    each set meets its own split's start and full data."""
    def distilled(model, level, metagrad="exact"):
        return {**entry(model, "covmatch", 50, level), "metagrad": metagrad}
    paths = []
    for split, (level, start, full) in {"split0": (20, 18, 36), "split1": (22, 10, 46)}.items():
        (tmp_path / split).mkdir()
        paths.append(write(tmp_path / split / "covmatch_50.json", "tuxpaint", distilled("covmatch (50 pairs)", level)))
        paths.append(write(tmp_path / split / "start.json", "tuxpaint",
                           distilled("covmatch at iteration 0", start, "iteration 0")))
        paths.append(write(tmp_path / split / "full.json", "tuxpaint", entry("full data", "full data", None, full, 1)))
    mixed = sections(report.gains(read_results(paths), ("val-selected",)))
    assert [row.split(" | ")[5] for row in mixed[next(iter(mixed))][2:]] == ["+2.0", "+4.0"]  # both against 18
    text = main([*paths, "--by-folder"])
    table = sections(text)["gain over the better starting point: test MEAN recall (%), val-selected"][2:]
    assert table == [
        "| tuxpaint · split0 | 50 | covmatch · exact | 23.5 ± 0.2 | 21.5 ± 0.2 (covmatch at iteration 0) | +2.0 | yes | 59.5% |",
        "| tuxpaint · split1 | 50 | covmatch · exact | 25.5 ± 0.2 | 13.5 ± 0.2 (covmatch at iteration 0) | +12.0 | yes | 51.5% |"]
    assert heading(50, "val-selected").replace("flickr30k", "tuxpaint · split1") in sections(text)
    assert sections(text)["gain over the better starting point, side by side: test MEAN recall (%), val-selected"] == [
        "mean ± std over students (gain over the better start); bold: its spread lies above its start's",
        "| budget | method | tuxpaint · split0 | tuxpaint · split1 |", "|---:|---|---:|---:|",
        "| 50 | covmatch · exact | **23.5 ± 0.2** (+2.0) | **25.5 ± 0.2** (+12.0) |", "| | full data | 39.5 | 49.5 |"]
    fig = plot(read_results(paths, by_folder=True), ("val-selected",), tmp_path / "splits.png")
    left, right = fig.axes[:2]
    assert [left.get_title(), right.get_title()] == ["tuxpaint · split0, val-selected", "tuxpaint · split1, val-selected"]
    (a, b) = (left.get_position(), right.get_position())
    assert a.y0 == b.y0 and a.x1 < b.x0  # side by side


def test_side_by_side_marks_touching_spreads_and_sets_one_split_lacks(tmp_path):
    """A set whose spread touches its start's is not bold; a set measured on one split only reads '–' on the other,
    and so does full data where a split has none."""
    def distilled(method, level, metagrad="exact", budget=50):
        return {**entry(f"{method} ({budget} pairs)", method, budget, level), "metagrad": metagrad}
    paths = []
    for split in ("split0", "split1"):
        (tmp_path / split).mkdir()
        paths.append(write(tmp_path / split / "mdm.json", "tuxpaint", distilled("mdm", 20),
                           distilled("mdm", 19.9, "iteration 0")))
    paths.append(write(tmp_path / "split1" / "lors.json", "tuxpaint", distilled("lors", 12, budget=10),
                       distilled("lors", 10, "iteration 0", budget=10),
                       entry("full data", "full data", None, 40, 1)))
    table = sections(main([*paths, "--by-folder"]))[
        "gain over the better starting point, side by side: test MEAN recall (%), val-selected"][2:]
    assert table == ["|---:|---|---:|---:|", "| 10 | lors · exact | – | **15.5 ± 0.2** (+2.0) |",
                     "| 50 | mdm · exact | 23.5 ± 0.2 (+0.1) | 23.5 ± 0.2 (+0.1) |", "| | full data | – | 43.5 |"]

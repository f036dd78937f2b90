"""Results report (utils/report.py): published numbers, per-budget tables from evaluate.py files, bad input."""
import json

import pytest

from utils.report import main, parse_published

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
    with pytest.raises(SystemExit, match="broken.json is not a result file"):
        main([*flickr, str(bad)])


def test_expert_evaluation_file_is_refused(tmp_path):
    # evaluate.py --expert writes rows of plain recall, without "dataset" or "protocols"
    expert = {"split": "test", "results": [{"model": "expert 0, epoch 1", **{m: 1.0 for m in METRICS}}],
              "config": {}}
    (tmp_path / "expert.json").write_text(json.dumps(expert))
    with pytest.raises(SystemExit, match="no distilled-set or full-data results"):
        main([str(tmp_path / "expert.json")])


def test_result_file_without_dataset_names_the_file(tmp_path):
    path = tmp_path / "nodataset.json"
    path.write_text(json.dumps({"split": "test", "results": [entry("random (100 pairs)", "random", 100, 10)]}))
    with pytest.raises(SystemExit, match="nodataset.json is not a result file"):
        main([str(path)])


def test_a_dataset_with_full_data_only_gets_its_own_table(flickr, tmp_path):
    coco = write(tmp_path / "coco_full.json", "coco", entry("full data (5000 pairs)", "full data", None, 30, 1))
    found = sections(main([flickr[0], coco]))
    assert list(found) == ["coco, full data: test recall (%), val-selected, mean ± std over students",
                           heading(100, "val-selected")]
    assert found[list(found)[0]][2].startswith("| full data (5000 pairs), 1 student | 31.0 ± 0.2 |")
    assert found[list(found)[0]][3].startswith("| *published* full data (last epoch) | 14.6 |")

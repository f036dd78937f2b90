"""Results tables: gather evaluate.py result files into one table per dataset and budget, with the published
reference numbers alongside, and a table of each distilled set's gain over its own starting point (evaluation/report.py
renders them).

    python report.py results/tuxpaint/split0/*.json [--protocol val-selected|last epoch|as published|all] [--out report.md]
        [--plot report.png]
    python report.py results/tuxpaint/split*/*.json --by-folder   # one dataset per folder: 'tuxpaint · split1'
"""
import argparse
from pathlib import Path

from common.cli import run
from common.errors import InputError
from common.io import atomic_write_text, check_output
from evaluation.report import gains, plot, read_results, tables
from evaluation.students import PROTOCOLS
from methods import reference


def main(argv=None):
    parser = argparse.ArgumentParser(prog="report.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="JSON files written by evaluate.py")
    parser.add_argument("--protocol", default="val-selected", choices=(*PROTOCOLS, "all"))
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    parser.add_argument("--plot", type=Path, help="also draw mean recall against budget into this PNG")
    parser.add_argument("--by-folder", action="store_true",
                        help="tell results apart by their file's folder too (runs on different data of one name, "
                             "e.g. split seeds): each folder gets its own tables, controls, full data and panels")
    args = parser.parse_args(argv)
    if args.plot and args.plot.suffix.lower() != ".png":
        raise InputError(f"--plot {args.plot}: the picture is a PNG; give a path that ends in .png")
    for out, flag in ((args.out, "--out"), (args.plot, "--plot")):
        if out:
            check_output(out, args.results, flag)
    protocols = PROTOCOLS if args.protocol == "all" else (args.protocol,)
    entries = read_results(args.results, args.by_folder)
    text = "\n".join(part for part in (tables(entries, protocols, reference()), gains(entries, protocols)) if part)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    if args.plot:
        plot(entries, protocols, args.plot, reference())
    return text


if __name__ == "__main__":
    run(main)

"""The documentation stands on its own: every relative link of a tracked markdown file resolves inside the
repository, and no tracked file points at a specification outside it."""
import re
import subprocess

from conftest import ROOT

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def tracked(*patterns):
    listed = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in listed.stdout.split()]


def test_every_relative_markdown_link_resolves_inside_the_repository():
    broken = [(path.relative_to(ROOT), target) for path in tracked("*.md")
              for target in LINK.findall(path.read_text()) if not target.startswith(("http://", "https://"))
              and not ((path.parent / target).resolve().is_relative_to(ROOT) and (path.parent / target).exists())]
    assert broken == []


def test_no_tracked_file_cites_a_specification_outside_the_repository():
    spec = "METHOD"  # spelt in two parts, so that this file does not match itself
    outside = re.compile(rf"\.\./shared|{spec}\.md|DESIGN\.md|{spec} §")
    citing = [path.relative_to(ROOT) for path in tracked() if path.is_file() and path.suffix != ".png"
              and outside.search(path.read_text(errors="ignore"))]
    assert citing == []
    assert "## 4b. " in (ROOT / "docs" / "methods.md").read_text()  # the sections the code cites are in it

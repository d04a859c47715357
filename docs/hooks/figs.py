"""MkDocs hook: serve the repository's figs/*.png at figs/ in the site.

The figures live once, in the repository's figs/ folder (the README shows them from there). This
hook adds them to the site's files as if they were docs/figs/*.png, so a page links them with a
relative path (`../figs/toys.png` from a page one folder down) and `mkdocs build --strict` checks
those links like any other.
"""

from pathlib import Path

from mkdocs.structure.files import File

FIGS = Path(__file__).resolve().parents[2] / "figs"


def on_files(files, config):
    for png in sorted(FIGS.glob("*.png")):
        files.append(File(f"figs/{png.name}", src_dir=str(FIGS.parent), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files

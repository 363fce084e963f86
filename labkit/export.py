"""Executed notebooks into a document: merged with nbformat, exported to HTML by nbconvert with
labkit's template (templates/labkit: code hidden, no scripts from elsewhere, print rules),
printed to PDF by a headless Chromium found on this machine (never downloaded).

    labkit export NOTEBOOK.ipynb [--pdf] [--out DIR]     # one notebook, as the report looks
"""

from __future__ import annotations

import html
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .lab import LabError

__all__ = ["export_html", "export_notebook", "find_chromium", "merge", "print_pdf"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _cell_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:64]


def section_id(key: str) -> str:
    return "sec-" + _cell_id(key)


def _shown(cell):
    """The cell as a document shows it: code cells keep their outputs but stderr (progress
    bars, run logs); a code cell with nothing left shows nothing (its code is hidden): None."""
    if cell.cell_type != "code":
        return cell
    cell.outputs = [o for o in cell.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    return cell if cell.outputs else None


def merge(parts: list[tuple[str, str, Path]], title: str, intro: str = ""):
    """One notebook of the executed notebooks `parts` (key, section title, path), with a
    contents list; each part's first heading becomes its section's title."""
    import nbformat

    books = [(key, sec, nbformat.read(path, as_version=4)) for key, sec, path in parts]
    merged = nbformat.v4.new_notebook()
    merged.nbformat_minor = max(5, merged.nbformat_minor)
    meta = books[0][2].metadata if books else {}
    merged.metadata = {k: meta[k] for k in ("kernelspec", "language_info") if k in meta}
    toc = "".join(f'<li><a href="#{section_id(key)}">{html.escape(sec)}</a></li>' for key, sec, _ in books)
    head = nbformat.v4.new_markdown_cell(
        f'<h1 id="report-top">{html.escape(title)}</h1>\n\n{intro}\n\n<div class="lk-toc"><h2>Contents</h2><ul>{toc}</ul></div>\n'
    )
    head.id = "report-head"
    cells = [head]
    for key, sec, book in books:
        for i, cell in enumerate(book.cells):
            cell = _shown(nbformat.from_dict(dict(cell)))
            if cell is None:
                continue
            cell.id = _cell_id(f"{key}-{i}")
            if i == 0 and cell.cell_type == "markdown":
                lines = cell.source.split("\n")
                rest = "\n".join(lines[1:]) if lines and lines[0].startswith("# ") else cell.source
                cell.source = f'<h1 class="lk-section" id="{section_id(key)}">{html.escape(sec)}</h1>\n\n{rest.strip()}\n'
            cells.append(cell)
    merged.cells = cells
    nbformat.validate(merged)
    return merged


def export_html(nb, path: Path, title: str) -> Path:
    """`nb` as one HTML file (labkit's template: code and prompts hidden, no external scripts)."""
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        extra_template_basedirs=[str(TEMPLATES)],
        template_name="labkit",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    exporter.log.setLevel(logging.ERROR)  # its "alternative text is missing": figures carry their captions
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    soup = BeautifulSoup(body, features="html.parser")
    _unique_heading_ids(soup)
    path.write_text(str(soup), encoding="utf-8")
    return path


def _unique_heading_ids(soup) -> None:
    """nbconvert makes a heading's id from its text, and the four ablation sections share
    their headings: a repeated id gets its section's id in front, so each link (the
    heading's own anchor too) leads to its own section."""
    seen: set[str] = set()
    section = "report"
    for h in soup.find_all(re.compile(r"^h[1-6]$")):
        if "lk-section" in (h.get("class") or []):
            section = h.get("id", section)
        hid = h.get("id")
        if not hid:
            continue
        if hid in seen:
            new, k = f"{section}-{hid}", 2
            while new in seen:
                new, k = f"{section}-{hid}-{k}", k + 1
            h["id"] = new
            anchor = h.find("a", class_="anchor-link")
            if anchor is not None:
                anchor["href"] = f"#{new}"
        seen.add(h["id"])


def find_chromium() -> str | None:
    """A Chromium or Chrome on PATH ($LABKIT_CHROMIUM first); never downloads one."""
    env = os.environ.get("LABKIT_CHROMIUM")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    for name in CHROMIUMS:
        found = shutil.which(name)
        if found:
            return found
    return None


NO_CHROMIUM = "no Chromium on PATH (chromium, chromium-browser, google-chrome, or $LABKIT_CHROMIUM); install one, e.g. `apt-get install -y chromium`"


def print_pdf(html_path: Path, pdf_path: Path, chromium: str, timeout: float = 300) -> Path:
    """Print the HTML to PDF with headless Chromium (a fresh profile, no network services)."""
    tmp_pdf = pdf_path.with_name(pdf_path.name + ".part")
    with tempfile.TemporaryDirectory(prefix="labkit-chromium-") as profile_dir:
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile_dir}",
            f"--print-to-pdf={tmp_pdf.resolve()}",
            html_path.resolve().as_uri(),  # a bare path does not load; a file:// URI does
        ]
        try:
            p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"{chromium} did not print {html_path} within {timeout:.0f} s") from None
        if p.returncode != 0 or not tmp_pdf.is_file() or tmp_pdf.stat().st_size == 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
            raise LabError(f"{chromium} could not print {html_path} (exit {p.returncode}): " + " | ".join(tail))
        os.replace(tmp_pdf, pdf_path)
    return pdf_path


def export_notebook(notebook: str | os.PathLike, out_dir: str | os.PathLike | None = None, pdf: bool = False) -> list[Path]:
    """One executed notebook as HTML (and PDF) in `out_dir` (default: beside it), looking as
    the report does: code hidden, no stderr (progress bars, run logs). Returns the files written."""
    import nbformat

    src = Path(notebook)
    if not src.is_file():
        raise LabError(f"{src}: no such notebook file")
    try:
        nb = nbformat.read(src, as_version=4)
    except Exception as e:  # not JSON, not a notebook
        raise LabError(f"{src}: not a Jupyter notebook ({type(e).__name__}: {str(e)[:200]})") from None
    if not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        raise LabError(
            f"{src}: no cell has any output, so its export would show only the text cells; run it first "
            f"(in JupyterLab, or `papermill {src} executed.ipynb`) and export the executed copy"
        )
    chromium = find_chromium() if pdf else None
    if pdf and chromium is None:
        raise LabError(f"--pdf: {NO_CHROMIUM}; or leave out --pdf for the HTML alone")
    out = Path(out_dir) if out_dir is not None else src.parent
    if out.exists() and not out.is_dir():
        raise LabError(f"--out {out} is a file, not a folder")
    nb.cells = [c for c in (_shown(c) for c in nb.cells) if c is not None]
    out.mkdir(parents=True, exist_ok=True)
    title = next((c.source.split("\n")[0].lstrip("# ").strip() for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("# ")), src.stem)
    written = [export_html(nb, out / f"{src.stem}.html", title)]
    if chromium:
        written.append(print_pdf(written[0], out / f"{src.stem}.pdf", chromium))
    return written

"""Executed notebooks into a document (labkit.export): merged, exported with labkit's
nbconvert template, printed by Chromium; `labkit export` for one notebook."""

from __future__ import annotations

import re
import shutil

import nbformat
import pytest

from labkit import export as E
from labkit.cli import main


def _executed_nb(title: str, cell_id: str = "same") -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}, "language_info": {"name": "python"}}
    md = nbformat.v4.new_markdown_cell(f"# {title}\n\nintro text")
    code = nbformat.v4.new_code_cell("x = 1")
    code.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="train abc: 50%|#####\n"),
        nbformat.v4.new_output("display_data", data={"text/html": "<p>kept</p>"}),
        nbformat.v4.new_output("display_data", data={"image/svg+xml": "<svg xmlns='http://www.w3.org/2000/svg'/>"},
                               metadata={"image/svg+xml": {"alt": "Loss per epoch."}}),
    ]
    silent = nbformat.v4.new_code_cell("y = 2")  # no output: nothing to show once code is hidden
    md.id, code.id, silent.id = cell_id, cell_id + "x", cell_id + "y"  # the same ids in every part: the merge renumbers
    nb.cells = [md, code, silent]
    return nb


def test_merge_unique_ids_contents_and_no_stderr(tmp_path):
    parts = []
    for key in ("00_summary", "01_data", "04_ablations-dropout"):
        p = tmp_path / f"{key}.ipynb"
        nbformat.write(_executed_nb(key), p)
        parts.append((key, f"Title {key}", p))
    merged = E.merge(parts, "Report", "intro")
    ids = [c.id for c in merged.cells]
    assert len(ids) == len(set(ids)) and len(ids) == 1 + 3 * 2  # the head, and per part its text and its shown cell
    head = merged.cells[0].source
    for key in ("00_summary", "01_data", "04_ablations-dropout"):
        assert f'href="#sec-{key}"' in head
        assert any(f'id="sec-{key}"' in c.source for c in merged.cells if c.cell_type == "markdown")
    outs = [o for c in merged.cells if c.cell_type == "code" for o in c.outputs]
    assert outs and all(o.get("name") != "stderr" for o in outs)
    html = E.export_html(merged, tmp_path / "r.html", "Report").read_text()
    assert "x = 1" not in html  # code hidden
    assert "<p>kept</p>" in html and 'href="#sec-01_data"' in html
    assert not re.search(r"<script[^>]+src=", html)  # no scripts from elsewhere (require.js, MathJax)
    assert html.count('alt="Loss per epoch."') == 3  # a figure's caption is its alternative text
    assert "@page { size: A4;" in html  # the template's print rules (portrait)


def test_repeated_headings_get_ids_of_their_own_section():
    from bs4 import BeautifulSoup

    def heading(tag, hid, cls=""):
        c = f' class="{cls}"' if cls else ""
        return f'<{tag}{c} id="{hid}">T<a class="anchor-link" href="#{hid}">¶</a></{tag}>'

    body = "".join(
        heading("h1", f"sec-04_ablations-{g}", "lk-section") + heading("h2", "Figures") + heading("h2", "The-seed's-table")
        for g in ("lr_decay", "dropout")
    ) + heading("h1", "sec-05_final", "lk-section") + heading("h2", "Figures")
    soup = BeautifulSoup(body, features="html.parser")
    E._unique_heading_ids(soup)
    ids = [h["id"] for h in soup.find_all(["h1", "h2"])]
    assert len(ids) == len(set(ids)) == 8
    assert ids[1] == "Figures" and ids[4] == "sec-04_ablations-dropout-Figures" and ids[7] == "sec-05_final-Figures"
    for h in soup.find_all(["h1", "h2"]):
        assert h.find("a", class_="anchor-link")["href"] == f"#{h['id']}"  # each ¶ link leads to its own heading


def test_find_chromium(monkeypatch, tmp_path):
    monkeypatch.delenv("LABKIT_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert E.find_chromium() is None
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    assert E.find_chromium() == str(fake)


def test_export_one_notebook_as_the_report_looks(tmp_path, capsys):
    nb = tmp_path / "05_final.ipynb"
    nbformat.write(_executed_nb("5. The final run"), nb)
    assert main(["export", str(nb), "--out", str(tmp_path / "out")]) == 0
    html = (tmp_path / "out" / "05_final.html").read_text()
    assert capsys.readouterr().out == f"wrote {tmp_path / 'out' / '05_final.html'}\n"
    assert "<title>5. The final run</title>" in html and "<p>kept</p>" in html
    assert "x = 1" not in html and "train abc" not in html  # code and stderr left out
    assert main(["export", str(nb)]) == 0 and (tmp_path / "05_final.html").is_file()  # beside it by default


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on PATH (CI installs it)")
def test_export_one_notebook_to_pdf(tmp_path):
    nb = tmp_path / "nb.ipynb"
    nbformat.write(_executed_nb("A notebook"), nb)
    assert main(["export", str(nb), "--pdf"]) == 0
    assert (tmp_path / "nb.pdf").read_bytes()[:5] == b"%PDF-"


def test_export_refuses_what_it_cannot_export(tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("hello")
    blank = nbformat.v4.new_notebook()
    blank.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(blank, tmp_path / "blank.ipynb")
    nbformat.write(_executed_nb("T"), tmp_path / "nb.ipynb")
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("LABKIT_CHROMIUM", str(tmp_path / "no-such-chromium"))
    for argv, message in [
        ([str(tmp_path / "missing.ipynb")], "missing.ipynb: no such notebook file"),
        ([str(tmp_path / "notes.txt")], "notes.txt: not a Jupyter notebook"),
        ([str(tmp_path / "blank.ipynb")], "blank.ipynb: no cell has any output"),
        ([str(tmp_path / "nb.ipynb"), "--pdf"], "--pdf: no Chromium on PATH"),
        ([str(tmp_path / "nb.ipynb"), "--out", str(tmp_path / "afile")], "afile is a file, not a folder"),
    ]:
        assert main(["export", *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "blank.ipynb", "nb.ipynb", "notes.txt"]  # nothing written

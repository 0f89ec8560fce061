"""The README's "Use a trained model" examples run as written, on the tiny demo run (only the run
directory is swapped for the tiny one and the files they name are created)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from genrec import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


@pytest.fixture()
def workdir(tiny_run, tmp_path, monkeypatch):
    """A working directory where ``runs/demo`` is the tiny run and embeddings are cached apart."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(tiny_run)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_python_example_runs(workdir, capsys):
    (code,) = _blocks(_section("Use a trained model"), "python")
    namespace: dict = {}
    exec(compile(code, "README.md (Use a trained model)", "exec"), namespace)
    rec, top, why = namespace["rec"], namespace["top"], namespace["why"]
    assert len(top.items) == 10 and len(namespace["many"]) == 2
    assert why.gate is not None and "gate" in capsys.readouterr().out
    assert (workdir / "models" / "demo" / "recommender.json").is_file()
    assert namespace["sasrec"].method_name == "sasrec" and namespace["new"] == ["new-1"]
    assert "new-1" in rec.index and rec.item("new-1")["title"] == "Vanilla Shampoo"
    assert rec.new_item_mixture == namespace["fusion"].NewItemMixture(-3.0)


def test_command_line_examples_run(workdir, capsys):
    (script,) = _blocks(_section("Use a trained model"), "bash")
    rows = [{"user_id": "u1", "history": ["i00012", "i00040"]}, {"user_id": "u2", "history": ["i00003"]}]
    (workdir / "histories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (workdir / "new_items.jsonl").write_text(json.dumps({"item_id": "new-2", "title": "Rose Face Cream"}) + "\n")
    commands = [shlex.split(line.split("#")[0]) for line in script.splitlines() if line.startswith("genrec ")]
    assert [c[1] for c in commands] == ["recommend", "add-items", "serve"]
    for command in commands[:2]:  # `genrec serve` runs until stopped: tests/test_serve.py starts it for real
        assert cli.main(command[1:]) == 0, command
    assert "2 users -> recs.parquet" in capsys.readouterr().out
    assert (workdir / "recs.parquet").is_file() and (workdir / "models" / "demo-plus" / "recommender.json").is_file()
    from genrec.recommender import Recommender

    assert "new-2" in Recommender.from_pretrained(workdir / "models" / "demo-plus").index

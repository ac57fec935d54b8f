"""Identical candidates: each row's summary counts its own; the log says it once when it first
happens and sums it up once when the process ends, not once per question."""

import json
import logging
import os
import subprocess

import pytest
from commands import MiniRows, vlmeval_run_command
from PIL import Image

from standins.openai_standin import gpt4v_bon_config, serve_scripted
from vlmeval_prm.constants import DEMO_ENV, SPEC_ENV
from vlmeval_prm.host import bon as bon_module
from vlmeval_prm.host.bon import BestOfN, DuplicateTally

SPEC = "transformers:tiny:prm"
FIRST, SUMMARY = "the first such sample", "samples had identical candidates"


def lines(caplog, text):
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_the_first_occurrence_is_logged_and_the_totals_once_at_exit(monkeypatch, caplog):
    registered = []
    monkeypatch.setattr(bon_module.atexit, "register", registered.append)
    tally = DuplicateTally()
    with caplog.at_level(logging.WARNING):
        for name, key, duplicates, present in [
            ("M", "k0", 0, 4),
            ("M", "k1", 2, 4),
            ("M", "k2", 1, 4),
            ("M", "k3", 0, 3),
            ("Other", "k0", 0, 4),
        ]:
            tally.add(name, key, duplicates, present)
        assert registered == [tally.report]  # once per process
        first = lines(caplog, FIRST)
        assert len(first) == 1 and "M: 2 of 4 candidates of sample k1" in first[0]
        tally.report()
    (summary,) = lines(caplog, SUMMARY)  # "Other" had none: no line for it
    assert summary.startswith("M: 2 of 4 samples had identical candidates (3 of 15 candidates")


def test_a_run_of_identical_answers_logs_one_line_not_one_per_question(tiny_paths, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("VLMEVAL_PRM_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setattr(bon_module, "DUPLICATES", DuplicateTally())
    monkeypatch.setattr(bon_module.atexit, "register", lambda report: None)  # reported below instead
    base = {"class": "TransformersChat", "model_path": "tiny:policy", "max_new_tokens": 8}
    bon = BestOfN(model=base, n=3, prm=SPEC, name="same-bon")
    monkeypatch.setattr(bon.base, "_generate", lambda message, n, **kw: ["It is red.\n\nAnswer: A"] * n)
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (200, 20, 20)).save(image)
    with caplog.at_level(logging.WARNING):
        for j in range(5):
            out = bon.generate([{"type": "image", "value": str(image)}, {"type": "text", "value": f"Q{j}?"}], "Demo")
            assert json.loads(out["extra_records"])["duplicates"] == 2
        bon_module.DUPLICATES.report()
    assert len(lines(caplog, "identical")) == 2
    assert lines(caplog, SUMMARY) == [
        "same-bon: 5 of 5 samples had identical candidates (10 of 15 candidates identical to an earlier one of "
        "their sample; each row's summary counts its own)"
    ]


@pytest.mark.e2e
def test_vlmeval_run_prints_the_summary_once_at_exit(tiny_paths, tmp_path):
    """A server that answers every question with the same text (one choice, whatever ``n`` says)."""
    (tmp_path / "LMUData").mkdir()
    with serve_scripted(lambda prompt, payload: "Read the figure.\n\nAnswer: A") as server:
        config = gpt4v_bon_config("GPT4V-BoN2", 2, server, "sk-standin", MiniRows(4).config())
        (tmp_path / "config.json").write_text(json.dumps(config))
        env = {**os.environ, "LMUData": str(tmp_path / "LMUData"), SPEC_ENV: SPEC, DEMO_ENV: "1"}
        args = ["--config", str(tmp_path / "config.json"), *MiniRows(4).args(tmp_path / "LMUData")]
        proc = subprocess.run(
            vlmeval_run_command(args, tmp_path / "outputs", "--api-nproc", "2"),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("identical to an earlier one") == 2, out[-4000:]
    assert out.count("GPT4V-BoN2: 4 of 4 samples had identical candidates (4 of 8 candidates") == 1, out[-4000:]

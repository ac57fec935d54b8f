"""The store under VLMEvalKit's torchrun sharding: K ranks run ``infer_data`` on interleaved rows at
once and append to the same store file. (torchrun itself needs NCCL/GPUs in run.py, so the ranks
are launched directly with the RANK/WORLD_SIZE variables torchrun would set.)"""

import os
import subprocess
import sys
import textwrap

import pytest

from vlmeval_prm.constants import DEMO_ENV
from vlmeval_prm.store.jsonl import index_records, read_records

pytestmark = pytest.mark.e2e
MODEL, DATA, N, ROWS, RANKS = "VLMEvalPRM-TinyPolicy-BoN2", "VLMEvalPRM_MiniMCQ", 2, 12, 2

RANK_SCRIPT = textwrap.dedent(f"""
    import sys
    from vlmeval.dataset import build_dataset
    import vlmeval.inference as inf
    ds = build_dataset("{DATA}")
    ds.data = ds.data.iloc[:{ROWS}]
    work = sys.argv[1]
    inf.infer_data(model="{MODEL}", model_name="{MODEL}", work_dir=work, dataset=ds,
                   out_file=f"{{work}}/rank_{{sys.argv[2]}}.pkl")
""")


def test_ranks_share_one_store_without_loss(tmp_path, tiny_paths):
    (tmp_path / "LMUData").mkdir()
    work = tmp_path / "outputs"
    work.mkdir()
    procs = []
    for rank in range(RANKS):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(RANKS),
            "LMUData": str(tmp_path / "LMUData"),
            DEMO_ENV: "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RANK_SCRIPT, str(work), str(rank)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    path = work / f"{MODEL}_{DATA}_bon_candidates.jsonl"
    lines = path.read_text().splitlines()
    records = list(read_records(str(path)))
    assert len(records) == len(lines)  # no torn or interleaved line
    samples = index_records(records)
    assert len(samples) == ROWS
    for entry in samples.values():
        assert sorted(entry.candidates) == list(range(N))
        assert all(entry.score(i, "transformers:tiny:prm") for i in range(N))
    # each sample was sampled by exactly one rank: one sample record and N candidate records per key
    assert sum(r.kind == "candidate" for r in records) == ROWS * N
    assert sum(r.kind == "sample" for r in records) == ROWS

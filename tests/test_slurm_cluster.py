"""curate's pipelines submitted to a real Slurm scheduler: a one-node cluster of Debian's slurm-wlm that
`.ci/slurm-one-node` starts (CI runs it before the slow tests). The submission, the array jobs, their `afterok`
dependencies and the pickled pipelines run by slurmd are Slurm's own, not a stand-in's (tests/fake_slurm.py is the
stand-in the default run uses). Skipped when `sinfo` finds no idle node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curate.reweight import ReweightRequest, run_reweight

from tiny import write_jsonl, written_ids

pytestmark = pytest.mark.slow


def _cluster_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return done.returncode == 0 and "idle" in done.stdout


def _wait_for_queue(timeout: float = 900) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        queue = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True).stdout.strip()
        if not queue:
            return
        time.sleep(2)
    raise AssertionError(f"Slurm jobs still queued after {timeout:.0f} s: {queue}")


@pytest.mark.skipif(not _cluster_is_up(), reason="no Slurm cluster (start one with .ci/slurm-one-node)")
def test_a_reweighting_submitted_to_a_real_slurm_cluster_writes_what_the_local_executor_writes(demo_run, demo_assets, tmp_path, monkeypatch):
    # slurmd starts each job with the submitter's environment (sbatch --export=ALL): the interpreter's folder on PATH
    # is where datatrove's launch_pickled_pipeline lies
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    target = write_jsonl(tmp_path / "facts.jsonl", [{k: q[k] for k in ("id", "prompt", "completion")} for q in demo_assets.queries[:12]])
    request = dict(run=str(demo_run), target=str(target), tokens="60000")
    submitted = run_reweight(ReweightRequest(**request, out=str(tmp_path / "slurm"), out_data=str(tmp_path / "slurm-mix"),
                                             executor="slurm", tasks=2, workers=2,
                                             executor_options={"partition": "debug", "time": "00:20:00", "qos": ""}))
    assert submitted == {}  # submitted, not yet run: the manifest comes from the last job
    _wait_for_queue()
    manifest = tmp_path / "slurm" / "manifest.json"
    logs = "\n".join(p.read_text()[-2000:] for p in (tmp_path / "slurm").rglob("slurm_logs/*.out"))
    assert manifest.is_file(), f"the Slurm jobs did not finish the reweighting; their logs:\n{logs}"
    on_slurm = json.loads(manifest.read_text())
    local = run_reweight(ReweightRequest(**request, out=str(tmp_path / "local"), out_data=str(tmp_path / "local-mix")))
    assert on_slurm["weights"]["domains"] == local["weights"]["domains"]
    assert on_slurm["sampled"] == local["sampled"]
    assert written_ids(tmp_path / "slurm-mix") == written_ids(tmp_path / "local-mix") and written_ids(tmp_path / "local-mix")

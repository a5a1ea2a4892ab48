"""A one-machine stand-in for Slurm: `sbatch` and `srun` on PATH, and a scheduler that runs what was submitted.

datatrove's SlurmPipelineExecutor pickles itself, writes an sbatch script per stage and submits it with
`--dependency=afterok:<previous job>`. `sbatch` here only records the script and its arguments; `run_jobs` then does
what the cluster would: in submission order, once every job a job depends on has succeeded, it runs the script once
per array index with the variables a node sets (SLURM_ARRAY_TASK_ID, SLURM_JOB_ID, the exported RUN_OFFSET), and
`srun` runs its command in place (`scontrol` names the one node). So the pickled pipelines run exactly as a node would run them, in fresh processes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SBATCH = """#!/usr/bin/env bash
# Records a submission the way sbatch would accept it, and answers with its job id.
set -e
jobs="{jobs}"
mkdir -p "$jobs"
id=$(( $(find "$jobs" -name '*.sh' | wc -l) + 1 ))
script="${{@: -1}}"
cp "$script" "$jobs/$id.sh"
printf '%s\\n' "${{@:1:$#-1}}" > "$jobs/$id.args"
echo "Submitted batch job $id"
"""

SRUN = """#!/usr/bin/env bash
# Runs the command after srun's options (one task on this node), as `srun -l -n 1 CMD ARGS` would.
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do
  case "$1" in -n|-N|--ntasks|--nodes) shift 2 ;; *) shift ;; esac
done
exec "$@"
"""

SCONTROL = """#!/usr/bin/env bash
# `scontrol show hostnames LIST`: one node, this one.
if [ "$1" = show ] && [ "$2" = hostnames ]; then echo "${3:-localhost}"; exit 0; fi
echo "scontrol $* is not available on this stand-in" >&2; exit 1
"""


@dataclass
class Job:
    id: str
    script: str
    directives: dict[str, str]
    arguments: list[str]
    depends_on: list[str] = field(default_factory=list)
    tasks_run: int = 0

    @property
    def array(self) -> range:
        first, last = re.match(r"(\d+)-(\d+)", self.directives["array"]).groups()
        return range(int(first), int(last) + 1)


class FakeSlurm:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.bin, self.jobs_dir = self.root / "bin", self.root / "jobs"
        self.bin.mkdir(parents=True, exist_ok=True)
        for name, text in (("sbatch", SBATCH.format(jobs=self.jobs_dir)), ("srun", SRUN), ("scontrol", SCONTROL)):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)

    def path(self) -> str:
        """PATH with these tools first, and the Python environment's scripts (launch_pickled_pipeline, merge_stats)."""
        return os.pathsep.join([str(self.bin), str(Path(sys.executable).parent), os.environ.get("PATH", "")])

    def jobs(self) -> list[Job]:
        found = []
        for script in sorted(self.jobs_dir.glob("*.sh"), key=lambda p: int(p.stem)):
            text = script.read_text()
            directives = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", text, flags=re.M))
            arguments = script.with_suffix(".args").read_text().split("\n")
            dependency = next((a.split("=", 1)[1] for a in arguments if a.startswith("--dependency=")), directives.get("dependency", ""))
            found.append(Job(script.stem, text, directives, [a for a in arguments if a],
                             re.findall(r"after(?:ok|any):(\d+)", dependency)))
        return found

    def run_jobs(self, env: dict[str, str] | None = None) -> list[Job]:
        """Run every submitted job, dependencies first, each array index in its own process; fail on a failed task."""
        done: set[str] = set()
        jobs = self.jobs()
        for job in jobs:
            missing = [d for d in job.depends_on if d not in done]
            assert not missing, f"job {job.id} was submitted before the jobs it depends on ran: {missing}"
            exported = next((a for a in job.arguments if a.startswith("--export=")), "--export=ALL")
            extra = dict(item.split("=", 1) for item in exported.split("=", 1)[1].split(",") if "=" in item)
            for index in job.array:
                task_env = {**os.environ, **(env or {}), **extra, "PATH": self.path(), "SLURM_JOB_ID": job.id,
                            "SLURM_ARRAY_JOB_ID": job.id, "SLURM_ARRAY_TASK_ID": str(index), "SLURM_NODELIST": "localhost"}
                result = subprocess.run(["bash", str(self.jobs_dir / f"{job.id}.sh")], env=task_env, capture_output=True, text=True)
                assert result.returncode == 0, f"job {job.id} task {index} failed:\n{result.stderr[-4000:]}"
                job.tasks_run += 1
            done.add(job.id)
        return jobs

"""Runs the collection's modules the way users do: through `ansible`, with the JSON callback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_run(module: str, args: dict, check: bool = False, diff: bool = False) -> tuple[list, dict]:
    """(argv, env) of `ansible localhost -m module` with the JSON callback."""
    argv = [
        "ansible",
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-m",
        module,
        "-a",
        json.dumps(args),
        "-e",
        f"ansible_python_interpreter={sys.executable}",
    ]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".build" / "collections"),
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    return argv, env


def run_module(module: str, args: dict, check: bool = False, diff: bool = False, timeout: float = 300) -> dict:
    """The module's result as a dict; `failed` and `msg` are in it when the module fails."""
    argv, env = _module_run(module, args, check, diff)
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"ansible printed no JSON (rc {out.returncode}):\n{out.stdout}\n{out.stderr}") from e
    return data["plays"][0]["tasks"][0]["hosts"]["localhost"]


def start_module(module: str, args: dict, output: Path) -> subprocess.Popen:
    """The same run, started in a session of its own and not waited for (a test kills it with proc.kill_tree);
    what it prints goes to output."""
    argv, env = _module_run(module, args)
    with open(output, "wb") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def run_playbook(
    name: str,
    variables: dict,
    workdir: Path,
    json_output: bool = False,
    timeout: float = 600,
    inventory: str = "localhost,",
):
    """ansible-playbook playbooks/<name>.yml on localhost with the variables in a vars file (no argument
    length limit), as a user or the autoscaler's timer runs it; the CompletedProcess."""
    vars_file = workdir / f"{name}-vars.json"
    vars_file.write_text(json.dumps(variables))
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".build" / "collections"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    if json_output:
        env.update(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    argv = ["ansible-playbook", "-i", inventory, str(ROOT / "playbooks" / f"{name}.yml"), "-e", f"@{vars_file}"]
    argv += ["-e", f"ansible_python_interpreter={sys.executable}"]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)

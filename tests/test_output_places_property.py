"""Property tests that reach inside the work (issue 34): the commands that write run for
real, with generated hostile output places — a dangling symbolic link, a link to a folder, a
FIFO, a file, the current folder and the one above it, a mount point, a folder of the user's
files, a path under a file — and, each in its own process, on a full and on a read-only file
system (a small tmpfs in a private mount namespace), and under Ctrl-C on each engine.

Whatever the place, a command ends with exit 0 or one line and exit 1, never a traceback or
an abort; it leaves no staging folder or temporary file; a user's file is never changed or
removed; and where it fails, the place is as it was.

``make test`` runs 55 examples with a fixed seed: every command with every place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from headway.cli import app
from headway.runtime.engines import engine_available

EXAMPLES = int(os.environ.get("HEADWAY_PROPERTY_EXAMPLES", "55"))
SEED = int(os.environ.get("HEADWAY_PROPERTY_SEED", "34"))
HEADWAY = Path(sys.executable).parent / "headway"
MOUNT_POINT = Path("/proc")  # a mount point no command can write into, even as root


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory, synth_dataset: Path) -> Path:
    run = tmp_path_factory.mktemp("run") / "run"
    args = ["track", str(synth_dataset), "--out", str(run), "--config", "tiny", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return run


def _commands(run: Path, dataset: Path = Path()) -> dict[str, Callable[[str], list[str]]]:
    return {
        "synth": lambda out: ["synth", out, "--sequences", "1", "--frames", "4"],
        "export-results lasot": lambda out: [
            "export-results", str(run), "--to", "lasot", "--out", out,
        ],
        "export-results got10k": lambda out: [
            "export-results", str(run), "--to", "got10k", "--out", out,
        ],
        "export": lambda out: ["export", out, "--config", "tiny", "--formats", "torchscript"],
        "eval --plots": lambda out: [
            "eval", str(run), "--dataset", str(dataset), "--plots", out,
        ],
    }  # fmt: skip


def _place(kind: str, root: Path) -> str:
    """Makes the hostile output place ``kind`` under ``root`` (the current folder is
    ``root/work``) and returns it as the user would type it."""
    (root / "mine.txt").write_text("the user's")
    if kind == "missing":
        return str(root / "new")
    if kind == "dangling link":
        (root / "link").symlink_to(root / "nowhere")
        return str(root / "link")
    if kind == "link to a folder":
        (root / "target").mkdir()
        (root / "link").symlink_to(root / "target")
        return str(root / "link")
    if kind == "fifo":
        os.mkfifo(root / "pipe")
        return str(root / "pipe")
    if kind == "file":
        (root / "file.txt").write_text("a file of the user's")
        return str(root / "file.txt")
    if kind == "current folder":
        return "."
    if kind == "folder above":
        return ".."
    if kind == "mount point":
        return str(MOUNT_POINT)
    if kind == "new folder in a mount point":
        return str(MOUNT_POINT / "headway-new")
    if kind == "folder of the user's files":
        (root / "mine").mkdir()
        (root / "mine" / "notes.txt").write_text("notes")
        return str(root / "mine")
    if kind == "under a file":
        return str(root / "mine.txt" / "below")
    raise AssertionError(kind)


PLACES = [
    "missing",
    "dangling link",
    "link to a folder",
    "fifo",
    "file",
    "current folder",
    "folder above",
    "mount point",
    "new folder in a mount point",
    "folder of the user's files",
    "under a file",
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: links by target, FIFOs, files by content, folders."""
    seen: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            seen[name] = f"link {os.readlink(path)}"
        elif path.is_fifo():
            seen[name] = "fifo"
        elif path.is_file():
            seen[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            seen[name] = "folder"
    return seen


def _leftovers(root: Path) -> list[str]:
    """Staging folders and temporary files a command must never leave behind."""
    found = []
    for path in root.rglob("*"):
        name = path.name
        temporary = name.endswith((".tmp", ".building", ".building.pt2")) or ".old-" in name
        staging = path.is_dir() and name.startswith(".") and name != ".headway.lock"
        if temporary or staging:
            found.append(str(path))
    return found


def _inputs(run: Path) -> dict[str, str]:
    """The run's files but metrics.json, which eval writes there by design."""
    return {k: v for k, v in _snapshot(run).items() if k != "metrics.json"}


def _user_files(snapshot: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in snapshot.items() if k.split("/")[-1] in ("mine.txt", "notes.txt")}


@seed(SEED)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(command=st.sampled_from(sorted(_commands(Path()))), kind=st.sampled_from(PLACES))
def test_every_output_place_ends_in_a_result_or_one_line(
    command: str,
    kind: str,
    tracked_run: Path,
    synth_dataset: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path_factory.mktemp("place")
    (root / "work").mkdir()
    monkeypatch.setenv("HEADWAY_CACHE", str(tmp_path_factory.mktemp("cache")))
    place = _place(kind, root)
    before = _snapshot(root)
    run_before = _inputs(tracked_run)
    here = Path.cwd()
    os.chdir(root / "work")
    try:
        result = CliRunner().invoke(app, _commands(tracked_run, synth_dataset)[command](place))
    finally:
        os.chdir(here)
    output = " ".join(result.output.split())
    case = f"{command} --out {kind}: exit {result.exit_code}: {output[-600:]}"
    if os.environ.get("HEADWAY_PROPERTY_SHOW"):
        print(f"\n{command} | {kind} | {result.exit_code} | {output[-160:]}")
    assert result.exit_code in (0, 1), case
    assert "Traceback" not in result.output and result.exc_info[0] in (None, SystemExit), case
    assert output.count("error:") == (result.exit_code == 1), case
    after = _snapshot(root)
    assert _leftovers(root) == [], case
    assert _user_files(after) == _user_files(before), case  # never changed, never removed
    assert _inputs(tracked_run) == run_before, case  # the run is read, never changed
    if result.exit_code == 1:
        assert after == before, case  # a failure leaves the place as it was
    if kind == "link to a folder" and result.exit_code == 0:
        assert (root / "link").is_symlink(), case  # the link is followed, not replaced


# --- a full and a read-only file system, each command in its own process -------------------


def _namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = 'mount -t tmpfs -o size=64k tmpfs "$0" && touch "$0/x"'
    with_root = subprocess.run(
        ["unshare", "-rm", "sh", "-c", probe, "/tmp"], capture_output=True, timeout=30
    )
    return with_root.returncode == 0


needs_namespaces = pytest.mark.skipif(
    sys.platform != "linux" or not _namespaces_work(),
    reason="needs unprivileged user and mount namespaces (unshare -rm)",
)


def _in_small_filesystem(
    args: list[str], mount: Path, how: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``headway args`` in a private mount namespace where ``mount`` is a tmpfs that is full
    (``how="full"``: a filler file took every block) or read-only (``how="ro"``)."""
    if how == "full":
        prepare = (
            'mount -t tmpfs -o size=256k tmpfs "$MNT" && '
            '(dd if=/dev/zero of="$MNT/filler" bs=4k 2>/dev/null; true)'
        )
    else:
        prepare = 'mount -t tmpfs -o size=256k,ro tmpfs "$MNT"'
    # the listing of the tmpfs after the command, before the namespace (and it) are gone
    script = (
        f'{prepare} || exit 99; "$HEADWAY_BIN" "$@"; rc=$?; '
        'for f in "$MNT"/* "$MNT"/.[!.]*; do [ -e "$f" ] && echo "LEFT: $f"; done; exit $rc'
    )
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "headway", *args],
        env={**os.environ, "MNT": str(mount), "HEADWAY_BIN": str(HEADWAY), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@needs_namespaces
@pytest.mark.parametrize("how", ["full", "ro"])
@pytest.mark.parametrize("command", ["synth", "export-results lasot", "export"])
def test_a_full_or_read_only_file_system_is_one_line(
    command: str, how: str, tracked_run: Path, tmp_path: Path
) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    done = _in_small_filesystem(
        _commands(tracked_run)[command](str(mount / "out")),
        mount,
        how,
    )
    left = [line for line in done.stdout.splitlines() if line.startswith("LEFT: ")]
    output = " ".join((done.stdout + done.stderr).split())
    case = f"{command} on a {how} file system: exit {done.returncode}: {output[-600:]}"
    assert done.returncode == 1, case
    assert "Traceback" not in output and output.count("error:") == 1, case
    expected = ("no space left",) if how == "full" else ("not writable", "not a writable")
    assert any(words in output.lower() for words in expected), case
    assert left == ([f"LEFT: {mount / 'filler'}"] if how == "full" else []), case


# --- Ctrl-C under each engine, in its own process -----------------------------------------


ENGINES = ["torch", "onnxruntime", "openvino"]


@pytest.mark.parametrize("engine", ENGINES)
def test_ctrl_c_under_each_engine_is_one_line_and_exit_130(engine: str, tmp_path: Path) -> None:
    """SIGINT while multirun's jobs run on the engine (after 6 s of CPU: imports and the
    export take less): "interrupted (Ctrl-C)", exit 130; no
    abort (ONNX Runtime ended in exit 134 before), no traceback."""
    if engine != "torch" and not engine_available(engine):
        pytest.skip(f"{engine} not installed")
    args = ["multirun", "--models", "vgg16:2", "--requests", "1000000", "--input-size", "32"]
    if engine != "torch":
        args += ["--engine", engine]
    env = {**os.environ, "HEADWAY_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    process = subprocess.Popen(
        [str(HEADWAY), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        _wait_until_busy(process.pid, cpu_s=6.0, timeout=120.0)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    text = " ".join(output.split())
    case = f"{engine}: exit {process.returncode}: {text[-600:]}"
    assert process.returncode == 130, case
    assert "interrupted (Ctrl-C)" in text and "Traceback" not in text, case
    assert "FATAL" not in text and "terminate called" not in text, case


def _wait_until_busy(pid: int, cpu_s: float, timeout: float) -> None:
    """Until the process has used ``cpu_s`` of CPU (imports, export and the first requests
    take less), so the signal arrives while the engine's jobs run."""
    ticks = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return
        if (int(fields[11]) + int(fields[12])) / ticks >= cpu_s:
            return
        time.sleep(0.2)
    raise AssertionError(f"the command did not get busy within {timeout:.0f} s")


def test_leaving_after_ctrl_c_does_not_abort_under_busy_torch_threads() -> None:
    """The abort CI saw once (exit -6, "terminate called without an active exception", after
    "interrupted (Ctrl-C): stopped"): the interpreter's teardown ends daemon threads that are
    inside torch's kernels with a forced unwind. Plain ``sys.exit`` with such threads aborts
    almost every time here; :func:`headway.entry.leave` skips the teardown, runs ``atexit``."""
    script = (
        "import atexit, sys, threading, time, torch\n"
        "from headway.entry import leave\n"
        "a = torch.randn(400, 400)\n"
        "def spin():\n"
        "    while True:\n"
        "        a @ a\n"
        "for _ in range(2):\n"
        "    threading.Thread(target=spin, daemon=True).start()\n"
        "atexit.register(lambda: print('ATEXIT RAN', flush=True))\n"
        "time.sleep(0.3)\n"
        "leave(130)\n"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    for process in runs:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 130, output[-400:]
        assert "ATEXIT RAN" in output and "terminate called" not in output, output[-400:]


def test_ctrl_c_while_the_command_imports_is_one_line() -> None:
    """SIGINT before the command's modules are imported: the same line and 130, no traceback
    (it was a KeyboardInterrupt traceback from inside an import)."""
    process = subprocess.Popen(
        [str(HEADWAY), "multirun", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_until_busy(process.pid, cpu_s=0.4, timeout=60.0)  # the imports have begun
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    text = " ".join(output.split())
    if process.returncode == 0:  # the imports were done before the signal: nothing to test
        pytest.skip("the command finished before the signal")
    assert process.returncode == 130, text[-600:]
    assert "interrupted (Ctrl-C)" in text and "Traceback" not in text, text[-600:]

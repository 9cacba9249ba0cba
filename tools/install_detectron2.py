#!/usr/bin/env python
"""Provision Detectron2 for ovseg, in order of preference.

1. An importable ``detectron2`` is kept untouched (a user's own CUDA build).
2. The official source build from its git repository (builds the compiled ops, with CUDA
   when nvcc is present), tried only when the repository answers within a short probe.
3. The PyPI sdist ``pb1-detectron2==0.6`` (= upstream tag v0.6), checked against its
   sha256 and installed as an ordinary ``detectron2`` distribution from its Python sources
   only: no compiled ``_C`` (a generated placeholder names each missing op), none of its
   stale pins, and upstream's own later one-line fixes for Pillow >= 10 and numpy >= 1.24
   applied to the installed copy.

Run it with the interpreter of the environment to provision:
``.venv/bin/python tools/install_detectron2.py``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

OFFICIAL_REPO = "https://github.com/facebookresearch/detectron2.git"
SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILENAME = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
DEFAULT_INDEX = "https://pypi.org/simple"
# Marker the placeholder carries, read by ovseg.compat's feature test.
PLACEHOLDER_FLAG = "OVSEG_PLACEHOLDER"

# Requirements of v0.6 that ovseg drops or relaxes: black is a formatter pinned to a 2021
# beta, and iopath<0.1.10 conflicts with current fvcore/portalocker on Python 3.11.
DROPPED_REQUIREMENTS = ("black", "dataclasses")
RELAXED_REQUIREMENTS = {"iopath": "iopath>=0.1.7"}

# Upstream's own later fixes, as (file pattern, regex, replacement, upstream commit).
# ff53992b: Pillow 10 removed Image.LINEAR (an alias of BILINEAR).
# 027099d3, 54dd614e, 654570a2: numpy 1.24 removed the np.int/np.float/np.str/np.bool
# aliases of the builtins.
SOURCE_FIXES = (
    (r"\bImage\.LINEAR\b", "Image.BILINEAR", "ff53992b"),
    (r"\bnp\.(int|float|str|bool)\b(?!\w)", r"\1", "027099d3/54dd614e/654570a2"),
)

PLACEHOLDER_SOURCE = '''"""Placeholder for detectron2's compiled ops, written by ovseg's installer.

This detectron2 was installed from its Python sources only, so the C++/CUDA ops are absent.
ovseg's code paths never call them. Using one raises an error naming the op.
"""

{flag} = True
_HELP = (
    "detectron2 was installed by ovseg without its compiled ops, so '{{name}}' ({{what}}) "
    "is unavailable. Install the official build instead: "
    "pip install --no-build-isolation 'git+{repo}' "
    "(needs a C++ compiler, and nvcc for the CUDA ops), then re-run your command."
)
_OPS = {{
    "box_iou_rotated": "rotated boxes",
    "nms_rotated": "rotated boxes",
    "roi_align_rotated_forward": "rotated RoIAlign",
    "roi_align_rotated_backward": "rotated RoIAlign",
    "deform_conv_forward": "deformable convolution",
    "deform_conv_backward_input": "deformable convolution",
    "deform_conv_backward_filter": "deformable convolution",
    "modulated_deform_conv_forward": "modulated deformable convolution",
    "modulated_deform_conv_backward": "modulated deformable convolution",
    "InstanceAnnotation": "fast COCO evaluation; use COCOEvaluator(use_fast_impl=False)",
    "COCOevalEvaluateImages": "fast COCO evaluation; use COCOEvaluator(use_fast_impl=False)",
    "COCOevalAccumulate": "fast COCO evaluation; use COCOEvaluator(use_fast_impl=False)",
}}


class CompiledOpUnavailable(AttributeError):
    """Raised for any compiled op of detectron2 that this install does not have."""


def get_compiler_version():
    return "not built (pure-Python install by ovseg)"


def get_cuda_version():
    return "not built (pure-Python install by ovseg)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise CompiledOpUnavailable(_HELP.format(name=name, what=_OPS.get(name, "a compiled op")))
'''


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def detectron2_importable(python: str) -> str | None:
    """Return the path of an importable detectron2 for ``python``, or None."""
    code = "import detectron2, os; print(os.path.dirname(detectron2.__file__))"
    res = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sdist(path: Path) -> None:
    """Refuse an sdist whose sha256 is not the one of upstream v0.6's published copy."""
    digest = sha256_of(path)
    if digest != SDIST_SHA256:
        raise SystemExit(
            f"{path}: sha256 {digest} does not match the expected {SDIST_SHA256} of "
            f"{SDIST_FILENAME}. The file is corrupt or not the published sdist; delete it and "
            "run again (or pass --sdist with the right file)."
        )


def find_sdist_url(index_url: str) -> str:
    """Look the sdist up through the simple repository API (PEP 691 JSON, else HTML)."""
    page = f"{index_url.rstrip('/')}/{SDIST_NAME}/"
    req = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = resp.read().decode()
        ctype = resp.headers.get("Content-Type", "")
    if "json" in ctype:
        urls = [f["url"] for f in json.loads(body)["files"] if f["filename"] == SDIST_FILENAME]
    else:
        urls = [u for u in re.findall(r'href="([^"]+)"', body) if SDIST_FILENAME in u]
        urls = [urllib.request.urljoin(page, u) for u in urls]
    if not urls:
        raise SystemExit(f"{SDIST_FILENAME} is not listed at {page}; pass --sdist PATH.")
    return urls[0].split("#")[0]


def download_sdist(cache_dir: Path, index_url: str) -> Path:
    """Download (once, atomically) and verify the sdist; return its path."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / SDIST_FILENAME
    if dest.exists() and sha256_of(dest) == SDIST_SHA256:
        return dest
    url = find_sdist_url(index_url)
    log(f"downloading {SDIST_FILENAME}")
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=120) as resp:
            shutil.copyfileobj(resp, f)
        verify_sdist(Path(tmp))
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def requirements_from_setup_py(setup_py: Path) -> list[str]:
    """Read ``install_requires`` from v0.6's setup.py, less its stale pins."""
    tree = ast.parse(setup_py.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            reqs = ast.literal_eval(node.value)
            break
    else:
        raise SystemExit(f"{setup_py}: no install_requires found; is this detectron2's sdist?")
    out = []
    for req in reqs:
        name = re.split(r"[<>=!;\[ ]", req, maxsplit=1)[0].strip().lower()
        if name in DROPPED_REQUIREMENTS:
            continue
        out.append(RELAXED_REQUIREMENTS.get(name, req))
    return out


def apply_source_fixes(package_dir: Path) -> dict[str, int]:
    """Apply upstream's later one-line fixes in place; return replacements per file."""
    changed: dict[str, int] = {}
    for path in sorted(package_dir.rglob("*.py")):
        text = path.read_text()
        total = 0
        for pattern, repl, _commit in SOURCE_FIXES:
            text, n = re.subn(pattern, repl, text)
            total += n
        if total:
            path.write_text(text)
            changed[str(path.relative_to(package_dir))] = total
    return changed


def write_placeholder(package_dir: Path) -> Path:
    path = package_dir / "_C.py"
    path.write_text(PLACEHOLDER_SOURCE.format(flag=PLACEHOLDER_FLAG, repo=OFFICIAL_REPO))
    return path


def stage_pure_python(sdist: Path, workdir: Path) -> Path:
    """Unpack the sdist and lay out a pure-Python ``detectron2`` project; return its root."""
    with tarfile.open(sdist) as tar:
        tar.extractall(workdir, filter="data")
    src = workdir / f"{SDIST_NAME}-{SDIST_VERSION}"
    stage = workdir / "stage"
    stage.mkdir()
    shutil.copytree(src / "detectron2", stage / "detectron2")
    shutil.copy(src / "LICENSE", stage / "LICENSE")
    changed = apply_source_fixes(stage / "detectron2")
    write_placeholder(stage / "detectron2")
    provenance = {
        "source": SDIST_FILENAME,
        "sha256": SDIST_SHA256,
        "upstream_tag": "v0.6",
        "compiled_ops": False,
        "fixes": changed,
    }
    (stage / "detectron2" / "ovseg_provenance.json").write_text(json.dumps(provenance, indent=1))
    reqs = requirements_from_setup_py(src / "setup.py")
    (stage / "setup.py").write_text(
        "from setuptools import find_packages, setup\n\n"
        "setup(\n"
        '    name="detectron2",\n'
        '    version="0.6+ovseg.purepython",\n'
        '    description="Detectron2 v0.6 Python sources (no compiled ops), installed by ovseg",\n'
        '    license="Apache-2.0",\n'
        '    packages=find_packages(include=["detectron2", "detectron2.*"]),\n'
        '    package_data={"detectron2": ["ovseg_provenance.json"]},\n'
        '    python_requires=">=3.7",\n'
        f"    install_requires={reqs!r},\n"
        ")\n"
    )
    log(f"fixed {sum(changed.values())} lines in {len(changed)} files; placeholder _C written")
    return stage


def source_spec(repo: str) -> str:
    """What pip installs for ``repo``: a source folder (a checkout) as it is, a git URL or
    path (a clone, a mirror) as ``git+URL``."""
    if os.path.isfile(os.path.join(repo, "setup.py")):
        return os.path.abspath(repo)
    if "://" not in repo and os.path.isdir(repo):
        return "git+file://" + os.path.abspath(repo)
    return f"git+{repo}"


def try_source_build(
    python: str, probe_timeout: int, build_timeout: int, repo: str = OFFICIAL_REPO
) -> bool:
    """The official build, when its repository answers; False when unreachable or failing."""
    is_folder = os.path.isfile(os.path.join(repo, "setup.py"))  # a checkout: nothing to probe
    if not is_folder and not _answers(repo, probe_timeout):
        return False
    log(f"building detectron2 from {repo} (compiled ops; this takes minutes)")
    cmd = [python, "-m", "pip", "install", "--no-build-isolation", source_spec(repo)]
    try:
        subprocess.run(cmd, timeout=build_timeout, check=True)
    except (subprocess.SubprocessError, OSError) as e:
        log(f"source build failed ({e}); using the PyPI sdist")
        return False
    return True


def _answers(repo: str, probe_timeout: int) -> bool:
    try:
        subprocess.run(
            ["git", "ls-remote", "--exit-code", repo, "HEAD"],
            capture_output=True,
            timeout=probe_timeout,
            check=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (subprocess.SubprocessError, OSError):
        log(f"{repo} not reachable within {probe_timeout}s; using the PyPI sdist")
        return False
    return True


def install_from_sdist(python: str, sdist: Path) -> None:
    verify_sdist(sdist)
    with tempfile.TemporaryDirectory(prefix="ovseg-d2-") as tmp:
        stage = stage_pure_python(sdist, Path(tmp))
        subprocess.run([python, "-m", "pip", "install", "--quiet", str(stage)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to provision")
    parser.add_argument(
        "--method",
        choices=["auto", "source", "sdist"],
        default=os.environ.get("OVSEG_D2_METHOD", "auto"),
        help="auto: keep, else source, else sdist (env OVSEG_D2_METHOD)",
    )
    parser.add_argument(
        "--repo",
        default=os.environ.get("OVSEG_D2_REPO", OFFICIAL_REPO),
        help="the official repository to build from: its URL (default), or a local clone, "
        "mirror or source folder for a machine without GitHub (env OVSEG_D2_REPO)",
    )
    parser.add_argument("--sdist", type=Path, help=f"a local {SDIST_FILENAME} to use")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/detectron2"))
    parser.add_argument("--index-url", default=os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX))
    parser.add_argument("--probe-timeout", type=int, default=20)
    parser.add_argument("--build-timeout", type=int, default=1800)
    args = parser.parse_args(argv)
    if shutil.which(args.python) is None:
        parser.error(f"--python {args.python}: no such interpreter; give a python executable")
    if args.sdist and not args.sdist.is_file():
        parser.error(f"--sdist {args.sdist} is not a file; give the {SDIST_FILENAME} to use")

    found = detectron2_importable(args.python)
    if found and args.method == "auto":
        log(f"keeping the importable detectron2 at {found}")
        return 0
    if args.method in ("auto", "source") and not args.sdist:
        if try_source_build(args.python, args.probe_timeout, args.build_timeout, args.repo):
            return 0
        if args.method == "source":
            return 1
    sdist = args.sdist or download_sdist(args.cache_dir, args.index_url)
    install_from_sdist(args.python, sdist)
    found = detectron2_importable(args.python)
    if not found:
        log("detectron2 still does not import after the install; see the pip output above")
        return 1
    log(f"installed detectron2 v0.6 (pure Python) at {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

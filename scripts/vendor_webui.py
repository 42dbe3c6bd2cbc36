"""Vendor the chat page's JavaScript libraries from npm (a development-time step).

The page ships as plain files inside the package, so nothing is built or fetched when
chatd is installed. This script is how those files got there, and how to update them:

    .venv/bin/python scripts/vendor_webui.py            # the pinned versions below
    .venv/bin/python scripts/vendor_webui.py --check    # only verify the manifest

It runs `npm pack NAME@VERSION` for each library, copies the listed files and the
licence texts verbatim into src/chatd/webui/static/vendor/, and writes manifest.json
there: name, version, licence, the npm package and its tarball's integrity, and each
file's sha256.
tests/e2e/test_webui.py checks the files against that manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "src" / "chatd" / "webui" / "static" / "vendor"

# (npm name, version, licence, {file in the tarball: name under vendor/})
LIBRARIES: list[tuple[str, str, str, dict[str, str]]] = [
    ("marked", "18.3.0", "MIT", {
        "package/lib/marked.esm.js": "marked.esm.js",
        "package/LICENSE": "licenses/marked.LICENSE.md",
    }),
    ("dompurify", "3.5.0", "(MPL-2.0 OR Apache-2.0)", {
        "package/dist/purify.es.mjs": "purify.es.mjs",
        "package/LICENSE": "licenses/dompurify.LICENSE",
        "package/LICENSE-MPL": "licenses/dompurify.LICENSE-MPL",
    }),
    ("@highlightjs/cdn-assets", "11.12.0", "BSD-3-Clause", {
        "package/es/highlight.min.js": "highlight.min.js",
        "package/styles/github.min.css": "github.min.css",
        "package/styles/github-dark.min.css": "github-dark.min.css",
        "package/LICENSE": "licenses/highlight.js.LICENSE",
    }),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _npm(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["npm", *args], check=True, capture_output=True, text=True,
                          cwd=cwd).stdout.strip()


def vendor() -> dict:
    packages = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, version, licence, files in LIBRARIES:
            spec = f"{name}@{version}"
            tgz = work / _npm("pack", spec, "--silent", cwd=work).splitlines()[-1]
            integrity = _npm("view", spec, "dist.integrity")
            entries = []
            with tarfile.open(tgz) as tar:
                for member, dest in files.items():
                    data = tar.extractfile(member)
                    if data is None:
                        raise SystemExit(f"{spec}: {member} is not a file")
                    target = VENDOR / dest
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data.read())
                    entries.append({"path": dest, "from": member, "sha256": sha256(target)})
            packages.append({"name": name, "version": version, "license": licence,
                             "source": f"npm pack {spec}", "integrity": integrity,
                             "files": entries})
    manifest = {"about": "Vendored from npm by scripts/vendor_webui.py; files are copied "
                         "verbatim from each package tarball.",
                "packages": packages}
    (VENDOR / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check() -> list[str]:
    """Problems with the vendored files (empty when they match the manifest)."""
    manifest = json.loads((VENDOR / "manifest.json").read_text())
    problems, listed = [], {"manifest.json"}
    for package in manifest["packages"]:
        for entry in package["files"]:
            listed.add(entry["path"])
            path = VENDOR / entry["path"]
            if not path.is_file():
                problems.append(f"missing: {entry['path']}")
            elif sha256(path) != entry["sha256"]:
                problems.append(f"sha256 differs: {entry['path']}")
    present = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file()}
    problems += [f"not in the manifest: {p}" for p in sorted(present - listed)]
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify the files")
    args = parser.parse_args()
    if not args.check:
        manifest = vendor()
        for package in manifest["packages"]:
            print(f"{package['name']} {package['version']}: {len(package['files'])} files")
    problems = check()
    print("\n".join(problems) or "vendored files match manifest.json")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

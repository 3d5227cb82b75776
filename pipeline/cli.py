"""The `synthfaces` command: look at and check an exported dataset.

synthfaces inspect data/dataset      # summary table
synthfaces verify data/dataset       # every file against manifest.json (exit 1 on any mismatch)
synthfaces preview data/dataset      # contact sheet: identities as rows, their samples as columns
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.report.contact_sheet import contact_sheet, dataset_rows, sheet_bytes
from pipeline.shards.io import read_listing, sha256_file, write_bytes_atomic

#: The preview's default output, at the top of the dataset folder: the one file verify does not ask for.
PREVIEW = "contact_sheet.jpg"
MAX_PREVIEW_ROWS = 1000


def _manifest(folder: Path) -> dict:
    """manifest.json of an exported dataset, checked for the shape every command relies on (InputError)."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder: give an exported dataset folder (data/dataset)")
    path = folder / "manifest.json"
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} not found: is {folder} an exported dataset (data/dataset)?") from None
    except (ValueError, OSError) as err:
        raise InputError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(m, dict) or not isinstance(m.get("files"), list) or not isinstance(m.get("counts"), dict):
        raise InputError(f"{path}: not a synthfaces manifest (an object with `files` and `counts`)")
    for k, f in enumerate(m["files"]):
        ok = isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("bytes"), int)
        if not ok or not re.fullmatch(r"[0-9a-f]{64}", str(f.get("sha256"))):
            raise InputError(f"{path}: files[{k}] needs a `path`, a sha256 and a size in `bytes`")
        _inside(folder, f["path"], f"{path}: files[{k}]")
    if not isinstance(m["counts"].get("samples"), int):
        raise InputError(f"{path}: counts.samples is missing")
    return m


def _inside(folder: Path, relative: str, where: str) -> Path:
    """folder / relative, refused when it would leave the folder (an absolute path, `..`, a link out)."""
    path = (folder / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(folder.resolve()):
        raise InputError(f"{where}: {relative!r} is outside the dataset folder")
    return path


def inspect(folder: Path) -> int:
    m = _manifest(folder)
    counts = m["counts"]
    total = sum(f["bytes"] for f in m["files"])
    rows = [
        ("dataset", m["name"]),
        ("classes (identities)", f"{counts['identities']:,}"),
        ("images per class", counts["images_per_identity"]),
        ("samples", f"{counts['samples']:,}"),
        ("candidates generated", f"{counts['candidates']:,}"),
        ("output shards", f"{counts['shards']}"),
        ("formats", ", ".join(m["formats"])),
        ("size", f"{total / 2**20:.1f} MiB in {len(m['files'])} files"),
        ("generator", f"{m['generator']['model']} — {m['generator']['label']}"),
        ("generator license", m["generator"]["license"]),
        ("embedder weights", m["embedder_weights"]),
        ("code", m["code_version"]),
    ]
    meta = folder / "metadata.parquet"
    if meta.is_file():
        table = pq.read_table(meta)
        for name in sorted(n for n in table.column_names if n.startswith("attr_")):
            column = table.column(name)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                values = column.value_counts().to_pylist()
                share = ", ".join(f"{v['values']} {100 * v['counts'] / len(column):.0f}%" for v in values)
                rows.append((name, share))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def verify(folder: Path) -> int:
    """Every manifest file by size and sha256, every image a listing (imagefolder) names by its sha256, the
    sample counts against counts.samples, and no file that neither lists (but the preview's contact sheet at
    the top)."""
    m = _manifest(folder)
    problems, listed, covered = [], set(), 0
    for f in m["files"]:
        listed.add(f["path"])
        path = folder / f["path"]
        problem = _check(path, f["path"], f["sha256"], f["bytes"])
        if problem:
            problems.append(problem)
        elif f.get("listing"):
            base = Path(f["path"]).parent
            try:
                lines = read_listing(path)
            except ValueError as err:
                raise InputError(str(err)) from None
            for digest, relative in lines:
                name = (base / relative).as_posix()
                _inside(folder, name, f"{f['path']}")
                listed.add(name)
                covered += 1
                if problem := _check(folder / name, name, digest):
                    problems.append(problem)
    problems += _count_problems(m, covered)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"):
        name = path.relative_to(folder).as_posix()
        if name not in listed and name != PREVIEW:
            problems.append(f"unlisted  {name}")
    for line in problems:
        print(line)
    checked = len(m["files"]) + covered
    bad = sum(p.startswith(("missing", "size", "sha256")) for p in problems)
    print(f"{checked - bad} of {checked} files OK" + (f" ({covered} through listings)" if covered else "")
          + (f"; {len(problems)} problem(s)" if problems else ""))  # fmt: skip
    return 1 if problems else 0


def _count_problems(m: dict, listed_images: int) -> list[str]:
    """Each kind of file that counts samples (a format's shards, metadata.parquet) must hold counts.samples."""
    samples = m["counts"]["samples"]
    kinds: dict[str, int] = {}
    for f in m["files"]:
        if isinstance(f.get("samples"), int):
            parent, suffix = Path(f["path"]).parent.as_posix(), Path(f["path"]).suffix
            kind = f["path"] if parent == "." else f"{parent}/*{suffix}"
            kinds[kind] = kinds.get(kind, 0) + f["samples"]
    problems = [f"count     {k}: {n} samples, counts.samples says {samples}" for k, n in kinds.items() if n != samples]
    if any(f.get("listing") for f in m["files"]) and listed_images != samples:
        problems.append(f"count     imagefolder: {listed_images} images listed, counts.samples says {samples}")
    return problems


def _check(path: Path, name: str, sha256: str, size: int | None = None) -> str | None:
    if not path.is_file():
        return f"missing   {name}"
    if size is not None and path.stat().st_size != size:
        return f"size      {name}: {path.stat().st_size} bytes, manifest says {size}"
    if sha256_file(path) != sha256:
        return f"sha256    {name}: content differs from the manifest"
    return None


def preview(folder: Path, rows: int, out: Path | None) -> int:
    if not 1 <= rows <= MAX_PREVIEW_ROWS:
        raise InputError(f"--rows: must be 1 to {MAX_PREVIEW_ROWS} identities, got {rows}")
    m = _manifest(folder)
    shards = sorted((folder / "parquet").glob("train-*.parquet"))
    if not shards:
        raise InputError(f"no parquet shards under {folder}/parquet (export.formats must include parquet)")
    meta = pq.read_table(folder / "metadata.parquet", columns=["key", "class"])
    keys, classes = meta.column("key").to_numpy(zero_copy_only=False), meta.column("class").to_numpy()
    wanted = {k for k, c in zip(keys, classes, strict=True) if c < rows}
    images = {}
    for shard in shards:
        table = pq.read_table(shard, columns=["key", "image"])
        for key, image in zip(table.column("key").to_pylist(), table.column("image").to_pylist(), strict=True):
            if key in wanted:
                images[key] = image["bytes"]
    sheet = contact_sheet(dataset_rows(keys, classes, images, rows), columns=m["counts"]["images_per_identity"])
    out = out or folder / PREVIEW
    try:
        write_bytes_atomic(out, sheet_bytes(sheet))
    except OSError as err:
        raise InputError(f"--out: cannot write {out} ({err.strerror or err})") from None
    shown = min(rows, m["counts"]["identities"])
    print(f"wrote {out} ({shown} identities x {m['counts']['images_per_identity']} samples)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="synthfaces", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("inspect", "print a summary of an exported dataset"),
                       ("verify", "check every file against manifest.json; exit 1 on any mismatch"),
                       ("preview", "write a contact sheet (identities as rows, samples as columns)")):  # fmt: skip
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("dataset", type=Path, help="exported dataset folder (data/dataset)")
        if name == "preview":
            p.add_argument("--rows", type=int, default=8, help="identities to show (8)")
            p.add_argument("--out", type=Path, default=None, help="output JPEG (DATASET/contact_sheet.jpg)")
    args = parser.parse_args(argv)
    commands = {"inspect": lambda: inspect(args.dataset), "verify": lambda: verify(args.dataset),
                "preview": lambda: preview(args.dataset, args.rows, args.out)}  # fmt: skip
    try:
        return commands[args.command]()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

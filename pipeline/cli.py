"""The `synthfaces` command: look at and check an exported dataset.

synthfaces inspect data/dataset      # summary table
synthfaces verify data/dataset       # every file against manifest.json (exit 1 on any mismatch)
synthfaces preview data/dataset      # contact sheet: identities as rows, their samples as columns
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.report.contact_sheet import contact_sheet, dataset_rows, sheet_bytes
from pipeline.shards.io import read_listing, sha256_file, write_bytes_atomic


def _manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: {path} not found: is {folder} an exported dataset (data/dataset)?") from None
    except ValueError as err:
        raise SystemExit(f"error: {path} is not valid JSON ({err})") from None


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
    """Every manifest file by size and sha256, every image a listing (imagefolder) names by its sha256,
    and no file that neither lists."""
    m = _manifest(folder)
    problems, listed, covered = [], set(), 0
    for f in m["files"]:
        path = folder / f["path"]
        listed.add(f["path"])
        problem = _check(path, f["path"], f["sha256"], f["bytes"])
        if problem:
            problems.append(problem)
        elif f.get("listing"):
            base = Path(f["path"]).parent
            for digest, relative in read_listing(path):
                name = (base / relative).as_posix()
                listed.add(name)
                covered += 1
                if problem := _check(folder / name, name, digest):
                    problems.append(problem)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"):
        if path.relative_to(folder).as_posix() not in listed and path.name != "contact_sheet.jpg":
            problems.append(f"unlisted  {path.relative_to(folder).as_posix()}")
    for line in problems:
        print(line)
    checked = len(m["files"]) + covered
    bad = sum(not p.startswith("unlisted") for p in problems)
    print(f"{checked - bad} of {checked} files OK" + (f" ({covered} through listings)" if covered else "")
          + (f"; {len(problems)} problem(s)" if problems else ""))  # fmt: skip
    return 1 if problems else 0


def _check(path: Path, name: str, sha256: str, size: int | None = None) -> str | None:
    if not path.is_file():
        return f"missing   {name}"
    if size is not None and path.stat().st_size != size:
        return f"size      {name}: {path.stat().st_size} bytes, manifest says {size}"
    if sha256_file(path) != sha256:
        return f"sha256    {name}: content differs from the manifest"
    return None


def preview(folder: Path, rows: int, out: Path | None) -> int:
    m = _manifest(folder)
    shards = sorted((folder / "parquet").glob("train-*.parquet"))
    if not shards:
        raise SystemExit(f"error: no parquet shards under {folder}/parquet (export.formats must include parquet)")
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
    out = out or folder / "contact_sheet.jpg"
    write_bytes_atomic(out, sheet_bytes(sheet))
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
    if args.command == "inspect":
        return inspect(args.dataset)
    if args.command == "verify":
        return verify(args.dataset)
    return preview(args.dataset, args.rows, args.out)


if __name__ == "__main__":
    sys.exit(main())

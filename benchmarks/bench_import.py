"""Import throughput of the dataset service: rows per second and peak memory, against a raw csv.reader pass.

    python benchmarks/bench_import.py [--quick] [--sqlite]

It generates CSV files (100k and 1M rows; --quick: 100k only) in a temporary folder, then measures, each in a
fresh process so that peak RSS belongs to one measurement:
- baseline: `csv.reader` over the file (the C parser, nothing else): the ceiling for any CSV import;
- reader:   the service's streaming reader (encoding and dialect sniffing, batches with line numbers);
- import:   the whole upload path as the API runs it (store the upload in the blob store, sniff, infer the
            column mapping, derive labels and validity per row, insert the rows, record the job), ending
            with every row committed in the database.
The database is the PostgreSQL server at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/arbiter),
in databases named `arbiter_bench_import_*` that the benchmark (re)creates; with --sqlite, SQLite files in a
temporary folder.
The aim is 50,000 rows/s end to end for the 1M-row file.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

AIM_ROWS_PER_SECOND = 50_000
REPO = Path(__file__).resolve().parents[1]

_WORDS = [
    "you",
    "are",
    "the",
    "worst",
    "idiot",
    "ever",
    "seen",
    "this",
    "is",
    "great",
    "thanks",
    "for",
    "sharing",
    "love",
    "it",
    "hate",
    "spam",
    "click",
    "here",
    "free",
    "money",
    "now",
    "never",
    "again",
    "what",
    "a",
    "lovely",
    "day",
    "please",
    "stop",
    "posting",
    "garbage",
    "I",
    "will",
    "find",
    "you",
    "report",
    "block",
    "amazing",
    "product",
    "terrible",
    "service",
    "😀",
    "😡",
    "🙄",
    "café",
    "naïve",
    "über",
]


def generate(path: Path, rows: int) -> None:
    rng = random.Random(rows)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "toxicity", "category", "score"])
        for i in range(rows):
            text = " ".join(rng.choices(_WORDS, k=rng.randint(4, 24)))
            if rng.random() < 0.05:
                text = f'{text}, "quoted", with commas\nand a second line'
            toxic = rng.random() < 0.3
            category = rng.choice(["insult", "threat", "spam", "insult|threat"]) if toxic else ""
            writer.writerow([i, text, "toxic" if toxic else "safe", category, f"{rng.random():.3f}"])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_baseline(path: Path) -> dict[str, Any]:
    start = time.perf_counter()
    with path.open(newline="", encoding="utf-8") as handle:
        rows = sum(1 for _ in csv.reader(handle)) - 1
    return {"rows": rows, "seconds": time.perf_counter() - start}


def measure_reader(path: Path) -> dict[str, Any]:
    from services.dataset.importing import open_table

    start = time.perf_counter()
    with path.open("rb") as handle:
        reader = open_table(handle, file_name=path.name)
        rows = sum(len(batch.rows) for batch in reader.batches())
    return {"rows": rows, "seconds": time.perf_counter() - start}


def measure_import(path: Path) -> dict[str, Any]:
    import django

    django.setup()
    from django.conf import settings

    from arbiter.config.typed_settings import load_settings
    from arbiter.tenancy.scoping import org_scope
    from services.dataset import logic
    from services.dataset.importing import ImportOptions
    from services.dataset.models import Dataset, Row

    settings.ARBITER = load_settings(
        {
            "ARBITER_IMPORT_BACKGROUND_BYTES": 1 << 40,  # measure the whole import in this process
            "ARBITER_MAX_UPLOAD_BYTES": 1 << 40,
            "ARBITER_IMPORT_MAX_ROWS": 10_000_000,
        }
    )
    org_id = 1
    with org_scope(org_id):
        start = time.perf_counter()
        with path.open("rb") as handle:
            dataset, job = logic.dataset_create_from_file(
                org_id=org_id,
                actor="benchmark",
                name=path.stem,
                file=handle,
                file_name=path.name,
                options=ImportOptions(),
            )
        seconds = time.perf_counter() - start
        rows = Row.objects.filter(dataset=dataset).count()
        assert job.state == "completed" and rows == job.rows_imported, (job.state, job.error)
        Row.objects.filter(dataset=dataset).delete()
        Dataset.objects.filter(pk=dataset.pk).delete()
    return {"rows": rows, "seconds": seconds}


MEASURES = {"baseline": measure_baseline, "reader": measure_reader, "import": measure_import}


def run_child(kind: str, path: Path, env: dict[str, str]) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, __file__, "--measure", kind, str(path)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def prepare_database(env: dict[str, str], *, sqlite: bool, home: Path) -> str:
    if sqlite:
        env.pop("DATABASE_URL", None)
        described = f"SQLite files under {home}"
    else:
        import psycopg

        url = env.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter")
        env["ARBITER_DB_NAME"] = "arbiter_bench_import"
        base = url.rsplit("/", 1)[0]
        with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
            for service in ("gateway", "dataset"):
                name = f"arbiter_bench_import_{service}"
                # The benchmark owns these databases: each run starts from a fresh schema.
                connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
                connection.execute(f'CREATE DATABASE "{name}"')
        described = f"PostgreSQL at {base} (databases arbiter_bench_import_*)"
    subprocess.run(
        [sys.executable, "-m", "arbiter.cli", "migrate", "--verbosity", "0"], env=env, check=True, cwd=REPO
    )
    return described


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="only the 100k-row file")
    parser.add_argument(
        "--sqlite", action="store_true", help="SQLite in a temporary folder instead of PostgreSQL"
    )
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        kind, path = args.measure
        result = MEASURES[kind](Path(path))
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return

    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    with tempfile.TemporaryDirectory(prefix="arbiter-bench-") as folder:
        home = Path(folder)
        env = {
            **os.environ,
            "ARBITER_HOME": str(home / "home"),
            "ARBITER_SERVICES": "dataset",
            "DJANGO_SETTINGS_MODULE": "arbiter.config.settings",
            "ARBITER_LOG_LEVEL": "WARNING",
        }
        database = prepare_database(env, sqlite=args.sqlite, home=home / "home")
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        python = sys.version.split()[0]
        print(f"database: {database}; {os.cpu_count()} CPU cores (load average {load}); Python {python}")
        print(
            f"{'file':>10} {'MB':>6} {'measure':>9} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'vs csv':>7} "
            f"{'peak RSS MB':>12}"
        )
        for size in sizes:
            path = home / f"rows-{size}.csv"
            generate(path, size)
            megabytes = path.stat().st_size / 1e6
            baseline_rate = 0.0
            for kind in ("baseline", "reader", "import"):
                result = run_child(kind, path, env)
                rate = result["rows"] / result["seconds"]
                baseline_rate = baseline_rate or rate
                print(
                    f"{size:>10,} {megabytes:>6.0f} {kind:>9} {result['rows']:>10,} "
                    f"{result['seconds']:>8.2f} {rate:>10,.0f} {rate / baseline_rate:>6.0%} "
                    f"{result['peak_rss_mb']:>12.0f}"
                )
                if kind == "import":
                    verdict = "meets" if rate >= AIM_ROWS_PER_SECOND else "misses"
                    print(f"{'':>10} import {verdict} the aim of {AIM_ROWS_PER_SECOND:,} rows/s end to end")
            path.unlink()


if __name__ == "__main__":
    main()

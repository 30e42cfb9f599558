"""Prompts from local files, read through the `datasets` library: JSONL, JSON, Parquet, CSV, or a directory written
by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (then `data.split` picks the split). Nothing is downloaded."""
from __future__ import annotations

import os

from rollout.config import DataConfig, TaskConfig
from rollout.prompts import PROMPT_SOURCES, DataError, SourceContext
from rollout.sources.indexed import IndexedSource, build_prompts, split_held_out

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def read_rows(path: str, split: str = "train") -> list[dict]:
    """Every row of the file (or saved data set) as a dict."""
    import datasets

    if not path:
        raise DataError("data.source=files needs data.path: a .jsonl/.json/.parquet/.csv file or a save_to_disk "
                        "directory")
    if not os.path.exists(path):
        raise DataError(f"data.path={path!r} does not exist (relative paths start at the directory you run from)")
    datasets.disable_progress_bars()
    if os.path.isdir(path):
        try:
            loaded = datasets.load_from_disk(path)
        except FileNotFoundError as e:
            raise DataError(f"data.path={path!r} is a directory but not one written by save_to_disk ({e})") from e
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"data.path={path!r} has splits {', '.join(loaded)}, not data.split={split!r}")
            loaded = loaded[split]
    else:
        ext = os.path.splitext(path)[1].lower()
        if ext not in BUILDERS:
            raise DataError(f"data.path={path!r}: a {ext or 'suffix-less'} file; give .jsonl, .json, .parquet or "
                            f".csv, or a save_to_disk directory")
        try:
            loaded = datasets.load_dataset(BUILDERS[ext], data_files=path, split="train")
        except Exception as e:  # noqa: BLE001 - the parsers raise many kinds; the message says which file
            raise DataError(f"data.path={path!r} cannot be read as {BUILDERS[ext]} ({type(e).__name__}: {e})") from e
    return loaded.to_list()


@PROMPT_SOURCES.register("files")
def file_source(data: DataConfig, task: TaskConfig, ctx: SourceContext) -> IndexedSource:
    prompts = build_prompts(read_rows(data.path, data.split), data, ctx, f"data.path={data.path!r}")
    train, held_out = split_held_out(prompts, data.held_out_size)
    return IndexedSource(train, held_out, ctx, shuffle=data.shuffle)
